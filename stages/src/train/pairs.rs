//! Preference pairs turned into token ids for the preference trainers (orpo, dpo): a score
//! instance's `pairs.jsonl`, split into train and held-out pairs by a seeded hash of their
//! ids, or the train and val splits of an ingest instance with layout "preference"; rendered with the model's chat template (the rendering sft and generate use)
//! and fitted to `max_seq_len`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::base::BaseModel;
use crate::llm::{Example, LlmError, PreferencePair};
use crate::score::artifact::{Pair, PAIRS_FILE};
use crate::train::fit::{fit, Fit, FitCounts, Overlength};

/// Why the pairs cannot be trained on. Messages name the file and line, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PairsError {
    #[error("{}:{line}: {message}", path.display())]
    Pairs {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: score kept 0 pairs; lower score.min_margin (or add score.extra_pairs) so that some prompts yield a pair, then `pipe run --from score`", path.display())]
    NoPairs { path: PathBuf },
    #[error("{}: {stage} needs at least 2 pairs (one to train on, one to hold out), score kept {count}; lower score.min_margin or generate more candidates", path.display())]
    TooFewPairs {
        stage: &'static str,
        path: PathBuf,
        count: usize,
    },
    #[error("{PAIRS_FILE} line {line} (pair id {id}): cannot render it with the chat template: {source}")]
    Render {
        line: usize,
        id: String,
        #[source]
        source: Box<LlmError>,
    },
    #[error("[{stage}] none of the {rows} {side} pairs fits `max_seq_len` = {max_seq_len} (prompt + the longer answer); raise `max_seq_len`")]
    NoRows {
        stage: &'static str,
        side: &'static str,
        rows: usize,
        max_seq_len: usize,
    },
}

/// A pair as token ids, with what identifies it to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairRow {
    pub id: String,
    /// 1-based line of `pairs.jsonl`.
    pub line: usize,
    pub pair: PreferencePair,
}

impl PairRow {
    /// Tokens of the longer of its two sequences (prompt + completion); never 0.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.pair.prompt.len() + self.pair.chosen.len().max(self.pair.rejected.len())
    }

    /// Tokens through the model for this pair: both sequences, no padding.
    pub fn tokens(&self) -> usize {
        2 * self.pair.prompt.len() + self.pair.chosen.len() + self.pair.rejected.len()
    }

    /// `id 1a2b… (pairs.jsonl line 12)`, for error messages.
    pub fn describe(&self) -> String {
        format!("id {} ({PAIRS_FILE} line {})", self.id, self.line)
    }
}

/// How many pairs each side of the split has, and what fitting did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairCounts {
    /// Pairs in `pairs.jsonl`.
    pub pairs: usize,
    pub train: FitCounts,
    pub eval: FitCounts,
}

/// Reads every pair of `path`; an empty file is an error that says how to get pairs.
pub fn read_pairs(path: &Path) -> Result<Vec<(usize, Pair)>, PairsError> {
    let bad = |line: usize, message: String| PairsError::Pairs {
        path: path.to_path_buf(),
        line,
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(0, e.to_string()))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let pair: Pair = serde_json::from_str(line)
            .map_err(|e| bad(i + 1, format!("not a preference pair: {e}")))?;
        pairs.push((i + 1, pair));
    }
    if pairs.is_empty() {
        return Err(PairsError::NoPairs {
            path: path.to_path_buf(),
        });
    }
    Ok(pairs)
}

