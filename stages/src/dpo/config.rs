//! The `[dpo]` table: every key optional with a default, strict validation naming the key.
//! The table serialises as the *resolved* settings, so the cache key, `pipe show` and
//! `pipe status` see the effective values (as `[sft]` and `[orpo]` do).

use std::ops::Deref;

use serde::{Deserialize, Serialize, Serializer};

use crate::contract::ConfigIssue;
use crate::llm::{DpoConfig, DpoLossType};
use crate::train::lora_settings::validate_lora;
use crate::train::settings::{
    preference_defaults, trainer_table, validate_eval_fraction, validate_train, TrainSettings,
};
use crate::train::validate::{at_least, positive_finite};

pub use crate::train::policy::Init;

trainer_table! {
    /// The `[dpo]` table as written (its own keys, then the shared training keys);
    /// [`DpoStageConfig::resolve`] gives the effective settings.
    pub struct DpoStageConfig {
        /// The instance whose model it starts from (default `sft` when the pipeline has an
        /// instance of that name, else `model`).
        pub model: Option<String>,
        /// The score instance (or preference ingest) whose pairs it trains on (default `score`).
        pub pairs: Option<String>,
        pub init: Option<Init>,
        pub beta: Option<f64>,
        pub loss_type: Option<DpoLossType>,
        pub label_smoothing: Option<f64>,
        pub eval_fraction: Option<f64>,
        pub max_eval_pairs: Option<usize>,
    }
}

/// The effective settings of a run; the shared training settings are flattened into it (and
/// reached through it: `settings.batch_size` counts pairs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoSettings {
    pub init: Init,
    pub beta: f64,
    pub loss_type: DpoLossType,
    /// cDPO's share of flipped labels (sigmoid only).
    pub label_smoothing: f64,
    #[serde(flatten)]
    pub train: TrainSettings,
    /// Share of the pairs held out for evaluation (a seeded split).
    pub eval_fraction: f64,
    /// `None`: every held-out pair.
    pub max_eval_pairs: Option<usize>,
}

impl Deref for DpoSettings {
    type Target = TrainSettings;
    fn deref(&self) -> &TrainSettings {
        &self.train
    }
}

/// TRL's default.
const BETA: f64 = 0.1;
const EVAL_FRACTION: f64 = 0.2;

impl DpoStageConfig {
    /// The effective settings: explicit keys over the defaults (those of `[orpo]` for the
    /// shared keys).
    pub fn resolve(&self) -> DpoSettings {
        DpoSettings {
            init: self.init.unwrap_or_default(),
            beta: self.beta.unwrap_or(BETA),
            loss_type: self.loss_type.unwrap_or_default(),
            label_smoothing: self.label_smoothing.unwrap_or(0.0),
            train: self.train_keys().resolve(&preference_defaults()),
            eval_fraction: self.eval_fraction.unwrap_or(EVAL_FRACTION),
            max_eval_pairs: self.max_eval_pairs,
        }
    }
}

/// The cache key hashes the effective settings (see the module doc).
impl Serialize for DpoStageConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.resolve().serialize(serializer)
    }
}

impl DpoSettings {
    /// The loss settings of the LLM engine.
    pub fn loss(&self) -> DpoConfig {
        DpoConfig {
            beta: self.beta,
            loss_type: self.loss_type,
            label_smoothing: self.label_smoothing,
        }
    }
}

