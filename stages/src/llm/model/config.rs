//! The architecture description every part of the engine agrees on, whether it came from an
//! HF `config.json` or from GGUF metadata.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::llm::error::{LlmError, LlmResult};

/// The decoder families we implement; anything else is refused when weights are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama 1/2/3 and SmolLM/SmolLM2 (`LlamaForCausalLM`).
    Llama,
    /// Mistral (`MistralForCausalLM`): Llama plus an optional sliding window.
    Mistral,
    /// Qwen2 (`Qwen2ForCausalLM`): Llama plus biases on q/k/v projections.
    Qwen2,
}

/// Llama-3 style rope frequency scaling (`rope_scaling` with `rope_type = "llama3"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Hyper-parameters of a Llama-family decoder, in HF `config.json` terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Per-head dimension; `hidden_size / num_attention_heads` unless the config says otherwise.
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    /// lm_head shares the embedding matrix (no `lm_head.weight` tensor).
    pub tie_word_embeddings: bool,
    /// Biases on q_proj/k_proj/v_proj (Qwen2).
    pub attention_bias: bool,
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl Architecture {
    /// Maps an HF `model_type` (`llama`, `mistral`, `qwen2`) to an architecture.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Architecture::Llama),
            "mistral" => Some(Architecture::Mistral),
            "qwen2" => Some(Architecture::Qwen2),
            _ => None,
        }
    }

    /// Maps an HF `architectures` entry (`LlamaForCausalLM`, ...) to an architecture.
    pub fn from_hf_class(class: &str) -> Option<Self> {
        match class {
            "LlamaForCausalLM" => Some(Architecture::Llama),
            "MistralForCausalLM" => Some(Architecture::Mistral),
            "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
            _ => None,
        }
    }

    /// The HF `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
        }
    }

    /// The HF `architectures` class name.
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// Reads the fields of an HF `config.json`, naming the file and the field in every error.
struct JsonFields<'a> {
    path: &'a Path,
    obj: &'a serde_json::Map<String, Value>,
}

impl<'a> JsonFields<'a> {
    fn present(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn wrong_type(&self, field: &str, expected: &str) -> LlmError {
        LlmError::bad_file(self.path, format!("field `{field}` must be {expected}"))
    }

    fn opt_usize(&self, field: &str) -> LlmResult<Option<usize>> {
        self.present(field)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.wrong_type(field, "a non-negative integer"))
            })
            .transpose()
    }

    fn usize(&self, field: &str) -> LlmResult<usize> {
        self.opt_usize(field)?
            .ok_or_else(|| LlmError::MissingField {
                path: self.path.to_path_buf(),
                field: field.to_string(),
            })
    }

    fn opt_f64(&self, field: &str) -> LlmResult<Option<f64>> {
        self.present(field)
            .map(|v| v.as_f64().ok_or_else(|| self.wrong_type(field, "a number")))
            .transpose()
    }

    fn opt_bool(&self, field: &str) -> LlmResult<Option<bool>> {
        self.present(field)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.wrong_type(field, "true or false"))
            })
            .transpose()
    }

    fn opt_u32(&self, field: &str) -> LlmResult<Option<u32>> {
        Ok(self.opt_usize(field)?.and_then(|n| u32::try_from(n).ok()))
    }

    /// `eos_token_id` is an integer or a list of integers.
    fn u32_list(&self, field: &str) -> LlmResult<Vec<u32>> {
        let to_u32 = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        match self.present(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| to_u32(v).ok_or_else(|| self.wrong_type(field, "a list of token ids")))
                .collect(),
            Some(v) => to_u32(v)
                .map(|id| vec![id])
                .ok_or_else(|| self.wrong_type(field, "a token id or a list of token ids")),
        }
    }

    fn opt_str(&self, field: &str) -> Option<&'a str> {
        self.present(field).and_then(Value::as_str)
    }
}

