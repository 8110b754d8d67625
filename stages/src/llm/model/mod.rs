//! The trainable decoder: its configuration, layers, LoRA, the differentiable building blocks
//! and the fused CPU kernels under them.

pub mod attention;
pub mod config;
pub mod decoder;
pub mod family;
pub mod frozen_linear;
pub mod kernels;
pub mod layer;
pub mod lora;
pub mod lora_config;
pub mod mlp;
pub mod ops;
pub mod projection;
pub mod rope;
pub mod scalar_op;
pub mod slots;
pub mod softmax;

#[cfg(test)]
mod bench_tests;
#[cfg(test)]
mod decoder_tests;

pub use decoder::LlamaModel;
