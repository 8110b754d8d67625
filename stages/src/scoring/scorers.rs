//! The combiner: runs every enabled scorer over a batch of candidates and folds their scores
//! into one per candidate, the weighted mean Σ wᵢ·sᵢ / Σ wᵢ over the enabled scorers (each
//! sᵢ in [0, 1], so the combined score is too). Every scorer's own score and its parts
//! (ROUGE-L and chrF, each rule's pass/fail) are kept for the stats.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::command::CommandScorer;
use super::config::ScorersConfig;
use super::embedding::EmbeddingScorer;
use super::error::ScoringError;
use super::reference::ReferenceScorer;
use super::rules::RulesScorer;
use super::{ScoreInput, Scores};
use crate::progress::Progress;

/// The scorers, in the order they run and are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScorerKind {
    Reference,
    Embedding,
    Rules,
    Command,
}

impl ScorerKind {
    /// The table name under `[score]` and the key in [`Scores::scorers`].
    pub fn name(self) -> &'static str {
        match self {
            ScorerKind::Reference => "reference",
            ScorerKind::Embedding => "embedding",
            ScorerKind::Rules => "rules",
            ScorerKind::Command => "command",
        }
    }
}

/// A scorer with its weight in the combined score.
#[derive(Debug)]
struct Weighted<S> {
    weight: f64,
    scorer: S,
}

/// Every enabled scorer, ready to run.
#[derive(Debug)]
pub struct Scorers {
    reference: Option<Weighted<ReferenceScorer>>,
    embedding: Option<Weighted<EmbeddingScorer>>,
    rules: Option<Weighted<RulesScorer>>,
    command: Option<Weighted<CommandScorer>>,
}

/// One scorer's output over a batch: a score per row plus named parts per row.
struct Column {
    kind: ScorerKind,
    weight: f64,
    scores: Vec<f64>,
    parts: Vec<Vec<(String, f64)>>,
}

impl Scorers {
    /// Loads what the enabled scorers need (the embedding model); paths resolve against
    /// `workspace`. With no scorer configured, `reference` runs alone.
    pub fn new(cfg: &ScorersConfig, workspace: &Path) -> Result<Self, ScoringError> {
        let cfg = cfg.effective();
        cfg.validate().map_err(|issue| ScoringError::Config {
            table: "score".into(),
            key: issue.key,
            message: issue.message,
        })?;
        Ok(Self {
            reference: cfg.reference.as_ref().map(|c| Weighted {
                weight: c.weight,
                scorer: ReferenceScorer::new(c),
            }),
            embedding: match &cfg.embedding {
                Some(c) => Some(Weighted {
                    weight: c.weight,
                    scorer: EmbeddingScorer::new(c, workspace)?,
                }),
                None => None,
            },
            rules: match &cfg.rules {
                Some(c) => Some(Weighted {
                    weight: c.weight,
                    scorer: RulesScorer::new(c)?,
                }),
                None => None,
            },
            command: match &cfg.command {
                Some(c) => Some(Weighted {
                    weight: c.weight,
                    scorer: CommandScorer::new(c, workspace)?,
                }),
                None => None,
            },
        })
    }

