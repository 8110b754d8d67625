//! The scoring tables of pipeline.toml: [`ScorersConfig`] (which scorers, with which weights;
//! shared by `[score]` and, later, `[eval]`) and [`ScoreConfig`], the whole `[score]` table
//! (the scorers plus how preference pairs are built). See the module docs of
//! [`crate::scoring`] for the TOML shape.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::command::CommandConfig;
use super::embedding::EmbeddingConfig;
use super::extra_pairs::ExtraPairsConfig;
use super::reference::ReferenceConfig;
use super::rules::RulesConfig;
use super::scorers::ScorerKind;
use crate::contract::ConfigIssue;

/// The scorer tables; a scorer is enabled when its table is present. With none present the
/// `reference` scorer runs with its defaults, so an empty `[score]` table works.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorersConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RulesConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandConfig>,
}

impl ScorersConfig {
    /// The scorers that will run: the configured ones, or `reference` alone when none is.
    pub fn effective(&self) -> ScorersConfig {
        let mut cfg = self.clone();
        if cfg.weights().is_empty() {
            cfg.reference = Some(ReferenceConfig::default());
        }
        cfg
    }

    /// The enabled scorers and their weights, in [`ScorerKind`] order.
    pub fn weights(&self) -> Vec<(ScorerKind, f64)> {
        let mut out = Vec::new();
        if let Some(c) = &self.reference {
            out.push((ScorerKind::Reference, c.weight));
        }
        if let Some(c) = &self.embedding {
            out.push((ScorerKind::Embedding, c.weight));
        }
        if let Some(c) = &self.rules {
            out.push((ScorerKind::Rules, c.weight));
        }
        if let Some(c) = &self.command {
            out.push((ScorerKind::Command, c.weight));
        }
        out
    }

    /// Every check serde cannot express; keys are relative to the stage's table.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        let weights = self.weights();
        for (kind, w) in &weights {
            if !(w.is_finite() && *w >= 0.0) {
                return Err(ConfigIssue::new(
                    format!("{}.weight", kind.name()),
                    format!(
                        "must be a number ≥ 0, got {w}; 0 computes the scorer for the stats \
                         without counting it"
                    ),
                ));
            }
        }
        if !weights.is_empty() && weights.iter().all(|(_, w)| *w == 0.0) {
            return Err(ConfigIssue::new(
                format!("{}.weight", weights[0].0.name()),
                "is 0, like every scorer's weight; give at least one scorer a positive weight",
            ));
        }
        if let Some(c) = &self.reference {
            c.validate("reference")?;
        }
        if let Some(c) = &self.embedding {
            c.validate("embedding")?;
        }
        if let Some(c) = &self.rules {
            c.validate("rules")?;
        }
        if let Some(c) = &self.command {
            c.validate("command")?;
        }
        Ok(())
    }

    /// Files and directories whose content is part of the cache key: the embedding model and
    /// the command's declared inputs.
    pub fn external_inputs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Some(c) = &self.embedding {
            out.push(c.model.clone());
        }
        if let Some(c) = &self.command {
            out.extend(c.inputs.iter().cloned());
        }
        out
    }
}

/// The `[score]` table: the scorer tables plus the pair-building keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// The generate instance whose candidates it scores (default `generate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RulesConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandConfig>,
    /// The reference answer competes as a candidate (see [`super::pairs`]).
    #[serde(default = "yes")]
    pub include_reference: bool,
    /// A pair is kept only if chosen − rejected ≥ this (combined scores are in [0, 1]).
    #[serde(default = "default_min_margin")]
    pub min_margin: f64,
    /// Hand-made pairs added to the generated ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_pairs: Option<ExtraPairsConfig>,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            candidates: None,
            reference: None,
            embedding: None,
            rules: None,
            command: None,
            include_reference: true,
            min_margin: default_min_margin(),
            extra_pairs: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// Below this, the "preference" is mostly scorer noise between near-identical answers.
fn default_min_margin() -> f64 {
    0.05
}

impl ScoreConfig {
    /// The scorers that will run (`reference` alone when no scorer table is present).
    pub fn scorers(&self) -> ScorersConfig {
        ScorersConfig {
            reference: self.reference.clone(),
            embedding: self.embedding.clone(),
            rules: self.rules.clone(),
            command: self.command.clone(),
        }
        .effective()
    }

