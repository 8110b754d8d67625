//! The settings every trainer stage shares (run length, schedule, batches, AdamW, cadence,
//! seed, LoRA): [`TrainKeys`] as written in a trainer's table, [`TrainSettings`] resolved and
//! flattened into each stage's effective settings, and the checks they share.
//!
//! A stage's table is declared with [`trainer_table!`], which adds the shared keys to the
//! stage's own in one struct. serde's `#[serde(flatten)]` would do it too, but it cannot be
//! combined with `deny_unknown_fields` and it buffers the flattened values, so a typo'd key
//! would be accepted and a wrong type in a shared key would lose its line. The resolved
//! settings have no such problem (we write and read them ourselves), so there the shared
//! struct is flattened and the JSON, hence every cache key, stays what it was.

use serde::{Deserialize, Serialize};

use super::lora_settings::{LoraKeys, LoraSettings, ALL_LINEAR};
use super::validate::{at_least, non_negative_finite, validate_run_length};
use super::{LrScheduler, RunLength};
use crate::contract::ConfigIssue;

/// The shared keys as written: all optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainKeys {
    pub epochs: Option<f64>,
    pub max_steps: Option<usize>,
    pub learning_rate: Option<f64>,
    pub lr_scheduler: Option<LrScheduler>,
    pub warmup_ratio: Option<f64>,
    pub warmup_steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub gradient_accumulation: Option<usize>,
    pub max_seq_len: Option<usize>,
    pub weight_decay: Option<f64>,
    pub max_grad_norm: Option<f64>,
    pub seed: Option<u64>,
    pub eval_every: Option<usize>,
    pub save_every: Option<usize>,
    pub lora: LoraKeys,
}

/// Declares a trainer stage's table: its own keys (each `pub name: Type,`), then the keys of
/// [`TrainKeys`], in one struct that refuses unknown keys; `train_keys()` returns the shared
/// ones.
macro_rules! trainer_table {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
            pub epochs: Option<f64>,
            pub max_steps: Option<usize>,
            pub learning_rate: Option<f64>,
            pub lr_scheduler: Option<$crate::train::LrScheduler>,
            pub warmup_ratio: Option<f64>,
            pub warmup_steps: Option<usize>,
            pub batch_size: Option<usize>,
            pub gradient_accumulation: Option<usize>,
            pub max_seq_len: Option<usize>,
            pub weight_decay: Option<f64>,
            pub max_grad_norm: Option<f64>,
            pub seed: Option<u64>,
            pub eval_every: Option<usize>,
            pub save_every: Option<usize>,
            #[serde(default)]
            pub lora: $crate::train::lora_settings::LoraKeys,
        }

        impl $name {
            /// The keys every trainer shares, as written.
            pub fn train_keys(&self) -> $crate::train::settings::TrainKeys {
                $crate::train::settings::TrainKeys {
                    epochs: self.epochs,
                    max_steps: self.max_steps,
                    learning_rate: self.learning_rate,
                    lr_scheduler: self.lr_scheduler,
                    warmup_ratio: self.warmup_ratio,
                    warmup_steps: self.warmup_steps,
                    batch_size: self.batch_size,
                    gradient_accumulation: self.gradient_accumulation,
                    max_seq_len: self.max_seq_len,
                    weight_decay: self.weight_decay,
                    max_grad_norm: self.max_grad_norm,
                    seed: self.seed,
                    eval_every: self.eval_every,
                    save_every: self.save_every,
                    lora: self.lora.clone(),
                }
            }
        }
    };
}
pub(crate) use trainer_table;

/// The shared settings of a run: a stage's defaults under the explicit keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Exactly one of `epochs` and `max_steps` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    pub learning_rate: f64,
    pub lr_scheduler: LrScheduler,
    /// Exactly one of `warmup_ratio` and `warmup_steps` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<usize>,
    /// Rows (sft) or pairs (orpo, dpo) per micro-batch.
    pub batch_size: usize,
    pub gradient_accumulation: usize,
    /// Tokens per row (sft), or of prompt + the longer completion of a pair.
    pub max_seq_len: usize,
    pub weight_decay: f64,
    /// 0 disables clipping.
    pub max_grad_norm: f64,
    /// `None`: the project seed.
    pub seed: Option<u64>,
    /// `None`: evaluate only before and after training.
    pub eval_every: Option<usize>,
    pub save_every: usize,
    pub lora: LoraSettings,
}

