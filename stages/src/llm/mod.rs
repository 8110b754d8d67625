//! The LLM engine shared by the ML stages: a trainable Llama-family model in candle, its
//! weights, tokenizer and chat template, LoRA adapters in PEFT format, and the losses.

pub mod config;
pub mod error;

pub use config::{Architecture, ModelConfig, RopeScaling};
pub use error::{LlmError, LlmResult};
