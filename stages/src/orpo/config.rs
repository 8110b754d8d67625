//! The `[orpo]` table: every key optional with a default, strict validation naming the key.
//! The table serialises as the *resolved* settings, so the cache key, `pipe show` and
//! `pipe status` see the effective values (as `[sft]` does).

use serde::{Deserialize, Serialize, Serializer};

use crate::contract::ConfigIssue;
use crate::llm::{OrpoConfig as OrpoLoss, OrpoNll};
use crate::train::lora_settings::{validate_lora, LoraKeys, LoraSettings, ALL_LINEAR};
use crate::train::validate::{at_least, non_negative_finite, positive_finite, validate_run_length};
use crate::train::{LrScheduler, RunLength};

/// Which adapter ORPO trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// A new LoRA (`[orpo.lora]`) on the base with the sft adapter merged in: the pipeline's
    /// final model is base + sft + orpo.
    #[default]
    New,
    /// Keep training the sft adapter itself: the orpo adapter then replaces the sft one.
    ContinueSft,
}

/// The NLL term of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Nll {
    /// Mean NLL of the chosen completion tokens (the paper, LLaMA-Factory).
    #[default]
    Completion,
    /// Mean NLL over prompt + chosen, as TRL's ORPOTrainer computes it.
    Full,
}

impl Nll {
    pub fn name(self) -> &'static str {
        match self {
            Nll::Completion => "completion",
            Nll::Full => "full",
        }
    }
}

/// The `[orpo]` table as written; [`OrpoStageConfig::resolve`] gives the effective settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrpoStageConfig {
    pub init: Option<Init>,
    pub beta: Option<f64>,
    pub nll: Option<Nll>,
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
    pub eval_fraction: Option<f64>,
    pub eval_every: Option<usize>,
    pub save_every: Option<usize>,
    pub max_eval_pairs: Option<usize>,
    #[serde(default)]
    pub lora: LoraKeys,
}

/// The effective settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrpoSettings {
    pub init: Init,
    pub beta: f64,
    pub nll: Nll,
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
    /// Pairs per micro-batch (each pair is two sequences).
    pub batch_size: usize,
    pub gradient_accumulation: usize,
    /// Tokens of prompt + the longer completion of a pair.
    pub max_seq_len: usize,
    pub weight_decay: f64,
    /// 0 disables clipping.
    pub max_grad_norm: f64,
    /// `None`: the project seed.
    pub seed: Option<u64>,
    /// Share of the pairs held out for evaluation (a seeded split).
    pub eval_fraction: f64,
    /// `None`: evaluate only before and after training.
    pub eval_every: Option<usize>,
    pub save_every: usize,
    /// `None`: every held-out pair.
    pub max_eval_pairs: Option<usize>,
    /// The new adapter's shape (`init = "new"`); `continue_sft` keeps the sft adapter's.
    pub lora: LoraSettings,
}

const BETA: f64 = 0.1;
/// LoRA wants a far larger rate than TRL's full-finetuning default of 8e-6.
const LEARNING_RATE: f64 = 5e-5;
const WARMUP_RATIO: f64 = 0.1;
const BATCH_SIZE: usize = 4;
const GRADIENT_ACCUMULATION: usize = 2;
const MAX_SEQ_LEN: usize = 512;
const MAX_GRAD_NORM: f64 = 1.0;
const EVAL_FRACTION: f64 = 0.2;
const SAVE_EVERY: usize = 50;
const LORA_R: usize = 16;
const LORA_ALPHA: f64 = 32.0;

impl OrpoStageConfig {
    /// The effective settings: explicit keys over the defaults.
    pub fn resolve(&self) -> OrpoSettings {
        let (epochs, max_steps) = match (self.epochs, self.max_steps) {
            (_, Some(steps)) => (None, Some(steps)),
            (Some(e), None) => (Some(e), None),
            (None, None) => (Some(1.0), None),
        };
        let (warmup_ratio, warmup_steps) = match (self.warmup_ratio, self.warmup_steps) {
            (_, Some(steps)) => (None, Some(steps)),
            (Some(r), None) => (Some(r), None),
            (None, None) => (Some(WARMUP_RATIO), None),
        };
        OrpoSettings {
            init: self.init.unwrap_or_default(),
            beta: self.beta.unwrap_or(BETA),
            nll: self.nll.unwrap_or_default(),
            epochs,
            max_steps,
            learning_rate: self.learning_rate.unwrap_or(LEARNING_RATE),
            lr_scheduler: self.lr_scheduler.unwrap_or(LrScheduler::Cosine),
            warmup_ratio,
            warmup_steps,
            batch_size: self.batch_size.unwrap_or(BATCH_SIZE),
            gradient_accumulation: self.gradient_accumulation.unwrap_or(GRADIENT_ACCUMULATION),
            max_seq_len: self.max_seq_len.unwrap_or(MAX_SEQ_LEN),
            weight_decay: self.weight_decay.unwrap_or(0.0),
            max_grad_norm: self.max_grad_norm.unwrap_or(MAX_GRAD_NORM),
            seed: self.seed,
            eval_fraction: self.eval_fraction.unwrap_or(EVAL_FRACTION),
            eval_every: self.eval_every,
            save_every: self.save_every.unwrap_or(SAVE_EVERY),
            max_eval_pairs: self.max_eval_pairs,
            lora: self
                .lora
                .resolve(LORA_R, LORA_ALPHA, &[ALL_LINEAR.to_string()]),
        }
    }
}

