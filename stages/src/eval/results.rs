//! What eval measures and writes: per-model means (combined score, each scorer, val NLL and
//! perplexity, answer lengths), pairwise win rates, `eval.json`, `answers.jsonl`, and the
//! terminal table of `pipe show eval`.

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::scoring::Scores;

/// Two scores closer than this are a tie (the scorers are deterministic; this only absorbs
/// float noise).
const TIE: f64 = 1e-9;

/// One model's answer to one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAnswer {
    pub text: String,
    pub tokens: usize,
    pub finish_reason: String,
    pub scores: Scores,
}

/// One line of `answers.jsonl`: a val prompt, its reference and every model's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerRecord {
    pub id: String,
    pub source_row: u64,
    pub prompt: String,
    /// The turns before `prompt` of a multi-turn row, which every model answered in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<crate::llm::ChatMessage>,
    pub reference: String,
    /// By model name (`base`, `sft`, `final`).
    pub answers: BTreeMap<String, ModelAnswer>,
}

/// One model's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelResult {
    pub name: String,
    /// What was loaded (base name, adapters, merged directory).
    pub description: String,
    /// Mean combined score in [0, 1].
    pub score: f64,
    /// Mean score of each scorer.
    pub scorers: BTreeMap<String, f64>,
    /// Mean NLL per reference-answer token of the val rows, and its exp.
    pub val_nll: f64,
    pub val_ppl: f64,
    pub nll_tokens: usize,
    pub mean_answer_tokens: f64,
    /// Answers by finish reason (`eos`, `length`, `stop`).
    pub finish_reasons: BTreeMap<String, usize>,
    pub generate_seconds: f64,
    pub tokens_per_s: f64,
    /// Mean combined score per category of the val rows (when the ingest has a category).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categories: BTreeMap<String, f64>,
}

/// How often `b` beats `a` on the combined score of the same prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinRate {
    pub a: String,
    pub b: String,
    pub a_wins: usize,
    pub b_wins: usize,
    pub ties: usize,
    /// `(b_wins + ties / 2) / prompts`: 0.5 is a draw.
    pub b_win_rate: f64,
}

/// `eval.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    pub prompts: usize,
    /// Val rows whose reference did not fit `max_seq_len` for the NLL.
    pub nll_rows_dropped: usize,
    pub max_new_tokens: usize,
    pub models: Vec<ModelResult>,
    pub win_rates: Vec<WinRate>,
    pub seconds: f64,
    /// Prompts per category (when the ingest has a category column).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categories: BTreeMap<String, usize>,
}

/// Prompts per category of rows whose category is `categories[i]` (rows without one are
/// left out).
pub fn category_counts(categories: &[Option<&str>]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for c in categories.iter().flatten() {
        *out.entry(c.to_string()).or_insert(0) += 1;
    }
    out
}

/// The mean combined score per category; `scores[i]` is the answer to the row of category
/// `categories[i]`.
pub fn category_scores(categories: &[Option<&str>], scores: &[Scores]) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (c, s) in categories.iter().zip(scores) {
        if let Some(c) = c {
            let e = sums.entry(c.to_string()).or_insert((0.0, 0));
            e.0 += s.combined;
            e.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(c, (sum, n))| (c, sum / n as f64))
        .collect()
}

/// The mean combined score and the mean of every scorer over `scores`.
pub fn mean_scores(scores: &[&Scores]) -> (f64, BTreeMap<String, f64>) {
    let n = scores.len().max(1) as f64;
    let combined = scores.iter().map(|s| s.combined).sum::<f64>() / n;
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for s in scores {
        for (name, v) in &s.scorers {
            *sums.entry(name.clone()).or_default() += v;
        }
    }
    (
        combined,
        sums.into_iter().map(|(k, v)| (k, v / n)).collect(),
    )
}

/// The combined score per category, one row per category, one column per model.
fn write_categories(r: &EvalResults, out: &mut dyn Write) -> std::io::Result<()> {
    if r.categories.is_empty() {
        return Ok(());
    }
    writeln!(out, "score by category:")?;
    write!(out, "  {:<16} {:>7}", "category", "prompts")?;
    for m in &r.models {
        write!(out, " {:>8}", m.name)?;
    }
    writeln!(out)?;
    for (c, n) in &r.categories {
        write!(out, "  {:<16} {:>7}", c, n)?;
        for m in &r.models {
            match m.categories.get(c) {
                Some(v) => write!(out, " {:>8.4}", v)?,
                None => write!(out, " {:>8}", "-")?,
            }
        }
        writeln!(out)?;
    }
    Ok(())
}

/// Win rates of every pair of models, in order (base/sft, base/final, sft/final).
pub fn win_rates(records: &[AnswerRecord], models: &[&str]) -> Vec<WinRate> {
    let mut out = Vec::new();
    for (i, a) in models.iter().enumerate() {
        for b in &models[i + 1..] {
            out.push(win_rate(records, a, b));
        }
    }
    out
}

