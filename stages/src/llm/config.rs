//! The architecture description every part of the engine agrees on, whether it came from an
//! HF `config.json` or from GGUF metadata.

use serde::{Deserialize, Serialize};

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
