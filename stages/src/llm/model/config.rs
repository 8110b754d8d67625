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
    /// Qwen3 (`Qwen3ForCausalLM`): per-head RMSNorm on q and k, explicit `head_dim`.
    Qwen3,
    /// Gemma-3 text (`Gemma3ForCausalLM`, `gemma3_text`): `(1 + w)` norms, four norms per
    /// layer, q/k norm, scaled embeddings, GELU-tanh, sliding-window layers.
    Gemma3,
}

/// Which attention a layer uses (transformers' `layer_types` entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    FullAttention,
    SlidingAttention,
}

impl LayerType {
    /// Parses a `layer_types` entry.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "full_attention" => Some(LayerType::FullAttention),
            "sliding_attention" => Some(LayerType::SlidingAttention),
            _ => None,
        }
    }

    /// The `layer_types` entry.
    pub fn hf_name(self) -> &'static str {
        match self {
            LayerType::FullAttention => "full_attention",
            LayerType::SlidingAttention => "sliding_attention",
        }
    }
}

/// Llama-3 style rope frequency scaling (`rope_type = "llama3"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Rope frequency scaling (`rope_scaling`, or the scaling fields of `rope_parameters`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama-3: long wavelengths slowed by `factor`, short ones kept, a smooth band between.
    Llama3(Llama3Scaling),
    /// Dynamic NTK: the base grows once a sequence is longer than
    /// `original_max_position_embeddings`.
    Dynamic {
        factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Hyper-parameters of a decoder, in HF `config.json` terms.
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
    /// The window of sliding-window layers: keys at most `window - 1` positions back.
    pub sliding_window: Option<usize>,
    /// Per layer, full or sliding-window attention, when the layers differ (Gemma-3, Qwen with
    /// `max_window_layers`); `None` when every layer attends alike, windowed by
    /// `sliding_window` if set (Mistral).
    #[serde(default)]
    pub layer_types: Option<Vec<LayerType>>,
    /// The rope base of the sliding-window layers, unscaled (Gemma-3's
    /// `rope_local_base_freq`); `None`: every layer uses `rope_theta` and `rope_scaling`.
    #[serde(default)]
    pub rope_local_theta: Option<f64>,
    /// Attention scores are scaled by `query_pre_attn_scalar^-1/2` (Gemma); by
    /// `head_dim^-1/2` when `None`.
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl Architecture {
    /// Maps an HF `model_type` (`llama`, `mistral`, `qwen2`, ...) to an architecture.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Architecture::Llama),
            "mistral" => Some(Architecture::Mistral),
            "qwen2" => Some(Architecture::Qwen2),
            "qwen3" => Some(Architecture::Qwen3),
            "gemma3_text" => Some(Architecture::Gemma3),
            _ => None,
        }
    }

    /// Maps an HF `architectures` entry (`LlamaForCausalLM`, ...) to an architecture.
    pub fn from_hf_class(class: &str) -> Option<Self> {
        match class {
            "LlamaForCausalLM" => Some(Architecture::Llama),
            "MistralForCausalLM" => Some(Architecture::Mistral),
            "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
            "Qwen3ForCausalLM" => Some(Architecture::Qwen3),
            "Gemma3ForCausalLM" => Some(Architecture::Gemma3),
            _ => None,
        }
    }

    /// The HF `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Gemma3 => "gemma3_text",
        }
    }

    /// The HF `architectures` class name.
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
            Architecture::Gemma3 => "Gemma3ForCausalLM",
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
        let head_dim = fields.opt_usize("head_dim")?.unwrap_or(default_head_dim(
            architecture,
            hidden_size,
            num_attention_heads,
        ));
        // Qwen2 always has q/k/v biases and its config has no `attention_bias` field.
        let attention_bias = architecture == Architecture::Qwen2
            || fields.opt_bool("attention_bias")?.unwrap_or(false);
        check_family_fields(&fields, architecture)?;
        let num_hidden_layers = fields.usize("num_hidden_layers")?;
        let max_position_embeddings = fields
            .opt_usize("max_position_embeddings")?
            .unwrap_or(default_max_positions(architecture));
        let rope = rope_of(&fields, architecture, max_position_embeddings)?;
        let (sliding_window, layer_types) =
            attention_pattern_of(&fields, architecture, num_hidden_layers)?;
        let query_pre_attn_scalar = match architecture {
            Architecture::Gemma3 => Some(
                fields
                    .opt_f64("query_pre_attn_scalar")?
                    .unwrap_or(head_dim as f64),
            ),
            _ => None,
        };
        let config = ModelConfig {
            architecture,
            vocab_size: fields.usize("vocab_size")?,
            hidden_size,
            intermediate_size: fields.usize("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: fields.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope.theta,
            rope_scaling: rope.scaling,
            max_position_embeddings,
            // transformers' Llama/Mistral/Qwen configs default to untied embeddings, Gemma's
            // to tied ones.
            tie_word_embeddings: fields
                .opt_bool("tie_word_embeddings")?
                .unwrap_or(architecture == Architecture::Gemma3),
            attention_bias,
            sliding_window,
            layer_types,
            rope_local_theta: rope.local_theta,
            query_pre_attn_scalar,
            bos_token_id: fields.opt_u32("bos_token_id")?,
            eos_token_ids: fields.u32_list("eos_token_id")?,
            pad_token_id: fields.opt_u32("pad_token_id")?,
        };
        config.validate().map_err(|m| LlmError::bad_file(path, m))?;
        Ok(config)
    }

    /// The attention window of `layer`, if it is a sliding-window layer.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        match self.layer_type(layer) {
            LayerType::SlidingAttention => self.sliding_window,
            LayerType::FullAttention => None,
        }
    }

    /// Full or sliding-window attention in `layer`.
    pub fn layer_type(&self, layer: usize) -> LayerType {
        match &self.layer_types {
            Some(types) => types
                .get(layer)
                .copied()
                .unwrap_or(LayerType::FullAttention),
            None if self.sliding_window.is_some() => LayerType::SlidingAttention,
            None => LayerType::FullAttention,
        }
    }

    /// Whether `layer` uses the local rope base (a Gemma-3 sliding-window layer).
    pub fn layer_uses_local_rope(&self, layer: usize) -> bool {
        self.rope_local_theta.is_some() && self.layer_type(layer) == LayerType::SlidingAttention
    }

    /// The factor on `q·kᵀ`: `query_pre_attn_scalar^-1/2`, or `head_dim^-1/2`.
    pub fn attention_scale(&self) -> f64 {
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()
    }

    /// Every layer's type, spelled out (for writing configs and GGUF metadata).
    pub fn resolved_layer_types(&self) -> Vec<LayerType> {
        (0..self.num_hidden_layers)
            .map(|i| self.layer_type(i))
            .collect()
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
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err(format!(
                    "`layer_types` has {} entries for {} layers (`num_hidden_layers`)",
                    types.len(),
                    self.num_hidden_layers
                ));
            }
        }
        if self.sliding_window == Some(0) {
            return Err("`sliding_window` must be positive".into());
        }
        self.check_rope()?;
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

    /// Rope parameters that give finite, positive frequencies.
    fn check_rope(&self) -> Result<(), String> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if let Some(theta) = self.rope_local_theta {
            if !positive(theta) {
                return Err(format!(
                    "`rope_local_base_freq` must be a positive number, got {theta}"
                ));
            }
        }
        if let Some(s) = self.query_pre_attn_scalar {
            if !positive(s) {
                return Err(format!(
                    "`query_pre_attn_scalar` must be a positive number, got {s}"
                ));
            }
        }
        let factor = match &self.rope_scaling {
            None => return Ok(()),
            Some(RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor, .. }) => *factor,
            Some(RopeScaling::Llama3(s)) => {
                if !(positive(s.low_freq_factor)
                    && positive(s.high_freq_factor)
                    && s.high_freq_factor > s.low_freq_factor
                    && s.original_max_position_embeddings > 0)
                {
                    return Err("`rope_scaling`: llama3 needs 0 < low_freq_factor < high_freq_factor and a positive original_max_position_embeddings".into());
                }
                s.factor
            }
        };
        if !positive(factor) {
            return Err(format!(
                "`rope_scaling.factor` must be a positive number, got {factor}"
            ));
        }
        if let Some(RopeScaling::Dynamic {
            original_max_position_embeddings: 0,
            ..
        }) = &self.rope_scaling
        {
            return Err("`rope_scaling.original_max_position_embeddings` must be positive".into());
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
            Architecture::Qwen2 | Architecture::Qwen3 => self.qwen_hf_fields(map),
            Architecture::Gemma3 => self.gemma3_hf_fields(map),
        }
        obj
    }

    /// Qwen's window fields: `use_sliding_window`, and the full layers first
    /// (`max_window_layers`), as transformers derives `layer_types` from them.
    fn qwen_hf_fields(&self, map: &mut serde_json::Map<String, Value>) {
        let types = self.resolved_layer_types();
        let windowed =
            self.sliding_window.is_some() && types.contains(&LayerType::SlidingAttention);
        let full_first = types
            .iter()
            .take_while(|t| **t == LayerType::FullAttention)
            .count();
        map.insert("use_sliding_window".into(), windowed.into());
        map.insert(
            "sliding_window".into(),
            self.sliding_window.filter(|_| windowed).into(),
        );
        map.insert("max_window_layers".into(), full_first.into());
        map.insert("layer_types".into(), layer_types_json(&types));
        map.insert("attention_dropout".into(), 0.0.into());
        if self.architecture == Architecture::Qwen3 {
            map.insert("attention_bias".into(), self.attention_bias.into());
        }
    }

    /// Gemma-3's own fields (hub form: `rope_local_base_freq`, `sliding_window_pattern` when
    /// the layers follow one, and `layer_types` for transformers 5).
    fn gemma3_hf_fields(&self, map: &mut serde_json::Map<String, Value>) {
        let types = self.resolved_layer_types();
        map.remove("hidden_act");
        map.insert("hidden_activation".into(), "gelu_pytorch_tanh".into());
        // transformers 5 validates it as an integer.
        let scalar = self.query_pre_attn_scalar.unwrap_or(self.head_dim as f64);
        let scalar: Value = if scalar.fract() == 0.0 && scalar.abs() < 1e15 {
            (scalar as i64).into()
        } else {
            scalar.into()
        };
        map.insert("query_pre_attn_scalar".into(), scalar);
        map.insert("sliding_window".into(), self.sliding_window.into());
        if let Some(pattern) = sliding_window_pattern(&types) {
            map.insert("sliding_window_pattern".into(), pattern.into());
        }
        map.insert("layer_types".into(), layer_types_json(&types));
        map.insert(
            "rope_local_base_freq".into(),
            self.rope_local_theta.unwrap_or(self.rope_theta).into(),
        );
        map.insert("attention_bias".into(), self.attention_bias.into());
        map.insert("attention_dropout".into(), 0.0.into());
        map.insert("final_logit_softcapping".into(), Value::Null);
        map.insert("attn_logit_softcapping".into(), Value::Null);
    }
}

