//! The `embedding` scorer: semantic similarity of a candidate to the reference answer, as the
//! cosine of their sentence embeddings ([`Embedder`]). It credits paraphrases that share few
//! words with the reference, which the lexical `reference` scorer cannot.
//!
//! The score is the cosine clamped to [0, 1]: a negative cosine (unrelated or opposed text)
//! counts as 0, like a lexical score with no overlap. A candidate identical to a non-blank
//! reference scores exactly 1 (the encoder is deterministic, so this only removes float noise);
//! a blank candidate or reference scores 0. Each distinct text is embedded once, so the
//! reference shared by a prompt's candidates costs one embedding.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::embedder::Embedder;
use super::error::ScoringError;
use crate::contract::ConfigIssue;
use crate::progress::Progress;

/// Where `scripts/fetch-embedder.sh` puts all-MiniLM-L6-v2, relative to the workspace.
pub const DEFAULT_MODEL: &str = "models/all-MiniLM-L6-v2";

/// The `[score.embedding]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// This scorer's weight in the combined score.
    #[serde(default = "one")]
    pub weight: f64,
    /// A sentence-transformers model directory, relative to the workspace root.
    #[serde(default = "default_model")]
    pub model: PathBuf,
    /// Texts per forward pass.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Truncate texts at this many tokens; default: the model's `max_seq_length`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self {
            weight: 1.0,
            model: default_model(),
            batch_size: default_batch_size(),
            max_length: None,
        }
    }
}

fn one() -> f64 {
    1.0
}

fn default_model() -> PathBuf {
    PathBuf::from(DEFAULT_MODEL)
}

fn default_batch_size() -> usize {
    32
}

impl EmbeddingConfig {
    /// Checks keys relative to the `[score]` table (`embedding.batch_size`).
    pub fn validate(&self, table: &str) -> Result<(), ConfigIssue> {
        let key = |k: &str| format!("{table}.{k}");
        if self.model.as_os_str().is_empty() {
            return Err(ConfigIssue::new(
                key("model"),
                format!("must name a model directory, e.g. \"{DEFAULT_MODEL}\""),
            ));
        }
        if !(1..=4096).contains(&self.batch_size) {
            return Err(ConfigIssue::new(
                key("batch_size"),
                format!("must be between 1 and 4096, got {}", self.batch_size),
            ));
        }
        if self.max_length.is_some_and(|n| n < 2) {
            return Err(ConfigIssue::new(
                key("max_length"),
                "must be at least 2 (the [CLS] and [SEP] tokens); remove it to use the model's",
            ));
        }
        Ok(())
    }
}

/// Scores candidates by embedding similarity to the reference.
#[derive(Debug)]
pub struct EmbeddingScorer {
    embedder: Embedder,
    batch_size: usize,
}

impl EmbeddingScorer {
    /// Loads the model; `model` is resolved against `workspace`.
    pub fn new(cfg: &EmbeddingConfig, workspace: &Path) -> Result<Self, ScoringError> {
        cfg.validate("embedding")
            .map_err(|issue| ScoringError::Config {
                table: "score".into(),
                key: issue.key,
                message: issue.message,
            })?;
        let dir = workspace.join(&cfg.model);
        Ok(Self::from_embedder(
            Embedder::load(&dir, cfg.max_length)?,
            cfg.batch_size,
        ))
    }