impl ModelConfig {
    /// Reads an HF `config.json`.
    pub fn from_config_json(path: &Path) -> LlmResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LlmError::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| LlmError::bad_file(path, format!("not valid JSON: {e}")))?;
        Self::from_hf_json(&value, path)
    }

    /// Parses the content of an HF `config.json`; `path` is only used in error messages.
    pub fn from_hf_json(value: &Value, path: &Path) -> LlmResult<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| LlmError::bad_file(path, "expected a JSON object"))?;
        let fields = JsonFields { path, obj };
        let architecture = architecture_of(&fields)?;
        let hidden_size = fields.usize("hidden_size")?;
        let num_attention_heads = fields.usize("num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(LlmError::bad_file(
                path,
                "`num_attention_heads` must be positive",
            ));
        }
        let num_key_value_heads = fields
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        let head_dim = fields
            .opt_usize("head_dim")?
            .unwrap_or(hidden_size / num_attention_heads);
        // Qwen2 always has q/k/v biases and its config has no `attention_bias` field.
        let attention_bias = architecture == Architecture::Qwen2
            || fields.opt_bool("attention_bias")?.unwrap_or(false);
        let config = ModelConfig {
            architecture,
            vocab_size: fields.usize("vocab_size")?,
            hidden_size,
            intermediate_size: fields.usize("intermediate_size")?,
            num_hidden_layers: fields.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: fields.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: fields.opt_f64("rope_theta")?.unwrap_or(10_000.0),
            rope_scaling: rope_scaling_of(&fields)?,
            max_position_embeddings: fields
                .opt_usize("max_position_embeddings")?
                .unwrap_or(default_max_positions(architecture)),
            // transformers' Llama/Mistral/Qwen2 configs all default to untied embeddings.
            tie_word_embeddings: fields.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias,
            sliding_window: sliding_window_of(&fields, architecture)?,
            bos_token_id: fields.opt_u32("bos_token_id")?,
            eos_token_ids: fields.u32_list("eos_token_id")?,
            pad_token_id: fields.opt_u32("pad_token_id")?,
        };
        config.validate().map_err(|m| LlmError::bad_file(path, m))?;
        Ok(config)
    }

    /// Internal consistency that every source must satisfy; the message names the fields.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{name}` must be positive"));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "`head_dim` ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        self.check_sizes()
    }

    /// Every matrix the config implies has a size that fits in memory's address space, and
    /// the float parameters are usable: a crafted file cannot overflow a shape computation.
    fn check_sizes(&self) -> Result<(), String> {
        let h = self.hidden_size;
        let fits = |a: usize, b: usize| {
            a.checked_mul(b)
                .and_then(|n| n.checked_mul(std::mem::size_of::<f32>()))
                .is_some_and(|bytes| bytes <= isize::MAX as usize)
        };
        let products = [
            (
                "num_attention_heads × head_dim",
                self.num_attention_heads,
                self.head_dim,
            ),
            (
                "num_key_value_heads × head_dim",
                self.num_key_value_heads,
                self.head_dim,
            ),
            ("vocab_size × hidden_size", self.vocab_size, h),
            ("intermediate_size × hidden_size", self.intermediate_size, h),
        ];
        for (what, a, b) in products {
            if !fits(a, b) || (what.ends_with("head_dim") && !fits(a * b, h)) {
                return Err(format!("{what} ({a} × {b}) is too large for any model"));
            }
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!(
                "`rope_theta` must be a positive number, got {}",
                self.rope_theta
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(format!(
                "`rms_norm_eps` must be a number >= 0, got {}",
                self.rms_norm_eps
            ));
        }
        Ok(())
    }

    /// The content of a transformers-loadable `config.json` for this model.
    pub fn to_hf_json(&self, torch_dtype: &str) -> Value {
        let mut obj = serde_json::json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling.as_ref().map(RopeScaling::to_hf_json),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": 0.02,
            "use_cache": true,
            "torch_dtype": torch_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos_json(&self.eos_token_ids),
            "pad_token_id": self.pad_token_id,
        });
        let map = obj.as_object_mut().expect("json! of an object literal");
        match self.architecture {
            Architecture::Llama => {
                map.insert("attention_bias".into(), self.attention_bias.into());
                map.insert("attention_dropout".into(), 0.0.into());
                map.insert("mlp_bias".into(), false.into());
                map.insert("pretraining_tp".into(), 1.into());
            }
            Architecture::Mistral => {
                map.insert("sliding_window".into(), self.sliding_window.into());
                map.insert("attention_dropout".into(), 0.0.into());
            }
            Architecture::Qwen2 => {
                map.insert(
                    "use_sliding_window".into(),
                    self.sliding_window.is_some().into(),
                );
                map.insert(
                    "sliding_window".into(),
                    self.sliding_window
                        .unwrap_or(self.max_position_embeddings)
                        .into(),
                );
                map.insert("max_window_layers".into(), self.num_hidden_layers.into());
                map.insert("attention_dropout".into(), 0.0.into());
            }
        }
        obj
    }
}

