//! What sets one decoder family apart from another, in one small description: the norm form,
//! which norms a layer has and under which names, q/k norm, the embedding scale and the MLP
//! activation. The layers read this description instead of branching on the architecture.

use crate::llm::model::config::Architecture;

/// How an RMSNorm weight is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormForm {
    /// `x̂ · w` (Llama, Qwen, Mistral).
    Weight,
    /// `x̂ · (1 + w)` (Gemma): the stored weight is an offset from one.
    OnePlusWeight,
}

/// The activation of the gated MLP `down(act(gate(x)) · up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU).
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, GeGLU).
    GeluTanh,
}

/// The norms a layer can hold, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NormSlot {
    /// Before attention.
    Input,
    /// On the attention output, before the residual add (Gemma).
    PostAttention,
    /// Before the MLP (Llama's `post_attention_layernorm`).
    PreFeedforward,
    /// On the MLP output, before the residual add (Gemma).
    PostFeedforward,
    /// Per head on the queries, before rope (Qwen3, Gemma-3).
    Query,
    /// Per head on the keys, before rope (Qwen3, Gemma-3).
    Key,
}

impl NormSlot {
    /// The llama.cpp tensor name of this norm within a block (`blk.N.<name>.weight`); the
    /// same for every architecture.
    pub fn gguf_name(self) -> &'static str {
        match self {
            NormSlot::Input => "attn_norm",
            NormSlot::PostAttention => "post_attention_norm",
            NormSlot::PreFeedforward => "ffn_norm",
            NormSlot::PostFeedforward => "post_ffw_norm",
            NormSlot::Query => "attn_q_norm",
            NormSlot::Key => "attn_k_norm",
        }
    }

    /// Whether the norm runs over one head (`head_dim`) rather than the hidden state.
    pub fn per_head(self) -> bool {
        matches!(self, NormSlot::Query | NormSlot::Key)
    }
}

/// The description of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub norm: NormForm,
    /// The layer's norms with their HF module names (`model.layers.N.<name>.weight`).
    pub layer_norms: &'static [(NormSlot, &'static str)],
    /// Embeddings are multiplied by `sqrt(hidden_size)` (Gemma).
    pub scale_embeddings: bool,
    pub activation: Activation,
}

const LLAMA_NORMS: &[(NormSlot, &str)] = &[
    (NormSlot::Input, "input_layernorm"),
    (NormSlot::PreFeedforward, "post_attention_layernorm"),
];

const QWEN3_NORMS: &[(NormSlot, &str)] = &[
    (NormSlot::Input, "input_layernorm"),
    (NormSlot::PreFeedforward, "post_attention_layernorm"),
    (NormSlot::Query, "self_attn.q_norm"),
    (NormSlot::Key, "self_attn.k_norm"),
];

const GEMMA3_NORMS: &[(NormSlot, &str)] = &[
    (NormSlot::Input, "input_layernorm"),
    (NormSlot::PostAttention, "post_attention_layernorm"),
    (NormSlot::PreFeedforward, "pre_feedforward_layernorm"),
    (NormSlot::PostFeedforward, "post_feedforward_layernorm"),
    (NormSlot::Query, "self_attn.q_norm"),
    (NormSlot::Key, "self_attn.k_norm"),
];

impl Family {
    /// Whether the layer has a norm in `slot`.
    pub fn has(&self, slot: NormSlot) -> bool {
        self.layer_norms.iter().any(|&(s, _)| s == slot)
    }

    /// The slot of the HF module name `name` (`post_attention_layernorm`, ...), if the family
    /// has it.
    pub fn slot_of(&self, name: &str) -> Option<NormSlot> {
        self.layer_norms
            .iter()
            .find(|&&(_, n)| n == name)
            .map(|&(s, _)| s)
    }

    /// The HF module name of the norm in `slot`.
    pub fn hf_name(&self, slot: NormSlot) -> Option<&'static str> {
        self.layer_norms
            .iter()
            .find(|&&(s, _)| s == slot)
            .map(|&(_, n)| n)
    }
}

impl Architecture {
    /// The family description of this architecture.
    pub fn family(self) -> Family {
        match self {
            Architecture::Llama | Architecture::Mistral | Architecture::Qwen2 => Family {
                norm: NormForm::Weight,
                layer_norms: LLAMA_NORMS,
                scale_embeddings: false,
                activation: Activation::Silu,
            },
            Architecture::Qwen3 => Family {
                norm: NormForm::Weight,
                layer_norms: QWEN3_NORMS,
                scale_embeddings: false,
                activation: Activation::Silu,
            },
            Architecture::Gemma3 => Family {
                norm: NormForm::OnePlusWeight,
                layer_norms: GEMMA3_NORMS,
                scale_embeddings: true,
                activation: Activation::GeluTanh,
            },
        }
    }
}
