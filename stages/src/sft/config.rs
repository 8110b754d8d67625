//! The `[sft]` table: every key optional, a `preset` filling the ones left out, strict
//! validation naming the key. The table serialises as the *resolved* settings (preset
//! applied), so the cache key, `pipe show` and `pipe status` see the effective values: changing
//! a preset's default in code or any effective setting changes the key.

use serde::{Deserialize, Serialize, Serializer};

use crate::contract::ConfigIssue;
use crate::train::fit::Overlength;
use crate::train::lora_settings::{validate_lora, LoraKeys, LoraSettings, ALL_LINEAR};
use crate::train::validate::{at_least, non_negative_finite, validate_run_length};
use crate::train::{LrScheduler, RunLength};

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

/// The `[sft]` table as written; [`SftConfig::resolve`] gives the effective settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    #[serde(default)]
    pub preset: Preset,
    pub epochs: Option<f64>,
    pub max_steps: Option<usize>,
    pub learning_rate: Option<f64>,
    pub lr_scheduler: Option<LrScheduler>,
    pub warmup_ratio: Option<f64>,
    pub warmup_steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub gradient_accumulation: Option<usize>,
    pub max_seq_len: Option<usize>,
    pub overlength: Option<Overlength>,
    pub weight_decay: Option<f64>,
    pub max_grad_norm: Option<f64>,
    pub neftune_alpha: Option<f64>,
    pub seed: Option<u64>,
    pub eval_every: Option<usize>,
    pub save_every: Option<usize>,
    pub train_on_prompt: Option<bool>,
    pub max_eval_rows: Option<usize>,
    pub samples: Option<usize>,
    pub sample_max_new_tokens: Option<usize>,
    #[serde(default)]
    pub lora: LoraKeys,
}

/// The effective settings of a run: the preset's defaults under the explicit keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftSettings {
    pub preset: Preset,
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
    pub batch_size: usize,
    pub gradient_accumulation: usize,
    pub max_seq_len: usize,
    pub overlength: Overlength,
    pub weight_decay: f64,
    /// 0 disables clipping.
    pub max_grad_norm: f64,
    /// 0 disables NEFTune.
    pub neftune_alpha: f64,
    /// `None`: the project seed.
    pub seed: Option<u64>,
    /// `None`: evaluate only before and after training.
    pub eval_every: Option<usize>,
    pub save_every: usize,
    pub train_on_prompt: bool,
    /// `None`: every val row.
    pub max_eval_rows: Option<usize>,
    pub samples: usize,
    pub sample_max_new_tokens: usize,
    pub lora: LoraSettings,
}

/// One preset's values for the keys it fills.
struct Defaults {
    epochs: f64,
    learning_rate: f64,
    warmup_ratio: f64,
    batch_size: usize,
    gradient_accumulation: usize,
    max_seq_len: usize,
    weight_decay: f64,
    neftune_alpha: f64,
    r: usize,
    alpha: f64,
    target_modules: &'static [&'static str],
}

impl Preset {
    fn defaults(self) -> Defaults {
        match self {
            Preset::Fast => Defaults {
                epochs: 1.0,
                learning_rate: 3e-4,
                warmup_ratio: 0.03,
                batch_size: 8,
                gradient_accumulation: 1,
                max_seq_len: 256,
                weight_decay: 0.0,
                neftune_alpha: 0.0,
                r: 8,
                alpha: 16.0,
                target_modules: &["q_proj", "v_proj"],
            },
            Preset::Balanced => Defaults {
                epochs: 2.0,
                learning_rate: 2e-4,
                warmup_ratio: 0.03,
                batch_size: 4,
                gradient_accumulation: 2,
                max_seq_len: 512,
                weight_decay: 0.0,
                neftune_alpha: 0.0,
                r: 16,
                alpha: 32.0,
                target_modules: &[ALL_LINEAR],
            },
            Preset::Quality => Defaults {
                epochs: 3.0,
                learning_rate: 1e-4,
                warmup_ratio: 0.05,
                batch_size: 4,
                gradient_accumulation: 4,
                max_seq_len: 1024,
                weight_decay: 0.01,
                neftune_alpha: 5.0,
                r: 32,
                alpha: 64.0,
                target_modules: &[ALL_LINEAR],
            },
            Preset::MemoryEfficient => Defaults {
                epochs: 2.0,
                learning_rate: 2e-4,
                warmup_ratio: 0.03,
                batch_size: 1,
                gradient_accumulation: 8,
                max_seq_len: 256,
                weight_decay: 0.0,
                neftune_alpha: 0.0,
                r: 8,
                alpha: 16.0,
                target_modules: &["q_proj", "k_proj", "v_proj", "o_proj"],
            },
        }
    }
}

/// Defaults no preset changes.
const MAX_GRAD_NORM: f64 = 1.0;
const SAVE_EVERY: usize = 50;
const SAMPLES: usize = 3;
const SAMPLE_MAX_NEW_TOKENS: usize = 48;

impl SftConfig {
    /// The effective settings: explicit keys over the preset's defaults.
    pub fn resolve(&self) -> SftSettings {
        let d = self.preset.defaults();
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
        let targets: Vec<String> = d.target_modules.iter().map(|s| s.to_string()).collect();
        SftSettings {
            preset: self.preset,
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
            overlength: self.overlength.unwrap_or_default(),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            max_grad_norm: self.max_grad_norm.unwrap_or(MAX_GRAD_NORM),
            neftune_alpha: self.neftune_alpha.unwrap_or(d.neftune_alpha),
            seed: self.seed,
            eval_every: self.eval_every,
            save_every: self.save_every.unwrap_or(SAVE_EVERY),
            train_on_prompt: self.train_on_prompt.unwrap_or(false),
            max_eval_rows: self.max_eval_rows,
            samples: self.samples.unwrap_or(SAMPLES),
            sample_max_new_tokens: self.sample_max_new_tokens.unwrap_or(SAMPLE_MAX_NEW_TOKENS),
            lora: self.lora.resolve(d.r, d.alpha, &targets),
        }
    }
}

/// The cache key hashes the effective settings (see the module doc).
impl Serialize for SftConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.resolve().serialize(serializer)
    }
}

impl SftSettings {
    pub fn run_length(&self) -> RunLength {
        match (self.max_steps, self.epochs) {
            (Some(steps), _) => RunLength::Steps(steps),
            (None, Some(e)) => RunLength::Epochs(e),
            (None, None) => RunLength::Epochs(1.0),
        }
    }
}

/// Checks what serde cannot: ranges, exclusive keys, module names. Keys are named as in the
/// table (`learning_rate`, `lora.r`).
pub fn validate(cfg: &SftConfig) -> Result<(), ConfigIssue> {
    let s = cfg.resolve();
    validate_run_length(
        (cfg.epochs, cfg.max_steps),
        (cfg.warmup_ratio, cfg.warmup_steps),
        s.learning_rate,
    )?;
    at_least("batch_size", Some(s.batch_size), 1)?;
    at_least("gradient_accumulation", Some(s.gradient_accumulation), 1)?;
    at_least("max_seq_len", Some(s.max_seq_len), 2)?;
    non_negative_finite("weight_decay", s.weight_decay)?;
    non_negative_finite("max_grad_norm", s.max_grad_norm)?;
    non_negative_finite("neftune_alpha", s.neftune_alpha)?;
    at_least("eval_every", s.eval_every, 1)?;
    at_least("save_every", Some(s.save_every), 1)?;
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