fn layer_types_json(types: &[LayerType]) -> Value {
    types.iter().map(|t| t.hf_name()).collect::<Vec<_>>().into()
}

/// The `p` for which layer `i` is full exactly when `(i + 1) % p == 0`, if there is one.
fn sliding_window_pattern(types: &[LayerType]) -> Option<usize> {
    let first_full = types.iter().position(|t| *t == LayerType::FullAttention)?;
    let p = first_full + 1;
    let matches = types
        .iter()
        .enumerate()
        .all(|(i, t)| (*t == LayerType::FullAttention) == (i + 1).is_multiple_of(p));
    matches.then_some(p)
}

impl RopeScaling {
    /// The `rope_scaling` object of an HF `config.json`.
    pub fn to_hf_json(&self) -> Value {
        match self {
            RopeScaling::Linear { factor } => serde_json::json!({
                "rope_type": "linear",
                "factor": factor,
            }),
            RopeScaling::Llama3(s) => serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            }),
            RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings,
            } => serde_json::json!({
                "rope_type": "dynamic",
                "factor": factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        }
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
        Architecture::Qwen3 => 40960,
        Architecture::Gemma3 => 131072,
    }
}

/// transformers' defaults when a config has no `head_dim`.
fn default_head_dim(arch: Architecture, hidden: usize, heads: usize) -> usize {
    match arch {
        Architecture::Qwen3 => 128,
        Architecture::Gemma3 => 256,
        _ => hidden / heads,
    }
}

