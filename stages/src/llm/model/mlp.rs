//! The SwiGLU feed-forward block of a Llama-family layer: `down(silu(gate(x)) * up(x))`.

use candle_core::{Result, Tensor};

use crate::llm::model::lora::Mode;
use crate::llm::model::ops::swiglu;
use crate::llm::model::projection::Projection;

#[derive(Debug, Clone)]
pub struct Mlp {
    pub(crate) gate_proj: Projection,
    pub(crate) up_proj: Projection,
    pub(crate) down_proj: Projection,
}

impl Mlp {
    pub fn new([gate_proj, up_proj, down_proj]: [Projection; 3]) -> Self {
        Self {
            gate_proj,
            up_proj,
            down_proj,
        }
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let hidden = swiglu(
            &self.gate_proj.forward(x, mode)?,
            &self.up_proj.forward(x, mode)?,
        )?;
        self.down_proj.forward(&hidden, mode)
    }
}