/// Splits pairs into (train, held out): the `fraction` of pairs whose seeded hash of their id
/// is lowest are held out (at least one, and at least one left to train on). Hashing ids, not
/// shuffling positions, keeps a pair on its side when other pairs come and go.
pub fn split(pairs: Vec<(usize, Pair)>, fraction: f64, seed: u64) -> SplitPairs {
    let n = pairs.len();
    let held = ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1));
    let mut keyed: Vec<(blake3::Hash, (usize, Pair))> = pairs
        .into_iter()
        .map(|p| {
            let mut h = blake3::Hasher::new();
            h.update(&seed.to_le_bytes());
            h.update(p.1.id.as_bytes());
            h.update(&(p.0 as u64).to_le_bytes());
            (h.finalize(), p)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut eval: Vec<(usize, Pair)> = Vec::with_capacity(held);
    let mut train = Vec::with_capacity(n - held);
    for (i, (_, p)) in keyed.into_iter().enumerate() {
        if i < held {
            eval.push(p);
        } else {
            train.push(p);
        }
    }
    // File order within each side: stable and easy to follow in logs.
    eval.sort_by_key(|p| p.0);
    train.sort_by_key(|p| p.0);
    SplitPairs { train, eval }
}

/// The two sides of [`split`].
pub struct SplitPairs {
    pub train: Vec<(usize, Pair)>,
    pub eval: Vec<(usize, Pair)>,
}

/// Renders and fits the pairs of one side; a pair whose longer completion alone fills
/// `max_seq_len` is dropped, a longer prompt loses tokens from its start.
pub fn encode(
    base: &BaseModel,
    pairs: &[(usize, Pair)],
    max_seq_len: usize,
) -> Result<(Vec<PairRow>, FitCounts), PairsError> {
    let mut counts = FitCounts {
        rows: pairs.len(),
        ..FitCounts::default()
    };
    let mut out = Vec::with_capacity(pairs.len());
    for (line, pair) in pairs {
        let pair_tokens = render(base, pair, *line)?;
        let longer = pair_tokens.chosen.len().max(pair_tokens.rejected.len());
        // Fit the prompt against the longer completion: both sequences then fit.
        let probe = Example::new(pair_tokens.prompt.clone(), vec![0; longer]);
        let prompt = match fit(probe, max_seq_len, Overlength::TruncatePrompt) {
            Fit::Whole(e) => e.prompt,
            Fit::Truncated(e) => {
                counts.truncated += 1;
                e.prompt
            }
            Fit::DropOverlength | Fit::DropCompletionTooLong => {
                counts.dropped_completion_too_long += 1;
                continue;
            }
        };
        out.push(PairRow {
            id: pair.id.clone(),
            line: *line,
            pair: PreferencePair {
                prompt,
                ..pair_tokens
            },
        });
    }
    counts.kept = out.len();
    Ok((out, counts))
}

/// One pair through the chat template: the prompt ids and the two completions.
fn render(base: &BaseModel, pair: &Pair, line: usize) -> Result<PreferencePair, PairsError> {
    let rendered = |response: &str| {
        base.render_example(
            pair.system.as_deref(),
            &pair.history,
            &pair.prompt,
            response,
        )
        .map_err(|source| PairsError::Render {
            line,
            id: pair.id.clone(),
            source: Box::new(source),
        })
    };
    let chosen = rendered(&pair.chosen)?;
    let rejected = rendered(&pair.rejected)?;
    if chosen.prompt_ids != rejected.prompt_ids {
        return Err(PairsError::Render {
            line,
            id: pair.id.clone(),
            source: Box::new(LlmError::Invalid(
                "the chat template renders the prompt differently before the chosen and the rejected answer".into(),
            )),
        });
    }
    if chosen.completion_ids.is_empty() || rejected.completion_ids.is_empty() {
        return Err(PairsError::Render {
            line,
            id: pair.id.clone(),
            source: Box::new(LlmError::Invalid("an answer renders to no tokens".into())),
        });
    }
    Ok(PreferencePair {
        prompt: chosen.prompt_ids,
        chosen: chosen.completion_ids,
        rejected: rejected.completion_ids,
    })
}

/// The pairs of a run, split, rendered and fitted.
pub struct Pairs {
    pub train: Vec<PairRow>,
    pub eval: Vec<PairRow>,
    pub counts: PairCounts,
}

/// Where a preference stage's pairs come from.
pub enum PairsSource {
    /// A score instance's `pairs.jsonl`: split by `eval_fraction`.
    Score(PathBuf),
    /// An ingest instance's artifact with layout "preference": its train split trains, its
    /// val split is held out.
    Ingest(PathBuf),
}

/// The pairs of a preference ingest's split file, with their 1-based lines.
fn ingest_pairs(path: &Path) -> Result<Vec<(usize, Pair)>, PairsError> {
    use crate::ingest::artifact::read_examples;
    use crate::scoring::TextSource;
    let rows = read_examples(path).map_err(|e| PairsError::Pairs {
        path: path.to_path_buf(),
        line: 0,
        message: e.to_string(),
    })?;
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            let rejected = row.rejected.ok_or_else(|| PairsError::Pairs {
                path: path.to_path_buf(),
                line: i + 1,
                message: "the row has no rejected answer: `pairs` reads an ingest instance with layout = \"preference\"".into(),
            })?;
            let pair = Pair {
                id: row.id,
                prompt: row.prompt,
                system: row.system,
                history: row.history,
                chosen: row.response,
                rejected,
                chosen_score: None,
                rejected_score: None,
                chosen_source: TextSource::Reference,
                rejected_source: TextSource::Reference,
            };
            Ok((i + 1, pair))
        })
        .collect()
}