/// Fields that change the math of a family in ways pipe does not implement are refused by
/// name instead of being ignored.
fn check_family_fields(fields: &JsonFields<'_>, arch: Architecture) -> LlmResult<()> {
    let (act_field, expected): (&str, &[&str]) = match arch {
        Architecture::Gemma3 => ("hidden_activation", &["gelu_pytorch_tanh"]),
        _ => ("hidden_act", &["silu", "swish"]),
    };
    if let Some(act) = fields.opt_str(act_field) {
        if !expected.contains(&act) {
            return Err(LlmError::bad_file(
                fields.path,
                format!(
                    "`{act_field}` is `{act}`; pipe implements {} for {}",
                    expected[0],
                    arch.model_type()
                ),
            ));
        }
    }
    if arch == Architecture::Gemma3 {
        for field in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if fields.present(field).is_some() {
                return Err(LlmError::bad_file(
                    fields.path,
                    format!("`{field}` is set; pipe implements Gemma-3 without logit soft-capping (null)"),
                ));
            }
        }
        if fields.opt_bool("use_bidirectional_attention")? == Some(true) {
            return Err(LlmError::bad_file(
                fields.path,
                "`use_bidirectional_attention` is true; pipe implements causal decoders only",
            ));
        }
    }
    Ok(())
}