fn win_rate(records: &[AnswerRecord], a: &str, b: &str) -> WinRate {
    let (mut a_wins, mut b_wins, mut ties) = (0, 0, 0);
    for r in records {
        let (Some(x), Some(y)) = (r.answers.get(a), r.answers.get(b)) else {
            continue;
        };
        let d = y.scores.combined - x.scores.combined;
        if d > TIE {
            b_wins += 1;
        } else if d < -TIE {
            a_wins += 1;
        } else {
            ties += 1;
        }
    }
    let n = a_wins + b_wins + ties;
    WinRate {
        a: a.to_string(),
        b: b.to_string(),
        a_wins,
        b_wins,
        ties,
        b_win_rate: if n == 0 {
            f64::NAN
        } else {
            (b_wins as f64 + ties as f64 / 2.0) / n as f64
        },
    }
}

/// The scorer names present in any model's results, in a stable order.
pub fn scorer_names(results: &EvalResults) -> Vec<String> {
    let mut names: Vec<String> = results
        .models
        .iter()
        .flat_map(|m| m.scorers.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `pipe show eval`: the score table and the win rates.
pub fn write_table(r: &EvalResults, out: &mut dyn Write) -> std::io::Result<()> {
    let names = scorer_names(r);
    writeln!(
        out,
        "{} val prompts, greedy, up to {} new tokens",
        r.prompts, r.max_new_tokens
    )?;
    write!(out, "{:<7} {:>7}", "model", "score")?;
    for n in &names {
        write!(out, " {:>10}", n)?;
    }
    writeln!(out, " {:>8} {:>9} {:>7}", "val NLL", "val ppl", "tokens")?;
    for m in &r.models {
        write!(out, "{:<7} {:>7.4}", m.name, m.score)?;
        for n in &names {
            match m.scorers.get(n) {
                Some(v) => write!(out, " {:>10.4}", v)?,
                None => write!(out, " {:>10}", "-")?,
            }
        }
        writeln!(
            out,
            " {:>8.4} {:>9.2} {:>7.1}",
            m.val_nll, m.val_ppl, m.mean_answer_tokens
        )?;
    }
    write_categories(r, out)?;
    writeln!(out, "win rates (combined score, ties count half):")?;
    for w in &r.win_rates {
        writeln!(
            out,
            "  {:<5} vs {:<5} {:>5.1}%  ({} wins, {} losses, {} ties)",
            w.b,
            w.a,
            100.0 * w.b_win_rate,
            w.b_wins,
            w.a_wins,
            w.ties
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(score: f64) -> ModelAnswer {
        ModelAnswer {
            text: String::new(),
            tokens: 1,
            finish_reason: "eos".into(),
            scores: Scores {
                combined: score,
                scorers: BTreeMap::from([("reference".to_string(), score)]),
                components: BTreeMap::new(),
            },
        }
    }

    fn record(base: f64, sft: f64, fin: f64) -> AnswerRecord {
        AnswerRecord {
            id: "x".into(),
            source_row: 1,
            prompt: String::new(),
            history: Vec::new(),
            reference: String::new(),
            answers: BTreeMap::from([
                ("base".to_string(), answer(base)),
                ("sft".to_string(), answer(sft)),
                ("final".to_string(), answer(fin)),
            ]),
        }
    }

    #[test]
    fn win_rates_count_wins_losses_and_half_ties() {
        let records = vec![
            record(0.1, 0.5, 0.5),
            record(0.6, 0.5, 0.7),
            record(0.2, 0.2, 0.9),
            record(0.3, 0.4, 0.1),
        ];
        let rates = win_rates(&records, &["base", "sft", "final"]);
        assert_eq!(
            rates
                .iter()
                .map(|w| (w.a.as_str(), w.b.as_str()))
                .collect::<Vec<_>>(),
            [("base", "sft"), ("base", "final"), ("sft", "final")]
        );
        let base_sft = &rates[0];
        assert_eq!((base_sft.b_wins, base_sft.a_wins, base_sft.ties), (2, 1, 1));
        assert!((base_sft.b_win_rate - 2.5 / 4.0).abs() < 1e-12);
        let sft_final = &rates[2];
        assert_eq!(
            (sft_final.b_wins, sft_final.a_wins, sft_final.ties),
            (2, 1, 1)
        );
        let base_final = &rates[1];
        assert_eq!((base_final.b_wins, base_final.a_wins), (3, 1));
        assert!((base_final.b_win_rate - 0.75).abs() < 1e-12);
    }

    #[test]
    fn means_cover_every_scorer() {
        let a = answer(0.2).scores;
        let mut b = answer(0.6).scores;
        b.scorers.insert("rules".into(), 1.0);
        let (combined, per) = mean_scores(&[&a, &b]);
        assert!((combined - 0.4).abs() < 1e-12);
        assert!((per["reference"] - 0.4).abs() < 1e-12);
        assert!((per["rules"] - 0.5).abs() < 1e-12);
    }
}
