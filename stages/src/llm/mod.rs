//! The LLM engine shared by the ML stages: a trainable decoder in candle (`model/`), models and
//! adapters on disk (`io/`), tokenizer and chat template (`text/`), generation (`decode/`) and
//! the training losses (`objectives/`). Stages use the names re-exported here.

pub mod decode;
pub mod device;
pub mod error;
pub mod io;
pub mod model;
pub mod objectives;
pub mod runtime;
#[cfg(any(test, feature = "testkit"))]
pub mod testing;
pub mod text;

#[cfg(test)]
mod arch_fixture_tests;
#[cfg(test)]
mod fixture_tests;

pub use decode::generator::{FinishReason, Generation, GenerationConfig, Generator};
pub use decode::kv_cache::KvCache;
pub use decode::sampler::{Sampler, SamplingParams};
pub use device::DeviceChoice;
pub use error::{LlmError, LlmResult};
pub use io::base_ref::{portable_base_reference, resolve_base_reference, BaseModelRef};
pub use io::export::{write_safetensors, ExportDtype, HfExport};
pub use io::gguf::GgufFile;
pub use io::hub::{HubAccess, HubCache, HubRemote};
pub use io::loader::{load_model, load_model_path, load_model_random, LoadedModel, ModelSource};
pub use io::merge::{merge_adapters, merge_adapters_into_model};
pub use io::peft::{AdapterConfig, LoraWeights, PeftAdapter};
pub use io::spec::{ModelFormat, ModelSpec, ResolvedModel};
pub use io::weights::ModelWeights;
pub use model::config::{Architecture, LayerType, Llama3Scaling, ModelConfig, RopeScaling};
pub use model::lora::{LoraConfig, LoraLayer, Mode, TargetModule};
pub use model::LlamaModel;
pub use objectives::batch::{Example, TargetMask, TokenBatch};
pub use objectives::dpo::{dpo_loss, pair_logps, DpoConfig, DpoLossType, DpoMetrics, DpoOutput};
pub use objectives::loss::{sft_loss, SftLoss, TargetLogProbs};
pub use objectives::orpo::{
    orpo_loss, OrpoConfig, OrpoMetrics, OrpoNll, OrpoOutput, PreferencePair,
};
pub use text::template::{ChatMessage, ChatTemplate, PromptCompletion};
pub use text::tokenizer::{SpecialTokens, TextTokenizer};

// The module paths code outside llm/ still names (`crate::llm::config::Architecture`, ...),
// kept while the stage folders move; new code uses the names above.
pub use decode::generator as generate;
pub use io::{base_ref, export, gguf, hub, loader, peft, spec, weights};
pub use model::{config, kernels, lora, ops};
pub use objectives::{batch, loss};
pub use text::{template, tokenizer};