/// The rope of a config, from either form.
struct RopeParams {
    theta: f64,
    scaling: Option<RopeScaling>,
    local_theta: Option<f64>,
}

fn default_rope_theta(arch: Architecture) -> f64 {
    match arch {
        Architecture::Gemma3 => 1_000_000.0,
        _ => 10_000.0,
    }
}

/// Hub form: `rope_theta`, `rope_scaling` and Gemma's `rope_local_base_freq`. transformers 5
/// form: `rope_parameters`, flat or keyed by layer type (`full_attention`,
/// `sliding_attention`).
fn rope_of(fields: &JsonFields<'_>, arch: Architecture, max_pos: usize) -> LlmResult<RopeParams> {
    let default_local = (arch == Architecture::Gemma3).then_some(10_000.0);
    let Some(value) = fields.present("rope_parameters") else {
        let local_theta = match default_local {
            Some(d) => Some(fields.opt_f64("rope_local_base_freq")?.unwrap_or(d)),
            None => None,
        };
        let scaling = match fields.present("rope_scaling") {
            None => None,
            Some(v) => rope_scaling_from(fields, v, "rope_scaling", max_pos)?,
        };
        return Ok(RopeParams {
            theta: fields
                .opt_f64("rope_theta")?
                .unwrap_or(default_rope_theta(arch)),
            scaling,
            local_theta,
        });
    };
    let obj = value
        .as_object()
        .ok_or_else(|| fields.wrong_type("rope_parameters", "an object"))?;
    let keyed_by_layer = obj.values().any(Value::is_object);
    if !keyed_by_layer {
        let inner = JsonFields {
            path: fields.path,
            obj,
        };
        return Ok(RopeParams {
            theta: inner
                .opt_f64("rope_theta")?
                .or(fields.opt_f64("rope_theta")?)
                .unwrap_or(default_rope_theta(arch)),
            scaling: rope_scaling_from(fields, value, "rope_parameters", max_pos)?,
            local_theta: default_local,
        });
    }
    if let Some(key) = obj.keys().find(|k| LayerType::from_hf(k).is_none()) {
        return Err(LlmError::bad_file(
            fields.path,
            format!("`rope_parameters.{key}`: layer type `{key}` is not one pipe knows (full_attention, sliding_attention)"),
        ));
    }
    let theta_of = |key: &str, default: f64| -> LlmResult<f64> {
        match obj.get(key).and_then(Value::as_object) {
            Some(o) => Ok(JsonFields {
                path: fields.path,
                obj: o,
            }
            .opt_f64("rope_theta")?
            .unwrap_or(default)),
            None => Ok(default),
        }
    };
    let theta = theta_of("full_attention", default_rope_theta(arch))?;
    let scaling = match obj.get("full_attention") {
        Some(v) => rope_scaling_from(fields, v, "rope_parameters.full_attention", max_pos)?,
        None => None,
    };
    let local_theta = match obj.get("sliding_attention") {
        Some(v) => {
            if rope_scaling_from(fields, v, "rope_parameters.sliding_attention", max_pos)?.is_some()
            {
                return Err(LlmError::bad_file(
                    fields.path,
                    "`rope_parameters.sliding_attention`: scaled rope on sliding-window layers is not supported",
                ));
            }
            Some(theta_of("sliding_attention", 10_000.0)?)
        }
        None => default_local,
    };
    Ok(RopeParams {
        theta,
        scaling,
        local_theta,
    })
}

