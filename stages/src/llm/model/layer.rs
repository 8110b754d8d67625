//! One pre-norm decoder layer: `h = x + post(attn(norm(x))); y = h + post(mlp(norm(h)))`,
//! where the post-norms exist only in families that have them (Gemma's sandwich norms).

use candle_core::{Result, Tensor};

use crate::llm::decode::kv_cache::KvCache;
use crate::llm::model::attention::{Attention, AttentionContext};
use crate::llm::model::family::NormSlot;
use crate::llm::model::lora::TargetModule;
use crate::llm::model::mlp::Mlp;
use crate::llm::model::ops::rms_norm;
use crate::llm::model::projection::Projection;

/// The hidden-state norms of a layer, weights as they are applied (Gemma's `1 + w` already
/// added, see `LlamaModel::from_tensors`).
#[derive(Debug, Clone)]
pub struct LayerNorms {
    pub input: Tensor,
    pub post_attention: Option<Tensor>,
    pub pre_feedforward: Tensor,
    pub post_feedforward: Option<Tensor>,
}

impl LayerNorms {
    /// The weight in `slot`, if the layer has one (q/k norms live in the attention).
    pub fn get(&self, slot: NormSlot) -> Option<&Tensor> {
        match slot {
            NormSlot::Input => Some(&self.input),
            NormSlot::PostAttention => self.post_attention.as_ref(),
            NormSlot::PreFeedforward => Some(&self.pre_feedforward),
            NormSlot::PostFeedforward => self.post_feedforward.as_ref(),
            NormSlot::Query | NormSlot::Key => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub(crate) norms: LayerNorms,
    pub(crate) attention: Attention,
    pub(crate) mlp: Mlp,
    rms_norm_eps: f64,
}

impl DecoderLayer {
    pub fn new(norms: LayerNorms, attention: Attention, mlp: Mlp, rms_norm_eps: f64) -> Self {
        Self {
            norms,
            attention,
            mlp,
            rms_norm_eps,
        }
    }

    pub fn forward(
        &self,
        x: &Tensor,
        cx: &AttentionContext<'_>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let eps = self.rms_norm_eps;
        let normed = rms_norm(x, &self.norms.input, eps)?;
        let mut attended = self.attention.forward(&normed, cx, cache)?;
        if let Some(w) = &self.norms.post_attention {
            attended = rms_norm(&attended, w, eps)?;
        }
        let h = (x + attended)?;
        let normed = rms_norm(&h, &self.norms.pre_feedforward, eps)?;
        let mut fed = self.mlp.forward(&normed, cx.mode)?;
        if let Some(w) = &self.norms.post_feedforward {
            fed = rms_norm(&fed, w, eps)?;
        }
        h + fed
    }

    /// The applied weight of the norm in `slot` (q/k norms included).
    pub fn norm(&self, slot: NormSlot) -> Option<&Tensor> {
        match slot {
            NormSlot::Query => self.attention.q_norm.as_ref(),
            NormSlot::Key => self.attention.k_norm.as_ref(),
            _ => self.norms.get(slot),
        }
    }

    pub fn projection(&self, module: TargetModule) -> &Projection {
        match module {
            TargetModule::QProj => &self.attention.q_proj,
            TargetModule::KProj => &self.attention.k_proj,
            TargetModule::VProj => &self.attention.v_proj,
            TargetModule::OProj => &self.attention.o_proj,
            TargetModule::GateProj => &self.mlp.gate_proj,
            TargetModule::UpProj => &self.mlp.up_proj,
            TargetModule::DownProj => &self.mlp.down_proj,
        }
    }

    pub fn projection_mut(&mut self, module: TargetModule) -> &mut Projection {
        match module {
            TargetModule::QProj => &mut self.attention.q_proj,
            TargetModule::KProj => &mut self.attention.k_proj,
            TargetModule::VProj => &mut self.attention.v_proj,
            TargetModule::OProj => &mut self.attention.o_proj,
            TargetModule::GateProj => &mut self.mlp.gate_proj,
            TargetModule::UpProj => &mut self.mlp.up_proj,
            TargetModule::DownProj => &mut self.mlp.down_proj,
        }
    }
}
