//! What a LoRA adapter is made of, in PEFT's terms: which projections it adapts, its rank,
//! alpha, dropout and scaling rule.

use serde::{Deserialize, Serialize};

use crate::llm::error::{LlmError, LlmResult};

/// The projections LoRA can adapt, by their HF module names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetModule {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

impl TargetModule {
    /// All seven, in the order of a decoder layer.
    pub const ALL: [TargetModule; 7] = [
        TargetModule::QProj,
        TargetModule::KProj,
        TargetModule::VProj,
        TargetModule::OProj,
        TargetModule::GateProj,
        TargetModule::UpProj,
        TargetModule::DownProj,
    ];

    /// The HF module name, e.g. `q_proj`.
    pub fn hf_name(self) -> &'static str {
        match self {
            TargetModule::QProj => "q_proj",
            TargetModule::KProj => "k_proj",
            TargetModule::VProj => "v_proj",
            TargetModule::OProj => "o_proj",
            TargetModule::GateProj => "gate_proj",
            TargetModule::UpProj => "up_proj",
            TargetModule::DownProj => "down_proj",
        }
    }

    /// `self_attn` or `mlp`: the submodule holding this projection.
    pub fn parent(self) -> &'static str {
        match self {
            TargetModule::QProj
            | TargetModule::KProj
            | TargetModule::VProj
            | TargetModule::OProj => "self_attn",
            TargetModule::GateProj | TargetModule::UpProj | TargetModule::DownProj => "mlp",
        }
    }

    /// Parses an HF module name (`q_proj`, ...).
    pub fn from_hf_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.hf_name() == name)
    }

    /// The HF path of this projection in `layer`, without `.weight`: `model.layers.3.mlp.up_proj`.
    pub fn module_path(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.{}", self.parent(), self.hf_name())
    }
}

impl std::fmt::Display for TargetModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.hf_name())
    }
}

/// Hyper-parameters of a LoRA adapter, in PEFT's terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<TargetModule>,
    /// Rank-stabilised scaling `alpha/sqrt(r)` (Kalajdzievski 2023) instead of `alpha/r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Seeds the initialisation of A (and nothing else; dropout is seeded per step).
    #[serde(default)]
    pub seed: u64,
}

impl LoraConfig {
    /// The factor applied to `B·A`.
    pub fn scale(&self) -> f64 {
        lora_scale(self.alpha, self.r, self.use_rslora)
    }

    /// Refuses settings that cannot train (rank 0, dropout 1, no targets, non-finite alpha).
    pub fn validate(&self) -> LlmResult<()> {
        if self.r == 0 {
            return Err(LlmError::Invalid("lora: r must be at least 1".into()));
        }
        if !self.alpha.is_finite() {
            return Err(LlmError::Invalid(format!(
                "lora: alpha must be finite, got {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LlmError::Invalid(format!(
                "lora: dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(LlmError::Invalid(
                "lora: target_modules is empty; name at least one of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj".into(),
            ));
        }
        Ok(())
    }
}

/// `alpha/r`, or `alpha/sqrt(r)` with rsLoRA.
pub fn lora_scale(alpha: f64, r: usize, use_rslora: bool) -> f64 {
    if use_rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dropout: f64) -> LoraConfig {
        LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout,
            target_modules: TargetModule::ALL.to_vec(),
            use_rslora: false,
            seed: 7,
        }
    }

    #[test]
    fn scales_follow_peft() {
        let mut c = config(0.0);
        assert_eq!(c.scale(), 2.0);
        c.use_rslora = true;
        assert_eq!(c.scale(), 4.0);
    }

    #[test]
    fn validate_rejects_unusable_settings() {
        let mut c = config(0.0);
        c.r = 0;
        assert!(c.validate().is_err());
        let mut c = config(1.0);
        assert!(c.validate().is_err());
        c.dropout = 0.1;
        c.target_modules.clear();
        assert!(c.validate().unwrap_err().to_string().contains("q_proj"));
    }
}
