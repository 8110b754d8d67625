//! The gated feed-forward block of a decoder layer: `down(act(gate(x)) * up(x))`, SwiGLU
//! (SiLU) or GeGLU (GELU-tanh, Gemma) by the family's activation.

use candle_core::{Result, Tensor};

use crate::llm::model::family::Activation;
use crate::llm::model::lora::Mode;
use crate::llm::model::ops::gated_activation;
use crate::llm::model::projection::Projection;

#[derive(Debug, Clone)]
pub struct Mlp {
    pub(crate) gate_proj: Projection,
    pub(crate) up_proj: Projection,
    pub(crate) down_proj: Projection,
    activation: Activation,
}

impl Mlp {
    pub fn new([gate_proj, up_proj, down_proj]: [Projection; 3], activation: Activation) -> Self {
        Self {
            gate_proj,
            up_proj,
            down_proj,
            activation,
        }
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let hidden = gated_activation(
            &self.gate_proj.forward(x, mode)?,
            &self.up_proj.forward(x, mode)?,
            self.activation,
        )?;
        self.down_proj.forward(&hidden, mode)
    }
}