/// The scaling an HF rope object describes: plain rope (`null`, `default`) is `None`;
/// `linear`, `llama3` and `dynamic` are implemented; anything else is refused instead of
/// being silently ignored (it would change every logit). `field` names the object in errors.
fn rope_scaling_from(
    fields: &JsonFields<'_>,
    value: &Value,
    field: &str,
    max_pos: usize,
) -> LlmResult<Option<RopeScaling>> {
    if value.is_null() {
        return Ok(None);
    }
    let obj = value
        .as_object()
        .ok_or_else(|| fields.wrong_type(field, "an object or null"))?;
    let inner = JsonFields {
        path: fields.path,
        obj,
    };
    let kind = inner
        .opt_str("rope_type")
        .or_else(|| inner.opt_str("type"))
        .unwrap_or("default");
    let need_f64 = |name: &str| -> LlmResult<f64> {
        inner
            .opt_f64(name)
            .map_err(|_| fields.wrong_type(&format!("{field}.{name}"), "a number"))?
            .ok_or_else(|| LlmError::MissingField {
                path: fields.path.to_path_buf(),
                field: format!("{field}.{name}"),
            })
    };
    let original = |required: bool| -> LlmResult<Option<usize>> {
        let name = "original_max_position_embeddings";
        match inner.opt_usize(name) {
            Ok(Some(n)) => Ok(Some(n)),
            Ok(None) if !required => Ok(None),
            Ok(None) => Err(LlmError::MissingField {
                path: fields.path.to_path_buf(),
                field: format!("{field}.{name}"),
            }),
            Err(_) => Err(fields.wrong_type(&format!("{field}.{name}"), "a positive integer")),
        }
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: need_f64("factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3(Llama3Scaling {
            factor: need_f64("factor")?,
            low_freq_factor: need_f64("low_freq_factor")?,
            high_freq_factor: need_f64("high_freq_factor")?,
            original_max_position_embeddings: original(true)?.unwrap_or(max_pos),
        }))),
        "dynamic" => Ok(Some(RopeScaling::Dynamic {
            factor: need_f64("factor")?,
            original_max_position_embeddings: original(false)?.unwrap_or(max_pos),
        })),
        other => Err(LlmError::bad_file(
            fields.path,
            format!("{field} type `{other}` is not supported (pipe implements default, linear, llama3 and dynamic)"),
        )),
    }
}