/// A stage's values for the shared keys a user leaves out.
#[derive(Debug, Clone)]
pub struct TrainDefaults {
    pub epochs: f64,
    pub learning_rate: f64,
    pub warmup_ratio: f64,
    pub batch_size: usize,
    pub gradient_accumulation: usize,
    pub max_seq_len: usize,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub save_every: usize,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub target_modules: Vec<String>,
}

/// The shared keys' defaults of the preference trainers (orpo, dpo). LoRA wants a far larger
/// rate than TRL's full-finetuning defaults (8e-6 for ORPO).
pub fn preference_defaults() -> TrainDefaults {
    TrainDefaults {
        epochs: 1.0,
        learning_rate: 5e-5,
        warmup_ratio: 0.1,
        batch_size: 4,
        gradient_accumulation: 2,
        max_seq_len: 512,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        save_every: 50,
        lora_r: 16,
        lora_alpha: 32.0,
        target_modules: vec![ALL_LINEAR.to_string()],
    }
}

impl TrainKeys {
    /// The effective settings: explicit keys over `d`. `max_steps` wins over `epochs` and
    /// `warmup_steps` over `warmup_ratio` (validation refuses both at once).
    pub fn resolve(&self, d: &TrainDefaults) -> TrainSettings {
        let (epochs, max_steps) = match (self.epochs, self.max_steps) {
            (_, Some(steps)) => (None, Some(steps)),
            (Some(e), None) => (Some(e), None),
            (None, None) => (Some(d.epochs), None),
        };
        let (warmup_ratio, warmup_steps) = match (self.warmup_ratio, self.warmup_steps) {
            (_, Some(steps)) => (None, Some(steps)),
            (Some(r), None) => (Some(r), None),
            (None, None) => (Some(d.warmup_ratio), None),
        };
        TrainSettings {
            epochs,
            max_steps,
            learning_rate: self.learning_rate.unwrap_or(d.learning_rate),
            lr_scheduler: self.lr_scheduler.unwrap_or(LrScheduler::Cosine),
            warmup_ratio,
            warmup_steps,
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            gradient_accumulation: self
                .gradient_accumulation
                .unwrap_or(d.gradient_accumulation),
            max_seq_len: self.max_seq_len.unwrap_or(d.max_seq_len),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            max_grad_norm: self.max_grad_norm.unwrap_or(d.max_grad_norm),
            seed: self.seed,
            eval_every: self.eval_every,
            save_every: self.save_every.unwrap_or(d.save_every),
            lora: self.lora.resolve(d.lora_r, d.lora_alpha, &d.target_modules),
        }
    }
}

impl TrainSettings {
    pub fn run_length(&self) -> RunLength {
        match (self.max_steps, self.epochs) {
            (Some(steps), _) => RunLength::Steps(steps),
            (None, Some(e)) => RunLength::Epochs(e),
            (None, None) => RunLength::Epochs(1.0),
        }
    }
}

/// Checks the shared keys (LoRA aside: a stage checks its own conditions on `lora` first,
/// then calls `validate_lora`). Keys are named as in the table.
pub fn validate_train(keys: &TrainKeys, s: &TrainSettings) -> Result<(), ConfigIssue> {
    validate_run_length(
        (keys.epochs, keys.max_steps),
        (keys.warmup_ratio, keys.warmup_steps),
        s.learning_rate,
    )?;
    at_least("batch_size", Some(s.batch_size), 1)?;
    at_least("gradient_accumulation", Some(s.gradient_accumulation), 1)?;
    at_least("max_seq_len", Some(s.max_seq_len), 2)?;
    non_negative_finite("weight_decay", s.weight_decay)?;
    non_negative_finite("max_grad_norm", s.max_grad_norm)?;
    at_least("eval_every", s.eval_every, 1)?;
    at_least("save_every", Some(s.save_every), 1)
}

/// Checks the share of pairs a preference trainer holds out.
pub fn validate_eval_fraction(fraction: f64) -> Result<(), ConfigIssue> {
    if fraction > 0.0 && fraction < 1.0 {
        Ok(())
    } else {
        Err(ConfigIssue::new(
            "eval_fraction",
            format!("must be in (0, 1), got {fraction}; 0.2 holds out 20% of the pairs"),
        ))
    }
}
