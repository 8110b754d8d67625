//! The base model an upstream `model` artifact describes, opened for a downstream stage: the
//! same weights, tokenizer, chat template and default system prompt for every ML stage, and
//! the one rendering of a conversation they share.

use std::path::Path;

use candle_core::Device;

use crate::llm::{
    load_model, ChatMessage, ChatTemplate, LlamaModel, LlmError, ModelSpec, PromptCompletion,
    TextTokenizer,
};
use crate::model::artifact::{read_info, InfoError, ModelInfo, MODEL_FILE};

/// Why the base model could not be opened; names the `[model]` key at fault.
#[derive(Debug, thiserror::Error)]
pub enum BaseModelError {
    #[error(transparent)]
    Info(#[from] InfoError),
    #[error("[model] `path`: {0}")]
    Load(#[source] LlmError),
    #[error("[model] `chat_template`: {0}")]
    Template(#[source] LlmError),
    #[error("[model] `device`: {0}")]
    Device(#[source] LlmError),
}

/// The base model as the `model` stage described it, loaded for a downstream stage.
pub struct BaseModel {
    pub info: ModelInfo,
    pub model: LlamaModel,
    pub tokenizer: TextTokenizer,
    pub template: ChatTemplate,
}

impl BaseModel {
    /// Loads the model of the committed `model` artifact on the device it names
    /// (`[model] device`); returns the device too, for the stage's own tensors.
    pub fn open(model_dir: &Path, workspace: &Path) -> Result<(Self, Device), BaseModelError> {
        let info = read_info(&model_dir.join(MODEL_FILE))?;
        let device = info.device.open().map_err(BaseModelError::Device)?;
        Ok((Self::from_info(info, workspace, &device)?, device))
    }

    /// Loads the model of the committed `model` artifact `model_dir`, resolving its spec
    /// against `workspace` again (the artifact stores no weights).
    pub fn load(
        model_dir: &Path,
        workspace: &Path,
        device: &Device,
    ) -> Result<Self, BaseModelError> {
        Self::from_info(read_info(&model_dir.join(MODEL_FILE))?, workspace, device)
    }

    /// Loads the model `info` describes on `device`.
    fn from_info(
        info: ModelInfo,
        workspace: &Path,
        device: &Device,
    ) -> Result<Self, BaseModelError> {
        let spec = ModelSpec::parse(&info.spec)
            .map_err(BaseModelError::Load)?
            .pinned(info.revision.as_deref());
        let loaded = load_model(&spec, workspace, device).map_err(BaseModelError::Load)?;
        let template = ChatTemplate::new(
            &info.chat_template.source,
            &info.chat_template.text,
            loaded.tokenizer.special(),
        )
        .and_then(|t| t.with_kwargs(info.chat_template.kwargs.clone()))
        .map_err(BaseModelError::Template)?;
        let model = LlamaModel::from_tensors(&loaded.config, loaded.weights.into_map())
            .map_err(BaseModelError::Load)?;
        Ok(Self {
            info,
            model,
            tokenizer: loaded.tokenizer,
            template,
        })
    }

    /// The messages of a single-turn prompt (system: the row's, else the configured default).
    pub fn messages(&self, system: Option<&str>, prompt: &str) -> Vec<ChatMessage> {
        chat_messages(self.info.system_prompt.as_deref(), system, prompt)
    }

    /// The one rendering of a training example that every stage shares: prompt and
    /// completion ids split where a completion-only loss masks.
    pub fn render_example(
        &self,
        system: Option<&str>,
        prompt: &str,
        response: &str,
    ) -> Result<PromptCompletion, LlmError> {
        self.template.render_prompt_completion(
            &self.messages(system, prompt),
            response,
            &self.tokenizer,
        )
    }

    /// The prompt ids generation conditions on (the same as [`BaseModel::render_example`]'s).
    pub fn render_prompt(&self, system: Option<&str>, prompt: &str) -> Result<Vec<u32>, LlmError> {
        let text = self.template.render(&self.messages(system, prompt), true)?;
        self.tokenizer.encode(&text, false)
    }
}

/// The conversation of one single-turn example: the row's system prompt, else the
/// configured default, else none (the template's own default applies).
pub fn chat_messages(
    default_system: Option<&str>,
    row_system: Option<&str>,
    prompt: &str,
) -> Vec<ChatMessage> {
    let system = row_system
        .filter(|s| !s.trim().is_empty())
        .or(default_system);
    ChatMessage::prompt(system, prompt)
}