/// The window of sliding-window layers and which layers use it, from `layer_types` when the
/// config has it, else from each family's own fields (Gemma's `sliding_window_pattern`,
/// Qwen's `use_sliding_window` + `max_window_layers`, Mistral: every layer). Uniform layers
/// come back as `None` types.
fn attention_pattern_of(
    fields: &JsonFields<'_>,
    arch: Architecture,
    layers: usize,
) -> LlmResult<(Option<usize>, Option<Vec<LayerType>>)> {
    let window = fields.opt_usize("sliding_window")?;
    let window = match arch {
        Architecture::Llama => None,
        Architecture::Mistral => return Ok((window, None)),
        Architecture::Qwen2 | Architecture::Qwen3 => {
            let used = fields.opt_bool("use_sliding_window")?.unwrap_or(false);
            window.filter(|_| used)
        }
        Architecture::Gemma3 => Some(window.unwrap_or(4096)),
    };
    let listed = match fields.present("layer_types") {
        Some(value) => Some(layer_types_from(fields, value, layers)?),
        None => None,
    };
    let Some(window) = window else {
        return Ok((None, None));
    };
    if layers > MAX_LAYERS {
        return Err(LlmError::bad_file(
            fields.path,
            format!("`num_hidden_layers` is {layers}; pipe reads at most {MAX_LAYERS} layers"),
        ));
    }
    let types = match listed {
        Some(types) => types,
        None => match arch {
            Architecture::Gemma3 => {
                let pattern = match fields.opt_usize("sliding_window_pattern")? {
                    Some(p) => p,
                    None => fields.opt_usize("_sliding_window_pattern")?.unwrap_or(6),
                };
                if pattern == 0 {
                    return Err(LlmError::bad_file(
                        fields.path,
                        "`sliding_window_pattern` must be positive",
                    ));
                }
                (0..layers)
                    .map(|i| match (i + 1) % pattern {
                        0 => LayerType::FullAttention,
                        _ => LayerType::SlidingAttention,
                    })
                    .collect()
            }
            _ => {
                let full = fields.opt_usize("max_window_layers")?.unwrap_or(layers);
                (0..layers)
                    .map(|i| match i >= full {
                        true => LayerType::SlidingAttention,
                        false => LayerType::FullAttention,
                    })
                    .collect()
            }
        },
    };
    Ok(canonical_pattern(Some(window), types))
}

/// More layers than any model has: a per-layer pattern is only derived below this, so a
/// crafted `num_hidden_layers` cannot size an allocation.
pub(crate) const MAX_LAYERS: usize = 1 << 16;

/// Uniform layers need no list: all full attention is no window, all sliding is the window
/// on every layer.
fn canonical_pattern(
    window: Option<usize>,
    types: Vec<LayerType>,
) -> (Option<usize>, Option<Vec<LayerType>>) {
    let Some(window) = window else {
        return (None, None);
    };
    if types.iter().all(|t| *t == LayerType::FullAttention) {
        (None, None)
    } else if types.iter().all(|t| *t == LayerType::SlidingAttention) {
        (Some(window), None)
    } else {
        (Some(window), Some(types))
    }
}