    /// For `Stage::validate`: keys relative to `[score]`.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        self.scorers().validate()?;
        let m = self.min_margin;
        if !(0.0..=1.0).contains(&m) {
            return Err(ConfigIssue::new(
                "min_margin",
                format!(
                    "must be between 0 and 1 (combined scores are in [0, 1]), got {m}; 0 keeps \
                     every pair whose scores differ"
                ),
            ));
        }
        if let Some(extra) = &self.extra_pairs {
            extra.validate("extra_pairs")?;
        }
        Ok(())
    }

    /// For `Stage::external_inputs`.
    pub fn external_inputs(&self) -> Vec<PathBuf> {
        let mut out = self.scorers().external_inputs();
        if let Some(extra) = &self.extra_pairs {
            out.push(extra.path.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::pick_table;

    fn config(doc: &str) -> ScoreConfig {
        pick_table(doc, "score").unwrap()
    }

    #[test]
    fn an_empty_table_scores_with_reference_alone() {
        let cfg = config("[score]\n");
        assert_eq!(cfg, ScoreConfig::default());
        assert_eq!(cfg.scorers().weights(), [(ScorerKind::Reference, 1.0)]);
        assert!(cfg.validate().is_ok());
        assert!(cfg.external_inputs().is_empty());
    }

    #[test]
    fn the_documented_example_parses() {
        let doc = r#"
[score]
include_reference = true
min_margin = 0.1

[score.reference]
weight = 1.0
chrf_weight = 2.0

[score.embedding]
weight = 2.0
model = "models/all-MiniLM-L6-v2"

[score.rules]
weight = 0.5
[[score.rules.rule]]
name = "short"
max_tokens = 200
[[score.rules.rule]]
must_not_match = "(?i)as an ai"
weight = 2.0

[score.command]
weight = 1.0
argv = ["python3", "judges/judge.py"]
scale = [1, 10]
inputs = ["judges/judge.py"]

[score.extra_pairs]
path = "data/extra_pairs.csv"
"#;
        let cfg = config(doc);
        assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
        assert_eq!(
            cfg.scorers().weights(),
            [
                (ScorerKind::Reference, 1.0),
                (ScorerKind::Embedding, 2.0),
                (ScorerKind::Rules, 0.5),
                (ScorerKind::Command, 1.0)
            ]
        );
        assert_eq!(
            cfg.external_inputs(),
            [
                PathBuf::from("models/all-MiniLM-L6-v2"),
                PathBuf::from("judges/judge.py"),
                PathBuf::from("data/extra_pairs.csv")
            ]
        );
        assert_eq!(cfg.rules.as_ref().unwrap().rule.len(), 2);
    }

    #[test]
    fn unknown_keys_are_refused_at_every_level() {
        for (doc, field) in [
            ("[score]\nmin_margn = 0.1\n", "min_margn"),
            ("[score.reference]\nchrf_ordr = 4\n", "chrf_ordr"),
            ("[score.embedding]\nmodel_dir = \"m\"\n", "model_dir"),
            ("[score.command]\nargv = [\"x\"]\ntimeout = 3\n", "timeout"),
            (
                "[score.rules]\n[[score.rules.rule]]\nmax_token = 3\n",
                "max_token",
            ),
            ("[score.extra_pairs]\npath = \"x.csv\"\nfile = 1\n", "file"),
            ("[score.bleu]\nweight = 1\n", "bleu"),
        ] {
            let err = pick_table::<ScoreConfig>(doc, "score").unwrap_err();
            assert!(
                err.message().contains(&format!("unknown field `{field}`")),
                "{doc}: {err}"
            );
        }
    }

    #[test]
    fn weights_and_margins_are_checked() {
        let cases = [
            ("[score.reference]\nweight = -1.0\n", "reference.weight"),
            (
                "[score.reference]\nweight = 0.0\n[score.rules]\nweight = 0.0\n[[score.rules.rule]]\njson = true\n",
                "reference.weight",
            ),
            ("[score]\nmin_margin = 1.5\n", "min_margin"),
            ("[score.command]\nargv = []\n", "command.argv"),
            ("[score.rules]\n", "rules.rule"),
            ("[score.extra_pairs]\npath = \"\"\n", "extra_pairs.path"),
        ];
        for (doc, key) in cases {
            assert_eq!(config(doc).validate().unwrap_err().key, key, "{doc}");
        }
        // A zero weight is fine while another scorer counts: computed for the stats only.
        let cfg = config(
            "[score.reference]\nweight = 0.0\n[score.rules]\n[[score.rules.rule]]\njson = true\n",
        );
        assert!(cfg.validate().is_ok());
    }
}
