//! The `[orpo]` table: every key optional with a default, strict validation naming the key.
//! The table serialises as the *resolved* settings, so the cache key, `pipe show` and
//! `pipe status` see the effective values (as `[sft]` does).

use std::ops::Deref;

use serde::{Deserialize, Serialize, Serializer};

use crate::contract::ConfigIssue;
use crate::llm::{OrpoConfig as OrpoLoss, OrpoNll};
use crate::train::lora_settings::validate_lora;
use crate::train::settings::{
    preference_defaults, trainer_table, validate_eval_fraction, validate_train, TrainSettings,
};
use crate::train::validate::{at_least, positive_finite};

pub use crate::train::policy::Init;

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

trainer_table! {
    /// The `[orpo]` table as written (its own keys, then the shared training keys);
    /// [`OrpoStageConfig::resolve`] gives the effective settings.
    pub struct OrpoStageConfig {
        /// The instance whose model it starts from (default `sft` when the pipeline has an
        /// instance of that name, else `model`).
        pub model: Option<String>,
        /// The score instance (or preference ingest) whose pairs it trains on (default `score`).
        pub pairs: Option<String>,
        pub init: Option<Init>,
        pub beta: Option<f64>,
        pub nll: Option<Nll>,
        pub eval_fraction: Option<f64>,
        pub max_eval_pairs: Option<usize>,
    }
}

/// The effective settings of a run. The shared training settings are flattened into it (and
/// reached through it: `settings.batch_size` counts pairs, `settings.max_seq_len` the tokens
/// of prompt + the longer completion); `lora` is the new adapter's shape (`init = "new"`),
/// `continue_sft` keeps the sft adapter's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrpoSettings {
    pub init: Init,
    pub beta: f64,
    pub nll: Nll,
    #[serde(flatten)]
    pub train: TrainSettings,
    /// Share of the pairs held out for evaluation (a seeded split).
    pub eval_fraction: f64,
    /// `None`: every held-out pair.
    pub max_eval_pairs: Option<usize>,
}

impl Deref for OrpoSettings {
    type Target = TrainSettings;
    fn deref(&self) -> &TrainSettings {
        &self.train
    }
}

const BETA: f64 = 0.1;
const EVAL_FRACTION: f64 = 0.2;

impl OrpoStageConfig {
    /// The effective settings: explicit keys over the defaults.
    pub fn resolve(&self) -> OrpoSettings {
        OrpoSettings {
            init: self.init.unwrap_or_default(),
            beta: self.beta.unwrap_or(BETA),
            nll: self.nll.unwrap_or_default(),
            train: self.train_keys().resolve(&preference_defaults()),
            eval_fraction: self.eval_fraction.unwrap_or(EVAL_FRACTION),
            max_eval_pairs: self.max_eval_pairs,
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
    validate_train(&cfg.train_keys(), &s.train)?;
    positive_finite("beta", s.beta, "0.1 as in the ORPO paper")?;
    validate_eval_fraction(s.eval_fraction)?;
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
