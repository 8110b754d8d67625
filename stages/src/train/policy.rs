//! The model a preference trainer (orpo, dpo) starts from: its input model's stack with every
//! adapter merged and a new LoRA to train (`init = "new"`), or with the top adapter attached
//! as the one to train further (`init = "continue_sft"`). Either way, before the first step it
//! computes exactly the stage's input model.

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::lora_settings::LoraSettings;
use crate::base::{load_adapters, ModelStack};
use crate::llm::{merge_adapters_into_model, LlamaModel, LlmError};

/// Which adapter a preference trainer trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// A new LoRA (`[<stage>.lora]`) on the base with the sft adapter merged in: the
    /// pipeline's final model is base + sft + this stage's adapter.
    #[default]
    New,
    /// Keep training the sft adapter itself: this stage's adapter then replaces the sft one.
    ContinueSft,
}

/// Why the starting model could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the adapters of the input model ({stack}): {source}; re-run the stage that made it")]
    Adapters {
        stack: String,
        #[source]
        source: Box<LlmError>,
    },
    #[error("init = \"continue_sft\" trains the input model's adapter further, but the input model ({0}) has none; set `model` to an sft instance or use init = \"new\"")]
    NothingToContinue(String),
    #[error("{context}: {source}")]
    Llm {
        context: &'static str,
        #[source]
        source: Box<LlmError>,
    },
}

/// Turns `model` (the base of `stack`) into the policy `init` asks for: the stack's adapters
/// merged and a new LoRA attached (`New`), or all but the top one merged and the top one
/// attached to train further (`ContinueSft`).
pub fn start_policy(
    model: &mut LlamaModel,
    stack: &ModelStack,
    init: Init,
    lora: &LoraSettings,
    seed: u64,
    device: &Device,
) -> Result<(), PolicyError> {
    let llm = |context: &'static str| {
        move |source| PolicyError::Llm {
            context,
            source: Box::new(source),
        }
    };
    let mut adapters = load_adapters(stack, device).map_err(|source| PolicyError::Adapters {
        stack: stack.describe("base"),
        source: Box::new(source),
    })?;
    let top = match init {
        Init::New => None,
        Init::ContinueSft => Some(
            adapters
                .pop()
                .ok_or_else(|| PolicyError::NothingToContinue(stack.describe("base")))?,
        ),
    };
    if !adapters.is_empty() {
        merge_adapters_into_model(model, &adapters).map_err(llm(
            "cannot merge the input model's adapters into the base model",
        ))?;
    }
    match top {
        None => model
            .attach_lora(&lora.engine_config(seed))
            .map_err(llm("cannot attach LoRA")),
        Some(top) => top
            .attach_to(model)
            .map_err(llm("cannot attach the input model's adapter")),
    }
}