    /// Wraps an already loaded model.
    pub fn from_embedder(embedder: Embedder, batch_size: usize) -> Self {
        Self {
            embedder,
            batch_size: batch_size.max(1),
        }
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// One score per `(candidate, reference)` pair, in [0, 1].
    pub fn score(
        &self,
        pairs: &[(&str, &str)],
        progress: &dyn Progress,
    ) -> Result<Vec<f64>, ScoringError> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut texts: Vec<&str> = Vec::new();
        let mut plan = Vec::with_capacity(pairs.len());
        for &(candidate, reference) in pairs {
            plan.push(match shortcut(candidate, reference) {
                Some(score) => Plan::Fixed(score),
                None => Plan::Cosine(
                    slot(&mut index, &mut texts, candidate),
                    slot(&mut index, &mut texts, reference),
                ),
            });
        }
        let vectors = self.embedder.embed(&texts, self.batch_size, progress)?;
        Ok(plan
            .into_iter()
            .map(|p| match p {
                Plan::Fixed(score) => score,
                Plan::Cosine(a, b) => cosine(&vectors[a], &vectors[b]).clamp(0.0, 1.0),
            })
            .collect())
    }
}

/// The position of `text` among the texts to embed, adding it on first sight.
fn slot<'a>(index: &mut HashMap<&'a str, usize>, texts: &mut Vec<&'a str>, text: &'a str) -> usize {
    *index.entry(text).or_insert_with(|| {
        texts.push(text);
        texts.len() - 1
    })
}

/// How one pair gets its score.
enum Plan {
    Fixed(f64),
    Cosine(usize, usize),
}

/// Scores that need no model: blank text is 0, identical text is 1.
fn shortcut(candidate: &str, reference: &str) -> Option<f64> {
    if candidate.trim().is_empty() || reference.trim().is_empty() {
        Some(0.0)
    } else if candidate == reference {
        Some(1.0)
    } else {
        None
    }
}

/// Cosine similarity; the embeddings are unit length, but dividing keeps this exact for any.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if na > 0.0 && nb > 0.0 {
        dot / (na * nb)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NullProgress;
    use crate::scoring::testing::minilm;

    #[test]
    fn paraphrases_score_higher_than_unrelated_text() {
        let scorer = EmbeddingScorer::from_embedder(minilm(), 2);
        let reference = "How do I list the files in a directory?";
        let scores = scorer
            .score(
                &[
                    ("What command shows the contents of a folder?", reference),
                    ("The cat sat quietly on the warm windowsill.", reference),
                    (reference, reference),
                    ("   ", reference),
                ],
                &NullProgress,
            )
            .unwrap();
        // Reference values: scripts/verify-embedder.py (numpy BERT on the same weights).
        assert!((scores[0] - 0.626671).abs() < 1e-4, "{scores:?}");
        assert!((scores[1] - 0.055034).abs() < 1e-4, "{scores:?}");
        assert!(scores[0] > scores[1] + 0.3, "{scores:?}");
        assert_eq!(scores[2], 1.0);
        assert_eq!(scores[3], 0.0);
    }

    #[test]
    fn negative_cosine_is_clamped_to_zero() {
        let scorer = EmbeddingScorer::from_embedder(minilm(), 8);
        // cos = -0.022864 in scripts/verify-embedder.py.
        let scores = scorer
            .score(
                &[(
                    "The cat sat quietly on the warm windowsill.",
                    "디렉터리의 파일 목록을 보는 방법",
                )],
                &NullProgress,
            )
            .unwrap();
        assert_eq!(scores, [0.0]);
    }

    #[test]
    fn cosine_of_plain_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }

    #[test]
    fn config_values_are_checked() {
        let bad = EmbeddingConfig {
            batch_size: 0,
            ..EmbeddingConfig::default()
        };
        assert_eq!(
            bad.validate("embedding").unwrap_err().key,
            "embedding.batch_size"
        );
        let bad = EmbeddingConfig {
            max_length: Some(1),
            ..EmbeddingConfig::default()
        };
        assert_eq!(
            bad.validate("embedding").unwrap_err().key,
            "embedding.max_length"
        );
    }

    #[test]
    fn a_missing_model_says_how_to_fetch_one() {
        let ws = tempfile::tempdir().unwrap();
        let err = EmbeddingScorer::new(&EmbeddingConfig::default(), ws.path()).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("embedding model directory "), "{text}");
        assert!(text.contains("run scripts/fetch-embedder.sh"), "{text}");
    }
}
