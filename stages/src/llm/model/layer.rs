//! One pre-norm decoder layer: `h = x + attn(norm(x)); y = h + mlp(norm(h))`.

use candle_core::{Result, Tensor};

use crate::llm::decode::kv_cache::KvCache;
use crate::llm::model::attention::{Attention, AttentionContext};
use crate::llm::model::lora::TargetModule;
use crate::llm::model::mlp::Mlp;
use crate::llm::model::ops::rms_norm;
use crate::llm::model::projection::Projection;

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub(crate) input_layernorm: Tensor,
    pub(crate) attention: Attention,
    pub(crate) post_attention_layernorm: Tensor,
    pub(crate) mlp: Mlp,
    rms_norm_eps: f64,
}

impl DecoderLayer {
    pub fn new(
        input_layernorm: Tensor,
        attention: Attention,
        post_attention_layernorm: Tensor,
        mlp: Mlp,
        rms_norm_eps: f64,
    ) -> Self {
        Self {
            input_layernorm,
            attention,
            post_attention_layernorm,
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
        let normed = rms_norm(x, &self.input_layernorm, self.rms_norm_eps)?;
        let h = (x + self.attention.forward(&normed, cx, cache)?)?;
        let normed = rms_norm(&h, &self.post_attention_layernorm, self.rms_norm_eps)?;
        h + self.mlp.forward(&normed, cx.mode)?
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