/// Checks what serde cannot: ranges, exclusive keys, module names, keys that have no effect.
pub fn validate(cfg: &DpoStageConfig) -> Result<(), ConfigIssue> {
    let s = cfg.resolve();
    validate_train(&cfg.train_keys(), &s.train)?;
    positive_finite("beta", s.beta, "0.1 as in TRL")?;
    if !(0.0..0.5).contains(&s.label_smoothing) {
        return Err(ConfigIssue::new(
            "label_smoothing",
            format!(
                "must be in [0, 0.5), got {}; it is the assumed share of pairs whose labels are flipped (cDPO)",
                s.label_smoothing
            ),
        ));
    }
    if s.label_smoothing > 0.0 && s.loss_type != DpoLossType::Sigmoid {
        return Err(ConfigIssue::new(
            "label_smoothing",
            "applies to loss_type = \"sigmoid\" only (cDPO); remove it or use the sigmoid loss",
        ));
    }
    validate_eval_fraction(s.eval_fraction)?;
    at_least("max_eval_pairs", s.max_eval_pairs, 1)?;
    if s.init == Init::ContinueSft && !cfg.lora.is_empty() {
        return Err(ConfigIssue::new(
            "lora",
            "has no effect with init = \"continue_sft\" (the sft adapter keeps its shape); remove [dpo.lora] or use init = \"new\"",
        ));
    }
    validate_lora(&s.lora)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::pick_table;

    fn parse(toml: &str) -> DpoStageConfig {
        pick_table(toml, "dpo").unwrap()
    }

    #[test]
    fn defaults_resolve_and_explicit_keys_override() {
        let d = parse("[dpo]\n").resolve();
        assert_eq!(
            (d.beta, d.loss_type, d.init),
            (0.1, DpoLossType::Sigmoid, Init::New)
        );
        assert_eq!((d.label_smoothing, d.eval_fraction), (0.0, 0.2));
        assert_eq!(
            (d.learning_rate, d.batch_size, d.epochs),
            (5e-5, 4, Some(1.0))
        );
        assert_eq!(d.lora.target_modules.len(), 7);
        let c = parse("[dpo]\nbeta = 0.5\nloss_type = \"ipo\"\nmax_steps = 9\n[dpo.lora]\nr = 4\n")
            .resolve();
        assert_eq!(
            (c.beta, c.loss_type, c.max_steps),
            (0.5, DpoLossType::Ipo, Some(9))
        );
        assert_eq!(c.loss().loss_type, DpoLossType::Ipo);
        assert_eq!((c.lora.r, c.lora.alpha), (4, 32.0));
        let json = |t: &str| serde_json::to_value(parse(t)).unwrap();
        assert_eq!(json("[dpo]\n"), json("[dpo]\nbeta = 0.1\n"));
        assert_ne!(json("[dpo]\n"), json("[dpo]\nlabel_smoothing = 0.1\n"));
        assert_eq!(json("[dpo]\n")["loss_type"], "sigmoid");
        assert_eq!(
            json("[dpo]\n")["batch_size"],
            4,
            "shared keys at the top level"
        );
    }

    #[test]
    fn validation_names_the_key() {
        for (toml, key) in [
            ("beta = 0.0", "beta"),
            ("label_smoothing = 0.5", "label_smoothing"),
            (
                "label_smoothing = 0.1\nloss_type = \"ipo\"",
                "label_smoothing",
            ),
            ("learning_rate = -1.0", "learning_rate"),
            ("epochs = 1.0\nmax_steps = 5", "max_steps"),
            ("batch_size = 0", "batch_size"),
            ("eval_fraction = 1.0", "eval_fraction"),
            ("save_every = 0", "save_every"),
            ("max_eval_pairs = 0", "max_eval_pairs"),
            ("init = \"continue_sft\"\n[dpo.lora]\nr = 8", "lora"),
            ("[dpo.lora]\nr = 0", "lora.r"),
        ] {
            let toml = format!("[dpo]\n{toml}\n");
            assert_eq!(validate(&parse(&toml)).unwrap_err().key, key, "{toml}");
        }
        assert!(validate(&parse("[dpo]\nlabel_smoothing = 0.1\n")).is_ok());
        let err =
            pick_table::<DpoStageConfig>("[dpo]\nloss_type = \"hinge\"\n", "dpo").unwrap_err();
        assert!(err.message().contains("sigmoid"), "{err}");
    }

    /// The shared keys are in the table itself, not flattened: a typo'd key is refused by
    /// serde with the span of the key, and so is a wrong type in a shared key.
    #[test]
    fn typos_and_wrong_types_point_at_their_key() {
        let doc = "[dpo]\nbeta = 0.2\nlearning_rat = 1.0\n";
        let err = pick_table::<DpoStageConfig>(doc, "dpo").unwrap_err();
        assert!(
            err.message().contains("unknown field `learning_rat`"),
            "{err}"
        );
        assert_eq!(&doc[err.span().unwrap()], "learning_rat");
        let doc = "[dpo]\nbatch_size = \"four\"\n";
        let err = pick_table::<DpoStageConfig>(doc, "dpo").unwrap_err();
        assert_eq!(&doc[err.span().unwrap()], "\"four\"");
    }
}
