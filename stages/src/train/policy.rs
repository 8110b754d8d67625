//! The model a preference trainer (orpo, dpo) starts from: the base with the sft adapter
//! merged and a new LoRA to train (`init = "new"`), or the base with the sft adapter attached
//! as the one to train further (`init = "continue_sft"`). Either way, before the first step it
//! computes exactly base + sft, the stage's input model.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::lora_settings::LoraSettings;
use crate::llm::{merge_adapters_into_model, LlamaModel, LlmError, PeftAdapter};
use crate::sft::artifact::ADAPTER_DIR as SFT_ADAPTER_DIR;

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
    #[error("cannot read the sft adapter in {}: {source}; re-run `pipe run --from sft`", path.display())]
    SftAdapter {
        path: PathBuf,
        #[source]
        source: Box<LlmError>,
    },
    #[error("{context}: {source}")]
    Llm {
        context: &'static str,
        #[source]
        source: Box<LlmError>,
    },
}

/// The sft adapter inside sft's artifact directory.
pub fn sft_adapter_dir(sft_artifact: &Path) -> PathBuf {
    sft_artifact.join(SFT_ADAPTER_DIR)
}

/// Turns `model` (the base) into the policy `init` asks for, reading the sft adapter of
/// `sft_dir` (an adapter directory).
pub fn start_policy(
    model: &mut LlamaModel,
    sft_dir: &Path,
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
    let sft = PeftAdapter::load(sft_dir, device).map_err(|source| PolicyError::SftAdapter {
        path: sft_dir.to_path_buf(),
        source: Box::new(source),
    })?;
    match init {
        Init::New => {
            merge_adapters_into_model(model, &[sft])
                .map_err(llm("cannot merge the sft adapter into the base model"))?;
            model
                .attach_lora(&lora.engine_config(seed))
                .map_err(llm("cannot attach LoRA"))
        }
        Init::ContinueSft => sft
            .attach_to(model)
            .map_err(llm("cannot attach the sft adapter")),
    }
}
