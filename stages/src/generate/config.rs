//! The `[generate]` table: which prompts, how many candidates, how they are sampled, and how
//! the run is batched and checkpointed. Strict: unknown keys and meaningless values are errors
//! naming the key.

use serde::{Deserialize, Serialize};

use crate::contract::ConfigIssue;
use crate::llm::SamplingParams;

/// Which ingest split the prompts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    #[default]
    Train,
    Val,
    /// Train rows, then val rows.
    Both,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Both => "both",
        }
    }
}

/// The `[generate]` table of pipeline.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// The ingest instance whose prompts it answers (default `ingest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The instance whose model answers (default `sft`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub split: Split,
    /// A seeded random sample of this many prompts; `None`: every prompt, in file order.
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default = "default_candidates")]
    pub candidates: usize,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    #[serde(default)]
    pub min_p: f64,
    #[serde(default = "one")]
    pub repetition_penalty: f64,
    /// Texts that end an answer; the answer is cut before them.
    #[serde(default)]
    pub stop: Vec<String>,
    /// `None`: the project seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Sequences decoded together.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Prompts per chunk appended to the partial candidates file.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Decode with the exact f32 weights instead of 8-bit copies.
    #[serde(default)]
    pub exact: bool,
}

fn default_candidates() -> usize {
    4
}
fn default_max_new_tokens() -> usize {
    128
}
/// Diverse enough for distinct candidates, not so hot that a small model derails.
fn default_temperature() -> f64 {
    0.8
}
fn default_top_p() -> f64 {
    0.95
}
fn default_top_k() -> usize {
    50
}
fn one() -> f64 {
    1.0
}
fn default_batch_size() -> usize {
    16
}
fn default_checkpoint_every() -> usize {
    16
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            data: None,
            model: None,
            split: Split::Train,
            limit: None,
            candidates: default_candidates(),
            max_new_tokens: default_max_new_tokens(),
            temperature: default_temperature(),
            top_p: default_top_p(),
            top_k: default_top_k(),
            min_p: 0.0,
            repetition_penalty: 1.0,
            stop: Vec::new(),
            seed: None,
            batch_size: default_batch_size(),
            checkpoint_every: default_checkpoint_every(),
            exact: false,
        }
    }
}

impl GenerateConfig {
    /// The sampler settings.
    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
        }
    }
}

/// Checks serde cannot express, keyed relative to `[generate]`.
pub fn validate(cfg: &GenerateConfig) -> Result<(), ConfigIssue> {
    let positive = [
        ("candidates", cfg.candidates),
        ("max_new_tokens", cfg.max_new_tokens),
        ("batch_size", cfg.batch_size),
        ("checkpoint_every", cfg.checkpoint_every),
        ("limit", cfg.limit.unwrap_or(1)),
    ];
    for (key, value) in positive {
        if value == 0 {
            return Err(ConfigIssue::new(key, "must be at least 1"));
        }
    }
    let s = cfg.sampling();
    if let Err(e) = s.validate() {
        let key = ["temperature", "top_p", "min_p", "repetition_penalty"]
            .into_iter()
            .find(|k| e.to_string().contains(&format!("{k} =")))
            .unwrap_or("temperature");
        return Err(ConfigIssue::new(key, e.to_string()));
    }
    if s.is_greedy() && cfg.candidates > 1 {
        return Err(ConfigIssue::new(
            "temperature",
            format!(
                "is 0 (greedy), so the {} candidates of a prompt would all be the same answer; \
                 set temperature > 0 (e.g. 0.8) or candidates = 1",
                cfg.candidates
            ),
        ));
    }
    if let Some(i) = cfg.stop.iter().position(String::is_empty) {
        return Err(ConfigIssue::new(
            "stop",
            format!(
                "entry {} is empty; an empty stop text would end every answer at once",
                i + 1
            ),
        ));
    }
    Ok(())
}
