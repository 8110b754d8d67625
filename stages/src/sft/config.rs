//! The `[sft]` table: every key optional, a `preset` filling the ones left out, strict
//! validation naming the key. The table serialises as the *resolved* settings (preset
//! applied), so the cache key, `pipe show` and `pipe status` see the effective values: changing
//! a preset's default in code or any effective setting changes the key.

use std::ops::Deref;

use serde::{Deserialize, Serialize, Serializer};

use crate::contract::ConfigIssue;
use crate::train::fit::Overlength;
use crate::train::lora_settings::{validate_lora, ALL_LINEAR};
use crate::train::settings::{trainer_table, validate_train, TrainDefaults, TrainSettings};
use crate::train::validate::{at_least, non_negative_finite};
#[cfg(test)]
use crate::train::RunLength;

/// Named sets of defaults for the keys a user leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// One epoch, rank 8 on q/v, short sequences: a first look in minutes.
    Fast,
    /// Two epochs, rank 16 on every linear layer: the usual LoRA recipe.
    #[default]
    Balanced,
    /// Three epochs, rank 32, longer sequences, NEFTune and weight decay.
    Quality,
    /// Batch 1 with 8-step accumulation, rank 8, short sequences: the least memory.
    MemoryEfficient,
}

trainer_table! {
    /// The `[sft]` table as written (its own keys, then the shared training keys);
    /// [`SftConfig::resolve`] gives the effective settings.
    pub struct SftConfig {
        /// The ingest instance whose train/val rows it trains on (default `ingest`).
        pub data: Option<String>,
        /// The instance whose model it starts from (default `model`, the base).
        pub model: Option<String>,
        #[serde(default)]
        pub preset: Preset,
        pub overlength: Option<Overlength>,
        pub neftune_alpha: Option<f64>,
        pub train_on_prompt: Option<bool>,
        pub max_eval_rows: Option<usize>,
        pub samples: Option<usize>,
        pub sample_max_new_tokens: Option<usize>,
    }
}

/// The effective settings of a run: the preset's defaults under the explicit keys. The shared
/// training settings are flattened into it (and reached through it: `settings.batch_size`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftSettings {
    pub preset: Preset,
    #[serde(flatten)]
    pub train: TrainSettings,
    pub overlength: Overlength,
    /// 0 disables NEFTune.
    pub neftune_alpha: f64,
    pub train_on_prompt: bool,
    /// `None`: every val row.
    pub max_eval_rows: Option<usize>,
    pub samples: usize,
    pub sample_max_new_tokens: usize,
}

impl Deref for SftSettings {
    type Target = TrainSettings;
    fn deref(&self) -> &TrainSettings {
        &self.train
    }
}

/// One preset's values for the keys it fills.
struct Defaults {
    train: TrainDefaults,
    neftune_alpha: f64,
}

/// Defaults no preset changes.
const MAX_GRAD_NORM: f64 = 1.0;
const SAVE_EVERY: usize = 50;
const SAMPLES: usize = 3;
const SAMPLE_MAX_NEW_TOKENS: usize = 48;

impl Preset {
    fn defaults(self) -> Defaults {
        let train = |epochs, learning_rate, warmup_ratio, (batch, accumulation, seq), wd| {
            move |r, alpha, targets: &[&str]| TrainDefaults {
                epochs,
                learning_rate,
                warmup_ratio,
                batch_size: batch,
                gradient_accumulation: accumulation,
                max_seq_len: seq,
                weight_decay: wd,
                max_grad_norm: MAX_GRAD_NORM,
                save_every: SAVE_EVERY,
                lora_r: r,
                lora_alpha: alpha,
                target_modules: targets.iter().map(|s| s.to_string()).collect(),
            }
        };
        match self {
            Preset::Fast => Defaults {
                train: train(1.0, 3e-4, 0.03, (8, 1, 256), 0.0)(8, 16.0, &["q_proj", "v_proj"]),
                neftune_alpha: 0.0,
            },
            Preset::Balanced => Defaults {
                train: train(2.0, 2e-4, 0.03, (4, 2, 512), 0.0)(16, 32.0, &[ALL_LINEAR]),
                neftune_alpha: 0.0,
            },
            Preset::Quality => Defaults {
                train: train(3.0, 1e-4, 0.05, (4, 4, 1024), 0.01)(32, 64.0, &[ALL_LINEAR]),
                neftune_alpha: 5.0,
            },
            Preset::MemoryEfficient => Defaults {
                train: train(2.0, 2e-4, 0.03, (1, 8, 256), 0.0)(
                    8,
                    16.0,
                    &["q_proj", "k_proj", "v_proj", "o_proj"],
                ),
                neftune_alpha: 0.0,
            },
        }
    }
}

