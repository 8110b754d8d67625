//! The LLM engine shared by the ML stages: a trainable Llama-family model in candle, its
//! weights, tokenizer and chat template, LoRA adapters in PEFT format, and the losses.

pub mod attention;
pub mod base_ref;
pub mod batch;
pub mod config;
pub mod device;
pub mod error;
pub mod export;
pub mod frozen_linear;
pub mod generate;
pub mod gguf;
pub mod gguf_header;
pub mod hub;
pub mod kernels;
pub mod kv_cache;
pub mod layer;
pub mod loader;
pub mod lora;
pub mod lora_config;
pub mod loss;
pub mod merge;
pub mod mlp;
pub mod model;
pub mod ops;
pub mod orpo;
pub mod peft;
pub mod projection;
pub mod rope;
pub mod runtime;
pub mod sampler;
pub mod scalar_op;
pub mod slots;
pub mod softmax;
pub mod spec;
pub mod template;
pub mod testing;
pub mod text_stream;
pub mod tokenizer;
pub mod weights;

#[cfg(test)]
mod bench_tests;
#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod generate_tests;
#[cfg(test)]
mod model_tests;

pub use base_ref::{portable_base_reference, resolve_base_reference, BaseModelRef};
pub use batch::{Example, TargetMask, TokenBatch};
pub use config::{Architecture, ModelConfig, RopeScaling};
pub use device::DeviceChoice;
pub use error::{LlmError, LlmResult};
pub use export::{write_safetensors, ExportDtype, HfExport};
pub use generate::{FinishReason, Generation, GenerationConfig, Generator};
pub use gguf::GgufFile;
pub use hub::{HubAccess, HubCache, HubRemote};
pub use kv_cache::KvCache;
pub use loader::{load_model, load_model_path, LoadedModel, ModelSource};
pub use lora::{LoraConfig, LoraLayer, Mode, TargetModule};
pub use loss::{sft_loss, SftLoss, TargetLogProbs};
pub use merge::{merge_adapters, merge_adapters_into_model};
pub use model::LlamaModel;
pub use orpo::{orpo_loss, OrpoConfig, OrpoMetrics, OrpoNll, OrpoOutput, PreferencePair};
pub use peft::{AdapterConfig, LoraWeights, PeftAdapter};
pub use sampler::{Sampler, SamplingParams};
pub use spec::{ModelFormat, ModelSpec, ResolvedModel};
pub use template::{ChatMessage, ChatTemplate, PromptCompletion};
pub use tokenizer::{SpecialTokens, TextTokenizer};
pub use weights::ModelWeights;