/// The cache key hashes the effective settings (see the module doc).
impl Serialize for OrpoStageConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.resolve().serialize(serializer)
    }
}

impl OrpoSettings {
    pub fn run_length(&self) -> RunLength {
        match (self.max_steps, self.epochs) {
            (Some(steps), _) => RunLength::Steps(steps),
            (None, Some(e)) => RunLength::Epochs(e),
            (None, None) => RunLength::Epochs(1.0),
        }
    }

    /// The loss settings of the LLM engine.
    pub fn loss(&self) -> OrpoLoss {
        OrpoLoss {
            beta: self.beta,
            nll: match self.nll {
                Nll::Completion => OrpoNll::Completion,
                Nll::Full => OrpoNll::FullSequence,
            },
        }
    }
}

/// Checks what serde cannot: ranges, exclusive keys, module names, keys `init` ignores.
pub fn validate(cfg: &OrpoStageConfig) -> Result<(), ConfigIssue> {
    let s = cfg.resolve();
    validate_run_length(
        (cfg.epochs, cfg.max_steps),
        (cfg.warmup_ratio, cfg.warmup_steps),
        s.learning_rate,
    )?;
    positive_finite("beta", s.beta, "0.1 as in the ORPO paper")?;
    at_least("batch_size", Some(s.batch_size), 1)?;
    at_least("gradient_accumulation", Some(s.gradient_accumulation), 1)?;
    at_least("max_seq_len", Some(s.max_seq_len), 2)?;
    non_negative_finite("weight_decay", s.weight_decay)?;
    non_negative_finite("max_grad_norm", s.max_grad_norm)?;
    if !(s.eval_fraction > 0.0 && s.eval_fraction < 1.0) {
        return Err(ConfigIssue::new(
            "eval_fraction",
            format!(
                "must be in (0, 1), got {}; 0.2 holds out 20% of the pairs",
                s.eval_fraction
            ),
        ));
    }
    at_least("eval_every", s.eval_every, 1)?;
    at_least("save_every", Some(s.save_every), 1)?;
    at_least("max_eval_pairs", s.max_eval_pairs, 1)?;
    if s.init == Init::ContinueSft && !cfg.lora.is_empty() {
        return Err(ConfigIssue::new(
            "lora",
            "has no effect with init = \"continue_sft\" (the sft adapter keeps its shape); remove [orpo.lora] or use init = \"new\"",
        ));
    }
    validate_lora(&s.lora)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::pick_table;

    fn parse(toml: &str) -> OrpoStageConfig {
        pick_table(toml, "orpo").unwrap()
    }

    #[test]
    fn defaults_resolve_and_explicit_keys_override() {
        let d = parse("[orpo]\n").resolve();
        assert_eq!((d.beta, d.nll, d.init), (0.1, Nll::Completion, Init::New));
        assert_eq!((d.epochs, d.eval_fraction), (Some(1.0), 0.2));
        assert_eq!(d.lora.target_modules.len(), 7);
        let c = parse(
            "[orpo]\nbeta = 0.25\nnll = \"full\"\nmax_steps = 9\n[orpo.lora]\nr = 4\ntarget_modules = [\"v_proj\", \"q_proj\"]\n",
        )
        .resolve();
        assert_eq!((c.beta, c.max_steps, c.epochs), (0.25, Some(9), None));
        assert_eq!(c.loss().nll, OrpoNll::FullSequence);
        assert_eq!((c.lora.r, c.lora.alpha), (4, 32.0));
        assert_eq!(c.lora.target_modules, vec!["q_proj", "v_proj"]);
        let json = |t: &str| serde_json::to_value(parse(t)).unwrap();
        assert_eq!(json("[orpo]\n"), json("[orpo]\nbeta = 0.1\n"));
        assert_ne!(json("[orpo]\n"), json("[orpo]\nnll = \"full\"\n"));
        assert_eq!(
            json("[orpo]\ninit = \"continue_sft\"\n")["init"],
            "continue_sft"
        );
    }

    #[test]
    fn validation_names_the_key() {
        for (toml, key) in [
            ("beta = 0.0", "beta"),
            ("learning_rate = -1.0", "learning_rate"),
            ("epochs = 1.0\nmax_steps = 5", "max_steps"),
            ("warmup_ratio = 0.1\nwarmup_steps = 3", "warmup_steps"),
            ("batch_size = 0", "batch_size"),
            ("max_seq_len = 1", "max_seq_len"),
            ("eval_fraction = 1.0", "eval_fraction"),
            ("eval_fraction = 0.0", "eval_fraction"),
            ("eval_every = 0", "eval_every"),
            ("save_every = 0", "save_every"),
            ("max_eval_pairs = 0", "max_eval_pairs"),
            ("init = \"continue_sft\"\n[orpo.lora]\nr = 8", "lora"),
            ("[orpo.lora]\nr = 0", "lora.r"),
        ] {
            let toml = format!("[orpo]\n{toml}\n");
            assert_eq!(validate(&parse(&toml)).unwrap_err().key, key, "{toml}");
        }
        assert!(validate(&parse("[orpo]\ninit = \"continue_sft\"\n")).is_ok());
        let err = pick_table::<OrpoStageConfig>("[orpo]\nnll = \"both\"\n", "orpo").unwrap_err();
        assert!(err.message().contains("completion"), "{err}");
        let err = pick_table::<OrpoStageConfig>("[orpo]\nlamda = 0.1\n", "orpo").unwrap_err();
        assert!(err.message().contains("unknown field `lamda`"), "{err}");
    }
}