impl SftConfig {
    /// The effective settings: explicit keys over the preset's defaults.
    pub fn resolve(&self) -> SftSettings {
        let d = self.preset.defaults();
        SftSettings {
            preset: self.preset,
            train: self.train_keys().resolve(&d.train),
            overlength: self.overlength.unwrap_or_default(),
            neftune_alpha: self.neftune_alpha.unwrap_or(d.neftune_alpha),
            train_on_prompt: self.train_on_prompt.unwrap_or(false),
            max_eval_rows: self.max_eval_rows,
            samples: self.samples.unwrap_or(SAMPLES),
            sample_max_new_tokens: self.sample_max_new_tokens.unwrap_or(SAMPLE_MAX_NEW_TOKENS),
        }
    }
}

/// The cache key hashes the effective settings (see the module doc).
impl Serialize for SftConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.resolve().serialize(serializer)
    }
}

/// Checks what serde cannot: ranges, exclusive keys, module names. Keys are named as in the
/// table (`learning_rate`, `lora.r`).
pub fn validate(cfg: &SftConfig) -> Result<(), ConfigIssue> {
    let s = cfg.resolve();
    validate_train(&cfg.train_keys(), &s.train)?;
    non_negative_finite("neftune_alpha", s.neftune_alpha)?;
    at_least("max_eval_rows", s.max_eval_rows, 1)?;
    at_least("sample_max_new_tokens", Some(s.sample_max_new_tokens), 1)?;
    validate_lora(&s.lora)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::pick_table;

    fn parse(toml: &str) -> SftConfig {
        pick_table(toml, "sft").unwrap()
    }

    fn issue(toml: &str) -> ConfigIssue {
        validate(&parse(toml)).unwrap_err()
    }

    #[test]
    fn presets_resolve_and_explicit_keys_override() {
        let balanced = parse("[sft]\n").resolve();
        assert_eq!(balanced.preset, Preset::Balanced);
        assert_eq!((balanced.lora.r, balanced.batch_size), (16, 4));
        assert_eq!(balanced.lora.target_modules.len(), 7);
        assert_eq!(balanced.epochs, Some(2.0));
        let fast = parse("[sft]\npreset = \"fast\"\n").resolve();
        assert_eq!(
            (fast.lora.r, fast.batch_size, fast.max_seq_len),
            (8, 8, 256)
        );
        assert_eq!(fast.lora.target_modules, vec!["q_proj", "v_proj"]);
        let quality = parse("[sft]\npreset = \"quality\"\n").resolve();
        assert_eq!((quality.neftune_alpha, quality.lora.r), (5.0, 32));
        let mem = parse("[sft]\npreset = \"memory_efficient\"\n").resolve();
        assert_eq!((mem.batch_size, mem.gradient_accumulation), (1, 8));

        let custom = parse(
            "[sft]\npreset = \"fast\"\nmax_steps = 30\nwarmup_steps = 2\nlearning_rate = 1e-3\n\
             [sft.lora]\nr = 4\ntarget_modules = [\"v_proj\", \"q_proj\", \"q_proj\"]\n",
        )
        .resolve();
        assert_eq!((custom.epochs, custom.max_steps), (None, Some(30)));
        assert_eq!((custom.warmup_ratio, custom.warmup_steps), (None, Some(2)));
        assert_eq!((custom.learning_rate, custom.lora.r), (1e-3, 4));
        assert_eq!(
            custom.lora.alpha, 16.0,
            "unset keys keep the preset's value"
        );
        assert_eq!(custom.lora.target_modules, vec!["q_proj", "v_proj"]);
        assert_eq!(custom.run_length(), RunLength::Steps(30));
    }

    #[test]
    fn the_canonical_form_is_the_effective_settings() {
        let json = |toml: &str| serde_json::to_value(parse(toml)).unwrap();
        let implicit = json("[sft]\n");
        assert_eq!(implicit["learning_rate"], 2e-4);
        assert_eq!(implicit["lora"]["r"], 16);
        assert_eq!(implicit["preset"], "balanced");
        // Writing a preset's default explicitly does not change the key; any change does.
        assert_eq!(
            implicit,
            json("[sft]\nbatch_size = 4\n[sft.lora]\nr = 16\n")
        );
        assert_ne!(implicit, json("[sft]\nbatch_size = 8\n"));
        assert_ne!(implicit, json("[sft]\npreset = \"fast\"\n"));
        assert_ne!(implicit, json("[sft]\n[sft.lora]\ndropout = 0.1\n"));
        // And it reads back as a config with the same effective settings.
        let back: SftConfig = serde_json::from_value(implicit.clone()).unwrap();
        assert_eq!(serde_json::to_value(back).unwrap(), implicit);
    }

    #[test]
    fn validation_names_the_key() {
        for (toml, key) in [
            ("learning_rate = 0.0", "learning_rate"),
            ("learning_rate = -1.0", "learning_rate"),
            ("epochs = 0.0", "epochs"),
            ("epochs = 1.0\nmax_steps = 5", "max_steps"),
            ("max_steps = 0", "max_steps"),
            ("warmup_ratio = 1.5", "warmup_ratio"),
            ("warmup_ratio = 0.1\nwarmup_steps = 3", "warmup_steps"),
            ("batch_size = 0", "batch_size"),
            ("gradient_accumulation = 0", "gradient_accumulation"),
            ("max_seq_len = 1", "max_seq_len"),
            ("weight_decay = -0.1", "weight_decay"),
            ("max_grad_norm = nan", "max_grad_norm"),
            ("neftune_alpha = -5.0", "neftune_alpha"),
            ("eval_every = 0", "eval_every"),
            ("save_every = 0", "save_every"),
            ("max_eval_rows = 0", "max_eval_rows"),
            ("sample_max_new_tokens = 0", "sample_max_new_tokens"),
            ("[sft.lora]\nr = 0", "lora.r"),
            ("[sft.lora]\nalpha = 0.0", "lora.alpha"),
            ("[sft.lora]\ndropout = 1.0", "lora.dropout"),
            ("[sft.lora]\ntarget_modules = []", "lora.target_modules"),
        ] {
            let toml = format!("[sft]\n{toml}\n");
            assert_eq!(issue(&toml).key, key, "{toml}");
        }
        let typo = issue("[sft]\n[sft.lora]\ntarget_modules = [\"q_porj\"]\n");
        assert!(
            typo.message.contains("did you mean `q_proj`"),
            "{}",
            typo.message
        );
        let all = parse("[sft]\n[sft.lora]\ntarget_modules = [\"all-linear\"]\n");
        assert!(validate(&all).is_ok());
        assert_eq!(all.resolve().lora.target_modules().len(), 7);
    }

    #[test]
    fn unknown_keys_and_values_are_refused_by_serde() {
        let err = pick_table::<SftConfig>("[sft]\nlearning_rat = 1.0\n", "sft").unwrap_err();
        assert!(
            err.message().contains("unknown field `learning_rat`"),
            "{err}"
        );
        let err = pick_table::<SftConfig>("[sft]\npreset = \"turbo\"\n", "sft").unwrap_err();
        assert!(err.message().contains("turbo"), "{err}");
        let err = pick_table::<SftConfig>("[sft]\noverlength = \"cut\"\n", "sft").unwrap_err();
        assert!(err.message().contains("truncate_prompt"), "{err}");
        let err = pick_table::<SftConfig>("[sft]\n[sft.lora]\nrank = 8\n", "sft").unwrap_err();
        assert!(err.message().contains("unknown field `rank`"), "{err}");
    }
}
