//! The `reference` scorer: lexical similarity of a candidate to the reference answer, a
//! weighted mean of ROUGE-L F1 (word order, [`RougeL`]) and chrF (character n-grams, robust to
//! inflection and spelling variants, [`Chrf`]). Needs no model, so it is the default scorer.

use serde::{Deserialize, Serialize};

use super::chrf::Chrf;
use super::rouge::RougeL;
use crate::contract::ConfigIssue;

/// The `[score.reference]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceConfig {
    /// This scorer's weight in the combined score.
    #[serde(default = "one")]
    pub weight: f64,
    /// Relative weight of ROUGE-L F1 within this scorer.
    #[serde(default = "one")]
    pub rouge_l_weight: f64,
    /// Relative weight of chrF within this scorer.
    #[serde(default = "one")]
    pub chrf_weight: f64,
    /// Longest character n-gram of chrF (sacrebleu: 6).
    #[serde(default = "default_chrf_order")]
    pub chrf_order: usize,
    /// chrF's β: how many times more recall counts than precision (sacrebleu: 2).
    #[serde(default = "default_chrf_beta")]
    pub chrf_beta: f64,
}

impl Default for ReferenceConfig {
    fn default() -> Self {
        Self {
            weight: 1.0,
            rouge_l_weight: 1.0,
            chrf_weight: 1.0,
            chrf_order: default_chrf_order(),
            chrf_beta: default_chrf_beta(),
        }
    }
}

fn one() -> f64 {
    1.0
}

fn default_chrf_order() -> usize {
    6
}

fn default_chrf_beta() -> f64 {
    2.0
}

impl ReferenceConfig {
    /// Checks keys relative to the `[score]` table (`reference.chrf_order`).
    pub fn validate(&self, table: &str) -> Result<(), ConfigIssue> {
        let key = |k: &str| format!("{table}.{k}");
        for (name, w) in [
            ("rouge_l_weight", self.rouge_l_weight),
            ("chrf_weight", self.chrf_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(ConfigIssue::new(
                    key(name),
                    format!("must be a number ≥ 0, got {w}"),
                ));
            }
        }
        if self.rouge_l_weight + self.chrf_weight <= 0.0 {
            return Err(ConfigIssue::new(
                key("rouge_l_weight"),
                "and `chrf_weight` are both 0; give at least one a positive weight",
            ));
        }
        if !(1..=32).contains(&self.chrf_order) {
            return Err(ConfigIssue::new(
                key("chrf_order"),
                format!(
                    "must be between 1 and 32, got {}; 6 is chrF's standard",
                    self.chrf_order
                ),
            ));
        }
        if !(self.chrf_beta.is_finite() && self.chrf_beta > 0.0) {
            return Err(ConfigIssue::new(
                key("chrf_beta"),
                format!(
                    "must be a number > 0, got {}; 2 is chrF's standard",
                    self.chrf_beta
                ),
            ));
        }
        Ok(())
    }
}

/// The parts and the result of scoring one candidate against its reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceScore {
    pub rouge_l: f64,
    pub chrf: f64,
    /// The weighted mean of the two, in [0, 1].
    pub score: f64,
}

/// Scores candidates by lexical similarity to the reference answer.
#[derive(Debug, Clone)]
pub struct ReferenceScorer {
    rouge_l_weight: f64,
    chrf_weight: f64,
    chrf: Chrf,
}

impl ReferenceScorer {
    /// From a validated config.
    pub fn new(cfg: &ReferenceConfig) -> Self {
        Self {
            rouge_l_weight: cfg.rouge_l_weight,
            chrf_weight: cfg.chrf_weight,
            chrf: Chrf::new(cfg.chrf_order, cfg.chrf_beta),
        }
    }

    /// ROUGE-L F1, chrF and their weighted mean. A candidate identical to a non-blank
    /// reference scores exactly 1 (so the reference itself, scored as a candidate, is the best
    /// possible); a blank candidate or reference scores 0.
    pub fn score(&self, candidate: &str, reference: &str) -> ReferenceScore {
        if candidate.trim().is_empty() || reference.trim().is_empty() {
            return ReferenceScore {
                rouge_l: 0.0,
                chrf: 0.0,
                score: 0.0,
            };
        }
        if candidate == reference {
            return ReferenceScore {
                rouge_l: 1.0,
                chrf: 1.0,
                score: 1.0,
            };
        }
        let rouge_l = RougeL::score(candidate, reference).f1;
        let chrf = self.chrf.score(candidate, reference);
        let total = self.rouge_l_weight + self.chrf_weight;
        let score = if total > 0.0 {
            (self.rouge_l_weight * rouge_l + self.chrf_weight * chrf) / total
        } else {
            0.0
        };
        ReferenceScore {
            rouge_l,
            chrf,
            score: score.clamp(0.0, 1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_mean_of_rouge_l_and_chrf() {
        let scorer = ReferenceScorer::new(&ReferenceConfig::default());
        let s = scorer.score("the cat was on the mat", "The cat sat on the mat.");
        assert!((s.rouge_l - 5.0 / 6.0).abs() < 1e-12, "{s:?}");
        assert!(
            (s.score - (s.rouge_l + s.chrf) / 2.0).abs() < 1e-12,
            "{s:?}"
        );
    }

    #[test]
    fn weights_pick_the_mix() {
        let only_chrf = ReferenceConfig {
            rouge_l_weight: 0.0,
            ..ReferenceConfig::default()
        };
        let s = ReferenceScorer::new(&only_chrf).score("사과를 먹었다", "사과가 맛있다");
        assert!((s.score - 7.0 / 60.0).abs() < 1e-12, "{s:?}");
        assert!((s.rouge_l - 0.5).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn identical_scores_one_and_blank_scores_zero() {
        let scorer = ReferenceScorer::new(&ReferenceConfig::default());
        assert_eq!(scorer.score("same text", "same text").score, 1.0);
        assert_eq!(scorer.score("  ", "  ").score, 0.0);
        assert_eq!(scorer.score("", "ref").score, 0.0);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                ReferenceConfig {
                    chrf_order: 0,
                    ..Default::default()
                },
                "reference.chrf_order",
            ),
            (
                ReferenceConfig {
                    chrf_beta: 0.0,
                    ..Default::default()
                },
                "reference.chrf_beta",
            ),
            (
                ReferenceConfig {
                    chrf_weight: -1.0,
                    ..Default::default()
                },
                "reference.chrf_weight",
            ),
            (
                ReferenceConfig {
                    chrf_weight: 0.0,
                    rouge_l_weight: 0.0,
                    ..Default::default()
                },
                "reference.rouge_l_weight",
            ),
        ];
        for (cfg, key) in cases {
            assert_eq!(cfg.validate("reference").unwrap_err().key, key);
        }
    }
}