/// `layer_types`: one known entry per layer, each error naming the entry.
fn layer_types_from(
    fields: &JsonFields<'_>,
    value: &Value,
    layers: usize,
) -> LlmResult<Vec<LayerType>> {
    let items = value
        .as_array()
        .ok_or_else(|| fields.wrong_type("layer_types", "a list of layer types"))?;
    if items.len() != layers {
        return Err(LlmError::bad_file(
            fields.path,
            format!(
                "`layer_types` has {} entries for {layers} layers (`num_hidden_layers`)",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str().and_then(LayerType::from_hf).ok_or_else(|| {
                LlmError::bad_file(
                    fields.path,
                    format!("`layer_types[{i}]` is {item}, a layer type pipe does not know (full_attention, sliding_attention)"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: Value) -> LlmResult<ModelConfig> {
        ModelConfig::from_hf_json(&json, Path::new("config.json"))
    }

    fn base(model_type: &str) -> Value {
        serde_json::json!({
            "model_type": model_type, "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16,
        })
    }

    fn with(mut json: Value, extra: Value) -> Value {
        json.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json
    }

    #[test]
    fn rope_scaling_kinds_in_both_forms() {
        let linear_hub = parse(with(
            base("llama"),
            serde_json::json!({"rope_theta": 1e5, "rope_scaling": {"type": "linear", "factor": 4.0}}),
        ))
        .unwrap();
        let linear_t5 = parse(with(
            base("llama"),
            serde_json::json!({"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e5}}),
        ))
        .unwrap();
        assert_eq!(linear_hub, linear_t5);
        assert_eq!(
            linear_hub.rope_scaling,
            Some(RopeScaling::Linear { factor: 4.0 })
        );
        let dynamic = parse(with(
            base("llama"),
            serde_json::json!({"max_position_embeddings": 2048,
                "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
        ))
        .unwrap();
        assert_eq!(
            dynamic.rope_scaling,
            Some(RopeScaling::Dynamic {
                factor: 2.0,
                original_max_position_embeddings: 2048
            })
        );
        for config in [&linear_hub, &dynamic] {
            let back = parse(config.to_hf_json("float32")).unwrap();
            assert_eq!(&back, config);
        }
    }

    #[test]
    fn unknown_rope_types_and_layer_types_name_the_field() {
        let err = parse(with(
            base("llama"),
            serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("rope_scaling type `yarn` is not supported"),
            "{err}"
        );
        let err = parse(with(
            base("llama"),
            serde_json::json!({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("rope_parameters type `longrope`"), "{err}");
        let err = parse(with(
            base("llama"),
            serde_json::json!({"rope_scaling": {"rope_type": "linear"}}),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("rope_scaling.factor"), "{err}");
        let err = parse(with(
            base("gemma3_text"),
            serde_json::json!({"layer_types": ["sliding_attention", "chunked_attention",
                "full_attention", "full_attention", "full_attention", "full_attention"]}),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`layer_types[1]`") && err.contains("chunked_attention"),
            "{err}"
        );
        let err = parse(with(
            base("gemma3_text"),
            serde_json::json!({"layer_types": ["full_attention"]}),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`layer_types` has 1 entries for 6 layers"),
            "{err}"
        );
        let err = parse(with(
            base("gemma3_text"),
            serde_json::json!({"rope_parameters": {"full_attention": {"rope_theta": 1e6},
                "chunked_attention": {"rope_theta": 1e4}}}),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("rope_parameters.chunked_attention"), "{err}");
    }

    #[test]
    fn gemma3_fields_that_change_the_math_are_refused() {
        for (field, value) in [
            ("final_logit_softcapping", serde_json::json!(30.0)),
            ("attn_logit_softcapping", serde_json::json!(50.0)),
            ("use_bidirectional_attention", serde_json::json!(true)),
            ("hidden_activation", serde_json::json!("relu")),
        ] {
            let err = parse(with(
                base("gemma3_text"),
                serde_json::json!({ field: value }),
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        let err = parse(with(
            base("qwen3"),
            serde_json::json!({"hidden_act": "gelu"}),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("`hidden_act` is `gelu`"), "{err}");
    }

    #[test]
    fn gemma3_pattern_and_defaults_round_trip() {
        let hub = parse(with(
            base("gemma3_text"),
            serde_json::json!({"sliding_window": 8, "sliding_window_pattern": 3,
                "rope_theta": 1e6, "rope_local_base_freq": 1e4, "query_pre_attn_scalar": 32}),
        ))
        .unwrap();
        assert!(hub.tie_word_embeddings);
        assert_eq!(
            (0..6).map(|i| hub.layer_window(i)).collect::<Vec<_>>(),
            [Some(8), Some(8), None, Some(8), Some(8), None]
        );
        assert!(hub.layer_uses_local_rope(0) && !hub.layer_uses_local_rope(2));
        assert!((hub.attention_scale() - 1.0 / 32f64.sqrt()).abs() < 1e-15);
        assert_eq!(parse(hub.to_hf_json("float32")).unwrap(), hub);
        let qwen = parse(with(
            base("qwen3"),
            serde_json::json!({"use_sliding_window": true, "sliding_window": 16,
                "max_window_layers": 4}),
        ))
        .unwrap();
        assert_eq!(qwen.layer_window(3), None);
        assert_eq!(qwen.layer_window(4), Some(16));
        assert_eq!(parse(qwen.to_hf_json("float32")).unwrap(), qwen);
    }
}
