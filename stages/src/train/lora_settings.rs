//! The `lora` sub-table every trainer stage has (`[sft.lora]`, `[orpo.lora]`): the keys as
//! written, the effective settings over a stage's defaults, and their validation.

use serde::{Deserialize, Serialize};

use crate::contract::ConfigIssue;
use crate::llm::TargetModule;

use super::validate::{at_least, positive_finite};

/// `target_modules` shorthand for every linear projection.
pub const ALL_LINEAR: &str = "all-linear";
/// No stage's defaults change it.
const LORA_DROPOUT: f64 = 0.05;

/// The `[<stage>.lora]` table as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraKeys {
    pub r: Option<usize>,
    pub alpha: Option<f64>,
    pub dropout: Option<f64>,
    /// HF module names (`q_proj`, ...) or `all-linear`.
    pub target_modules: Option<Vec<String>>,
    pub use_rslora: Option<bool>,
}

/// The effective LoRA settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSettings {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// HF module names in layer order, `all-linear` expanded.
    pub target_modules: Vec<String>,
    pub use_rslora: bool,
}

impl LoraKeys {
    /// The effective LoRA settings: the keys written over the given defaults (`targets`
    /// applies when `target_modules` is left out).
    pub fn resolve(&self, r: usize, alpha: f64, targets: &[String]) -> LoraSettings {
        let targets = self.target_modules.as_deref().unwrap_or(targets);
        LoraSettings {
            r: self.r.unwrap_or(r),
            alpha: self.alpha.unwrap_or(alpha),
            dropout: self.dropout.unwrap_or(LORA_DROPOUT),
            target_modules: canonical_targets(targets),
            use_rslora: self.use_rslora.unwrap_or(false),
        }
    }

    /// Whether the table sets any key.
    pub fn is_empty(&self) -> bool {
        self == &LoraKeys::default()
    }
}

impl LoraSettings {
    /// The target modules as the engine's enum (validated names).
    pub fn target_modules(&self) -> Vec<TargetModule> {
        self.target_modules
            .iter()
            .filter_map(|n| TargetModule::from_hf_name(n))
            .collect()
    }

    /// The engine's LoRA configuration, its A matrices initialised from the run's seed.
    pub fn engine_config(&self, seed: u64) -> crate::llm::LoraConfig {
        crate::llm::LoraConfig {
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
            target_modules: self.target_modules(),
            use_rslora: self.use_rslora,
            seed: crate::train::rng::derive(seed, crate::train::rng::Stream::LoraInit, 0, 0),
        }
    }
}

/// `all-linear` expanded, duplicates removed, known names in layer order (unknown names are
/// kept so validation can name them).
fn canonical_targets(names: &[String]) -> Vec<String> {
    let mut known: Vec<TargetModule> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    for name in names {
        let name = name.trim();
        if name == ALL_LINEAR {
            known.extend(TargetModule::ALL);
        } else if let Some(m) = TargetModule::from_hf_name(name) {
            known.push(m);
        } else if !unknown.iter().any(|u| u == name) {
            unknown.push(name.to_string());
        }
    }
    known.sort();
    known.dedup();
    known
        .iter()
        .map(|m| m.hf_name().to_string())
        .chain(unknown)
        .collect()
}

/// Ranges and module names; keys as in the table (`lora.r`).
pub fn validate_lora(l: &LoraSettings) -> Result<(), ConfigIssue> {
    at_least("lora.r", Some(l.r), 1)?;
    positive_finite("lora.alpha", l.alpha, "usually twice `r`")?;
    if !(0.0..1.0).contains(&l.dropout) {
        return Err(ConfigIssue::new(
            "lora.dropout",
            format!("must be in [0, 1), got {}", l.dropout),
        ));
    }
    if l.target_modules.is_empty() {
        return Err(ConfigIssue::new(
            "lora.target_modules",
            format!(
                "is empty; name at least one of {}, or \"{ALL_LINEAR}\"",
                module_list()
            ),
        ));
    }
    if let Some(bad) = l
        .target_modules
        .iter()
        .find(|n| TargetModule::from_hf_name(n).is_none())
    {
        let hint = nearest_module(bad)
            .map(|m| format!("did you mean `{m}`? "))
            .unwrap_or_default();
        return Err(ConfigIssue::new(
            "lora.target_modules",
            format!(
                "unknown module `{bad}`; {hint}choose from {}, or \"{ALL_LINEAR}\"",
                module_list()
            ),
        ));
    }
    Ok(())
}

fn module_list() -> String {
    TargetModule::ALL.map(|m| m.hf_name()).join(" ")
}

fn nearest_module(name: &str) -> Option<&'static str> {
    TargetModule::ALL
        .iter()
        .map(|m| (m.hf_name(), strsim::jaro_winkler(name, m.hf_name())))
        .filter(|(_, score)| *score > 0.8)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, _)| n)
}