    /// The enabled scorers and their weights.
    pub fn weights(&self) -> Vec<(ScorerKind, f64)> {
        [
            self.reference
                .as_ref()
                .map(|w| (ScorerKind::Reference, w.weight)),
            self.embedding
                .as_ref()
                .map(|w| (ScorerKind::Embedding, w.weight)),
            self.rules.as_ref().map(|w| (ScorerKind::Rules, w.weight)),
            self.command
                .as_ref()
                .map(|w| (ScorerKind::Command, w.weight)),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Scores every row: one [`Scores`] per row, in order. To score a prompt's reference
    /// answer as a candidate, pass it as both `reference` and `candidate`: the similarity
    /// scorers give it exactly 1, the rules and the command judge it like any answer.
    pub fn score(
        &self,
        rows: &[ScoreInput<'_>],
        progress: &dyn Progress,
    ) -> Result<Vec<Scores>, ScoringError> {
        let mut columns = Vec::new();
        if let Some(w) = &self.reference {
            columns.push(reference_column(w, rows));
        }
        if let Some(w) = &self.embedding {
            progress.debug(&format!("embedding {} candidate(s)", rows.len()));
            let pairs: Vec<(&str, &str)> =
                rows.iter().map(|r| (r.candidate, r.reference)).collect();
            let scores = w.scorer.score(&pairs, progress)?;
            columns.push(plain_column(ScorerKind::Embedding, w.weight, scores));
        }
        if let Some(w) = &self.rules {
            columns.push(rules_column(w, rows));
        }
        if let Some(w) = &self.command {
            progress.info(&format!(
                "running `{}` on {} row(s)",
                w.scorer.display(),
                rows.len()
            ));
            let scores = w.scorer.score(rows)?;
            columns.push(plain_column(ScorerKind::Command, w.weight, scores));
        }
        Ok((0..rows.len()).map(|i| combine(&columns, i)).collect())
    }
}

fn reference_column(w: &Weighted<ReferenceScorer>, rows: &[ScoreInput<'_>]) -> Column {
    let mut scores = Vec::with_capacity(rows.len());
    let mut parts = Vec::with_capacity(rows.len());
    for row in rows {
        let s = w.scorer.score(row.candidate, row.reference);
        scores.push(s.score);
        parts.push(vec![
            ("reference.rouge_l".to_string(), s.rouge_l),
            ("reference.chrf".to_string(), s.chrf),
        ]);
    }
    Column {
        kind: ScorerKind::Reference,
        weight: w.weight,
        scores,
        parts,
    }
}

fn rules_column(w: &Weighted<RulesScorer>, rows: &[ScoreInput<'_>]) -> Column {
    let names: Vec<String> = w
        .scorer
        .rules()
        .iter()
        .map(|r| format!("rules.{}", r.name))
        .collect();
    let mut scores = Vec::with_capacity(rows.len());
    let mut parts = Vec::with_capacity(rows.len());
    for row in rows {
        let outcome = w.scorer.score(row.candidate);
        scores.push(outcome.score);
        parts.push(
            names
                .iter()
                .zip(&outcome.passed)
                .map(|(name, &ok)| (name.clone(), if ok { 1.0 } else { 0.0 }))
                .collect(),
        );
    }
    Column {
        kind: ScorerKind::Rules,
        weight: w.weight,
        scores,
        parts,
    }
}

fn plain_column(kind: ScorerKind, weight: f64, scores: Vec<f64>) -> Column {
    let parts = vec![Vec::new(); scores.len()];
    Column {
        kind,
        weight,
        scores,
        parts,
    }
}

/// Row `i`'s weighted mean over the columns, with every column's score and parts.
fn combine(columns: &[Column], i: usize) -> Scores {
    let mut scorers = BTreeMap::new();
    let mut components = BTreeMap::new();
    let mut weighted = 0.0;
    let mut total = 0.0;
    for column in columns {
        let score = column.scores[i];
        scorers.insert(column.kind.name().to_string(), score);
        components.extend(column.parts[i].iter().cloned());
        weighted += column.weight * score;
        total += column.weight;
    }
    let combined = if total > 0.0 { weighted / total } else { 0.0 };
    Scores {
        combined: combined.clamp(0.0, 1.0),
        scorers,
        components,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::pick_table;
    use crate::progress::NullProgress;
    use crate::scoring::config::ScoreConfig;

    fn scorers(doc: &str, workspace: &Path) -> Scorers {
        let cfg: ScoreConfig = pick_table(doc, "score").unwrap();
        Scorers::new(&cfg.scorers(), workspace).unwrap()
    }

    fn row<'a>(id: &'a str, reference: &'a str, candidate: &'a str) -> ScoreInput<'a> {
        ScoreInput {
            id,
            prompt: "What does ls do?",
            history: &[],
            reference,
            candidate,
        }
    }

    #[test]
    fn default_is_reference_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = scorers("[score]\n", dir.path());
        assert_eq!(s.weights(), [(ScorerKind::Reference, 1.0)]);
        let out = s
            .score(
                &[row(
                    "a",
                    "list directory contents",
                    "list directory contents",
                )],
                &NullProgress,
            )
            .unwrap();
        assert_eq!(out[0].combined, 1.0);
        assert_eq!(out[0].scorers["reference"], 1.0);
        assert_eq!(out[0].components["reference.rouge_l"], 1.0);
    }

    #[test]
    fn combined_is_the_weighted_mean_and_parts_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let doc = "[score.reference]\nweight = 1.0\nchrf_weight = 0.0\n\
                   [score.rules]\nweight = 3.0\n\
                   [[score.rules.rule]]\nname = 'short'\nmax_tokens = 3\n\
                   [[score.rules.rule]]\nname = 'mentions ls'\nmust_match = '\\bls\\b'\n\
                   [score.command]\nweight = 0.0\nargv = ['sh', '-c', 'cat >/dev/null; echo 0.5; echo 1']\n";
        let s = scorers(doc, dir.path());
        let rows = [
            // ROUGE-L F1 = 2·(2/3)·(2/2)/(2/3 + 1) = 0.8; rules: short passes, ls fails → 0.5.
            row("a", "list contents", "list directory contents"),
            // ROUGE-L 0; rules: short fails (7 tokens), ls passes → 0.5.
            row("b", "list contents", "ls is a program that lists things"),
        ];
        let out = s.score(&rows, &NullProgress).unwrap();
        assert!(
            (out[0].scorers["reference"] - 0.8).abs() < 1e-12,
            "{:?}",
            out[0]
        );
        assert_eq!(out[0].scorers["rules"], 0.5);
        assert_eq!(out[0].scorers["command"], 0.5);
        // The command's weight is 0: computed, kept, not counted.
        assert!(
            (out[0].combined - (0.8 + 3.0 * 0.5) / 4.0).abs() < 1e-12,
            "{:?}",
            out[0]
        );
        assert_eq!(out[0].components["rules.short"], 1.0);
        assert_eq!(out[0].components["rules.mentions ls"], 0.0);
        assert_eq!(out[1].scorers["rules"], 0.5);
        assert_eq!(out[1].components["rules.mentions ls"], 1.0);
        assert!(
            (out[1].combined - (0.0 + 3.0 * 0.5) / 4.0).abs() < 1e-12,
            "{:?}",
            out[1]
        );
        assert_eq!(out[1].scorers["command"], 1.0);
    }

    #[test]
    fn a_failing_scorer_fails_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let s = scorers(
            "[score.command]\nargv = ['sh', '-c', 'exit 2']\n",
            dir.path(),
        );
        let err = s
            .score(&[row("a", "x", "y")], &NullProgress)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("command scorer `sh -c \"exit 2\"` failed (exit status: 2)"),
            "{err}"
        );
    }

    #[test]
    fn scores_serialise_compactly() {
        let dir = tempfile::tempdir().unwrap();
        let s = scorers("[score.reference]\n", dir.path());
        let out = s.score(&[row("a", "same", "same")], &NullProgress).unwrap();
        let json = serde_json::to_string(&out[0]).unwrap();
        assert_eq!(
            json,
            r#"{"combined":1.0,"scorers":{"reference":1.0},"components":{"reference.chrf":1.0,"reference.rouge_l":1.0}}"#
        );
    }
}