impl RopeScaling {
    /// The `rope_scaling` object of an HF `config.json`.
    pub fn to_hf_json(&self) -> Value {
        serde_json::json!({
            "rope_type": "llama3",
            "factor": self.factor,
            "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        })
    }
}

fn eos_json(ids: &[u32]) -> Value {
    match ids {
        [] => Value::Null,
        [one] => (*one).into(),
        many => many.into(),
    }
}

/// `model_type` decides; `architectures` is the fallback for configs without it.
fn architecture_of(fields: &JsonFields<'_>) -> LlmResult<Architecture> {
    if let Some(model_type) = fields.opt_str("model_type") {
        return Architecture::from_model_type(model_type)
            .ok_or_else(|| LlmError::UnsupportedArchitecture(model_type.to_string()));
    }
    let classes = fields
        .present("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        .unwrap_or_default();
    match classes.first() {
        Some(class) => Architecture::from_hf_class(class)
            .ok_or_else(|| LlmError::UnsupportedArchitecture(class.to_string())),
        None => Err(LlmError::MissingField {
            path: fields.path.to_path_buf(),
            field: "model_type".into(),
        }),
    }
}

fn default_max_positions(arch: Architecture) -> usize {
    match arch {
        Architecture::Llama => 2048,
        Architecture::Mistral => 4096 * 32,
        Architecture::Qwen2 => 32768,
    }
}

/// Only Llama-3 scaling is implemented; plain RoPE (`null`, `default`) is `None`, anything
/// else is refused instead of being silently ignored (it would change every logit).
fn rope_scaling_of(fields: &JsonFields<'_>) -> LlmResult<Option<RopeScaling>> {
    let Some(value) = fields.present("rope_scaling") else {
        return Ok(None);
    };
    let obj = value
        .as_object()
        .ok_or_else(|| fields.wrong_type("rope_scaling", "an object or null"))?;
    let inner = JsonFields {
        path: fields.path,
        obj,
    };
    let kind = inner
        .opt_str("rope_type")
        .or_else(|| inner.opt_str("type"))
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let need_f64 = |field: &str| -> LlmResult<f64> {
                inner.opt_f64(field)?.ok_or_else(|| LlmError::MissingField {
                    path: fields.path.to_path_buf(),
                    field: format!("rope_scaling.{field}"),
                })
            };
            Ok(Some(RopeScaling {
                factor: need_f64("factor")?,
                low_freq_factor: need_f64("low_freq_factor")?,
                high_freq_factor: need_f64("high_freq_factor")?,
                original_max_position_embeddings: inner
                    .usize("original_max_position_embeddings")
                    .map_err(|_| LlmError::MissingField {
                    path: fields.path.to_path_buf(),
                    field: "rope_scaling.original_max_position_embeddings".into(),
                })?,
            }))
        }
        other => Err(LlmError::bad_file(
            fields.path,
            format!("rope_scaling type `{other}` is not supported (only `llama3`)"),
        )),
    }
}

/// Mistral's window is `sliding_window`; Qwen2 only uses it when `use_sliding_window` is true.
fn sliding_window_of(fields: &JsonFields<'_>, arch: Architecture) -> LlmResult<Option<usize>> {
    let window = fields.opt_usize("sliding_window")?;
    Ok(match arch {
        Architecture::Llama => None,
        Architecture::Mistral => window,
        Architecture::Qwen2 => window.filter(|_| {
            fields
                .opt_bool("use_sliding_window")
                .ok()
                .flatten()
                .unwrap_or(false)
        }),
    })
}
