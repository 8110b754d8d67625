//! One projection of a decoder layer: the frozen base linear plus, when attached, its LoRA.

use candle_core::{DType, Result, Tensor};

use crate::llm::model::frozen_linear::FrozenLinear;
use crate::llm::model::kernels::{self, lora_linear::LoraLinear, skinny_linear::LowRank};
use crate::llm::model::lora::{LoraLayer, Mode};

/// `y = x·Wᵀ (+ b) + lora(x)`.
#[derive(Debug, Clone)]
pub struct Projection {
    base: FrozenLinear,
    lora: Option<LoraLayer>,
}

impl Projection {
    pub fn new(base: FrozenLinear) -> Self {
        Self { base, lora: None }
    }

    pub fn base(&self) -> &FrozenLinear {
        &self.base
    }

    pub fn lora(&self) -> Option<&LoraLayer> {
        self.lora.as_ref()
    }

    /// `(out, in)` of the base weight.
    pub fn shape(&self) -> (usize, usize) {
        (self.base.out_features(), self.base.in_features())
    }

    /// Attaches (or replaces) the LoRA of this projection; the caller checked its shapes.
    pub fn set_lora(&mut self, lora: LoraLayer) {
        self.lora = Some(lora);
        // Factors kept for decoding belong to the LoRA they were copied from.
        self.base.set_low_rank(None);
    }

    pub fn take_lora(&mut self) -> Option<LoraLayer> {
        self.base.set_low_rank(None);
        self.lora.take()
    }

    /// Packs the base weight for decode steps (see `FrozenLinear::pack_for_decode`) and keeps
    /// the attached LoRA's factors beside it, so decoding rounds only the base. Returns the
    /// bytes of the packed copy.
    pub fn pack_for_decode(&mut self) -> Result<usize> {
        self.base.pack_for_decode()?;
        let low_rank = match &self.lora {
            Some(lora) => Some(LowRank::new(
                lora.a().as_tensor(),
                lora.b().as_tensor(),
                lora.scale(),
            )?),
            None => None,
        };
        self.base.set_low_rank(low_rank);
        Ok(self.base.packed_bytes())
    }

    /// The frozen base linear, mutably (packing it for decoding).
    pub fn base_mut(&mut self) -> &mut FrozenLinear {
        &mut self.base
    }

    /// Adds `delta` `[out, in]` to the base weight (a merge), summing in f64 so the merged
    /// weight is rounded once.
    pub fn add_to_weight(&mut self, delta: &Tensor) -> Result<()> {
        let w = self.base.weight();
        let merged =
            (w.to_dtype(DType::F64)? + delta.to_dtype(DType::F64)?)?.to_dtype(w.dtype())?;
        self.base.set_weight(merged)
    }

    /// A decode step of a packed projection with a LoRA: the 8-bit product plus the LoRA's
    /// factors. Otherwise, with a LoRA on the CPU, one fused kernel (see `kernels::lora_linear`); otherwise the
    /// frozen linear plus the LoRA's own forward.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if let Some(lora) = &self.lora {
            if lora.dropout_for(mode).is_none() {
                if let Some(y) = self.base.forward_with_low_rank(x) {
                    return y;
                }
            }
        }
        match &self.lora {
            Some(lora) if kernels::applies(x) && x.dtype() == self.base.weight().dtype() => {
                let fused = LoraLinear {
                    weight: self.base.weight().clone(),
                    bias: self.base.bias().cloned(),
                    scale: lora.scale(),
                    dropout: lora.dropout_for(mode),
                };
                fused.forward(x, lora.a().as_tensor(), lora.b().as_tensor())
            }
            Some(lora) => self.base.forward(x)? + lora.forward(x, mode)?,
            None => self.base.forward(x),
        }
    }
}
