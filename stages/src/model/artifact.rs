//! What the model stage hands the stages after it: `model.json`, the description of the base
//! model every ML stage loads (through [`crate::base::BaseModel`]), and its reader.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::llm::template::TemplateKwargs;
use crate::llm::{DeviceChoice, ModelConfig, ModelFormat};

/// What the stage writes: [`ModelInfo`] as JSON.
pub const MODEL_FILE: &str = "model.json";

/// Where the chat template came from and its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateInfo {
    /// `model`, a fallback name (`chatml`, ...), or `file:<path as written>`.
    pub source: String,
    pub text: String,
    /// `[model] template_kwargs`: extra variables every render gets (`enable_thinking`, ...).
    /// Absent in model.json written before they existed.
    #[serde(default, skip_serializing_if = "TemplateKwargs::is_empty")]
    pub kwargs: TemplateKwargs,
}

/// `model.json`: everything downstream stages need to load the same base and render the same
/// conversations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The spec as written in pipeline.toml.
    pub spec: String,
    /// For a hub spec, the commit the model was read at: later stages load this snapshot,
    /// not whatever the spec's branch points to by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The file or directory read, absolute (for humans; stages re-resolve `spec`).
    pub path: PathBuf,
    /// The portable name for outputs (PEFT's `base_model_name_or_path`): the hub repository
    /// id, or the path as written, relative to the workspace root.
    pub name: String,
    pub format: ModelFormat,
    pub config: ModelConfig,
    /// Ids the tokenizer can produce (at most the embedding rows, `config.vocab_size`).
    pub tokenizer_vocab_size: usize,
    /// Generation stops at any of these.
    pub eos_token_ids: Vec<u32>,
    /// The id right-padding uses (never a target).
    pub pad_token_id: u32,
    pub chat_template: TemplateInfo,
    pub system_prompt: Option<String>,
    /// Parameters of the base model.
    pub parameters: u64,
    /// The device downstream stages run on: `[model] device` as resolved on this machine.
    #[serde(default)]
    pub device: DeviceChoice,
}

/// Reads `model.json`.
pub fn read_info(path: &Path) -> Result<ModelInfo, InfoError> {
    let bad = |message: String| InfoError {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| bad(format!("not a model description: {e}")))
}

/// `model.json` could not be read; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}; re-run `pipe run --from model`", path.display())]
pub struct InfoError {
    pub path: PathBuf,
    pub message: String,
}
