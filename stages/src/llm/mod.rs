//! The LLM engine shared by the ML stages: a trainable Llama-family model in candle, its
//! weights, tokenizer and chat template, LoRA adapters in PEFT format, and the losses.

pub mod config;
pub mod error;
pub mod export;
pub mod gguf;
pub mod hub;
pub mod loader;
pub mod spec;
pub mod template;
pub mod testing;
pub mod tokenizer;
pub mod weights;

pub use config::{Architecture, ModelConfig, RopeScaling};
pub use error::{LlmError, LlmResult};
pub use export::{write_safetensors, ExportDtype, HfExport};
pub use gguf::GgufFile;
pub use hub::{HubAccess, HubCache, HubRemote};
pub use loader::{load_model, load_model_path, LoadedModel, ModelSource};
pub use spec::{ModelFormat, ModelSpec, ResolvedModel};
pub use template::{ChatMessage, ChatTemplate, PromptCompletion};
pub use tokenizer::{SpecialTokens, TextTokenizer};
pub use weights::ModelWeights;