/// Reads, splits, renders and fits the pairs of `source` for `stage`; each side must keep at
/// least one.
pub fn prepare(
    stage: &'static str,
    base: &BaseModel,
    source: &PairsSource,
    (eval_fraction, max_seq_len): (f64, usize),
    seed: u64,
) -> Result<Pairs, PairsError> {
    let (split, total) = match source {
        PairsSource::Score(path) => {
            let all = read_pairs(path)?;
            if all.len() < 2 {
                return Err(PairsError::TooFewPairs {
                    stage,
                    path: path.to_path_buf(),
                    count: all.len(),
                });
            }
            let total = all.len();
            (split(all, eval_fraction, seed), total)
        }
        PairsSource::Ingest(dir) => {
            use crate::ingest::artifact::{TRAIN_FILE, VAL_FILE};
            let train = ingest_pairs(&dir.join(TRAIN_FILE))?;
            let eval = ingest_pairs(&dir.join(VAL_FILE))?;
            let total = train.len() + eval.len();
            (SplitPairs { train, eval }, total)
        }
    };
    let (train, train_counts) = encode(base, &split.train, max_seq_len)?;
    let (eval, eval_counts) = encode(base, &split.eval, max_seq_len)?;
    for (side, rows, counts) in [
        ("train", &train, &train_counts),
        ("held-out", &eval, &eval_counts),
    ] {
        if rows.is_empty() {
            return Err(PairsError::NoRows {
                stage,
                side,
                rows: counts.rows,
                max_seq_len,
            });
        }
    }
    Ok(Pairs {
        train,
        eval,
        counts: PairCounts {
            pairs: total,
            train: train_counts,
            eval: eval_counts,
        },
    })
}

/// Says how many pairs train and how many are held out, and what fitting did.
pub fn report_counts(
    progress: &dyn crate::progress::Progress,
    stage: &str,
    counts: &PairCounts,
    eval_pairs: usize,
    max_seq_len: usize,
) {
    let dropped = counts.train.dropped() + counts.eval.dropped();
    let truncated = counts.train.truncated + counts.eval.truncated;
    progress.info(&format!(
        "{stage}: {} pairs: {} to train on, {eval_pairs} held out{}",
        counts.pairs,
        counts.train.kept,
        if dropped + truncated > 0 {
            format!(" ({truncated} truncated, {dropped} dropped over max_seq_len {max_seq_len})")
        } else {
            String::new()
        }
    ));
}

/// Held-out pairs sorted by length in batches: fixed, so every evaluation scores the same
/// batches.
pub fn eval_batches(eval: &[PairRow], batch_size: usize) -> Vec<Vec<PreferencePair>> {
    eval_batch_rows(eval, batch_size)
        .into_iter()
        .map(|rows| rows.into_iter().map(|r| r.pair.clone()).collect())
        .collect()
}

/// The rows of each batch of [`eval_batches`].
pub fn eval_batch_rows(eval: &[PairRow], batch_size: usize) -> Vec<Vec<&PairRow>> {
    let mut order: Vec<&PairRow> = eval.iter().collect();
    order.sort_by_key(|r| r.len());
    order
        .chunks(batch_size.max(1))
        .map(<[&PairRow]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::pairs::TextSource;

    pub(crate) fn pair(id: &str) -> Pair {
        Pair {
            id: id.to_string(),
            prompt: "p".into(),
            system: None,
            history: Vec::new(),
            chosen: "c".into(),
            rejected: "r".into(),
            chosen_score: Some(1.0),
            rejected_score: Some(0.0),
            chosen_source: TextSource::Reference,
            rejected_source: TextSource::Generated,
        }
    }

    #[test]
    fn the_split_is_seeded_stable_and_never_empty() {
        let pairs = |n: usize| -> Vec<(usize, Pair)> {
            (0..n).map(|i| (i + 1, pair(&format!("id{i}")))).collect()
        };
        let s = split(pairs(50), 0.2, 7);
        assert_eq!((s.train.len(), s.eval.len()), (40, 10));
        let ids =
            |v: &[(usize, Pair)]| -> Vec<String> { v.iter().map(|p| p.1.id.clone()).collect() };
        assert_eq!(ids(&split(pairs(50), 0.2, 7).eval), ids(&s.eval));
        assert_ne!(ids(&split(pairs(50), 0.2, 8).eval), ids(&s.eval));
        // Adding pairs keeps held-out pairs held out or moves them to train, never the reverse
        // for most: the hash of an id does not depend on the others.
        let bigger = split(pairs(60), 0.2, 7);
        let kept = ids(&s.eval)
            .iter()
            .filter(|id| ids(&bigger.eval).contains(id))
            .count();
        assert!(kept >= 8, "{kept}");
        let two = split(pairs(2), 0.2, 7);
        assert_eq!((two.train.len(), two.eval.len()), (1, 1));
    }

    #[test]
    fn an_empty_pairs_file_says_how_to_get_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PAIRS_FILE);
        std::fs::write(&path, "\n").unwrap();
        let err = read_pairs(&path).unwrap_err().to_string();
        assert!(
            err.contains("score kept 0 pairs") && err.contains("min_margin"),
            "{err}"
        );
        std::fs::write(&path, "{\"id\": 3}\n").unwrap();
        let err = read_pairs(&path).unwrap_err().to_string();
        assert!(
            err.contains("pairs.jsonl:1") && err.contains("not a preference pair"),
            "{err}"
        );
        let line = serde_json::to_string(&pair("a")).unwrap();
        std::fs::write(&path, format!("{line}\n\n{line}\n")).unwrap();
        let read = read_pairs(&path).unwrap();
        assert_eq!(read.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 3]);
    }
}
