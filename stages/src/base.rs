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

    /// The messages of a prompt: the system prompt (the row's, else the configured default),
    /// the earlier turns of a multi-turn row, then the last user turn.
    pub fn messages(
        &self,
        system: Option<&str>,
        history: &[ChatMessage],
        prompt: &str,
    ) -> Vec<ChatMessage> {
        chat_messages(self.info.system_prompt.as_deref(), system, history, prompt)
    }

    /// The one rendering of a training example that every stage shares: prompt and
    /// completion ids split where a completion-only loss masks, with the earlier assistant
    /// turns of a multi-turn row located in the prompt.
    pub fn render_example(
        &self,
        system: Option<&str>,
        history: &[ChatMessage],
        prompt: &str,
        response: &str,
    ) -> Result<PromptCompletion, LlmError> {
        self.template.render_prompt_completion(
            &self.messages(system, history, prompt),
            response,
            &self.tokenizer,
        )
    }

    /// The prompt ids generation conditions on (the same text as
    /// [`BaseModel::render_example`]'s prompt).
    pub fn render_prompt(
        &self,
        system: Option<&str>,
        history: &[ChatMessage],
        prompt: &str,
    ) -> Result<Vec<u32>, LlmError> {
        let text = self
            .template
            .render(&self.messages(system, history, prompt), true)?;
        self.tokenizer.encode(&text, false)
    }
}

/// The conversation of one example: the row's system prompt, else the configured default, else
/// none (the template's own default applies); then the earlier turns and the user's prompt.
pub fn chat_messages(
    default_system: Option<&str>,
    row_system: Option<&str>,
    history: &[ChatMessage],
    prompt: &str,
) -> Vec<ChatMessage> {
    let system = row_system
        .filter(|s| !s.trim().is_empty())
        .or(default_system);
    let mut messages: Vec<ChatMessage> = system.map(ChatMessage::system).into_iter().collect();
    messages.extend(history.iter().cloned());
    messages.push(ChatMessage::user(prompt));
    messages
}

/// The kinds whose instances yield a model a stage can start from or answer with: the base
/// (`model`) and the adapter stages (its input model + its adapter).
pub const MODEL_KINDS: &[&str] = &["model", "sft", "orpo", "dpo"];
/// The kinds that train an adapter on top of their input model.
pub const ADAPTER_KINDS: &[&str] = &["sft", "orpo", "dpo"];

/// One adapter of a [`ModelStack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackAdapter {
    /// The instance that trained it.
    pub instance: String,
    pub kind: String,
    /// Its PEFT directory.
    pub dir: std::path::PathBuf,
}

/// A model as a chain of instances yields it: the `model` artifact and the adapters on top of
/// it, bottom first. An adapter stage that continued its input model's top adapter (orpo or
/// dpo with `init = "continue_sft"`) replaces that adapter instead of adding one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStack {
    /// The `model` artifact at the bottom.
    pub base: std::path::PathBuf,
    pub adapters: Vec<StackAdapter>,
    /// Adapters replaced by one that continued training them (kept for reference).
    pub replaced: Vec<StackAdapter>,
}

/// Why a chain of instances is no model.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("`{instance}` (kind {kind}) yields no model: a model is a `model` instance or an adapter stage (sft, orpo, dpo) on one")]
    NotAModel { instance: String, kind: String },
    #[error("the model chain {0} does not end in a `model` instance")]
    NoBase(String),
    #[error("{}: {message}", path.display())]
    Summary {
        path: std::path::PathBuf,
        message: String,
    },
}

impl ModelStack {
    /// The stack `chain` (an instance, then what it reads as `model`, down to the base) yields.
    pub fn from_chain(chain: &[crate::inputs::Link]) -> Result<Self, StackError> {
        let names = || {
            chain
                .iter()
                .map(|l| l.instance.as_str())
                .collect::<Vec<_>>()
                .join(" -> ")
        };
        let (bottom, above) = chain
            .split_last()
            .ok_or_else(|| StackError::NoBase(names()))?;
        if bottom.kind != "model" {
            return Err(StackError::NoBase(names()));
        }
        let mut stack = ModelStack {
            base: bottom.dir.clone(),
            adapters: Vec::new(),
            replaced: Vec::new(),
        };
        for link in above.iter().rev() {
            if !ADAPTER_KINDS.contains(&link.kind.as_str()) {
                return Err(StackError::NotAModel {
                    instance: link.instance.clone(),
                    kind: link.kind.clone(),
                });
            }
            if continued(link)? {
                stack.replaced.extend(stack.adapters.pop());
            }
            stack.adapters.push(StackAdapter {
                instance: link.instance.clone(),
                kind: link.kind.clone(),
                dir: link.dir.join(crate::sft::artifact::ADAPTER_DIR),
            });
        }
        Ok(stack)
    }

    /// The instances of the stack, bottom first after the base (`model + sft + orpo`).
    pub fn describe(&self, base_name: &str) -> String {
        let mut out = base_name.to_string();
        for a in &self.adapters {
            out.push_str(&format!(" + {} adapter", a.instance));
        }
        out
    }
}

/// Whether the adapter stage of `link` continued its input model's adapter: its summary's
/// `adapter_applies_to` says "base" (orpo and dpo record it; sft always adds an adapter).
fn continued(link: &crate::inputs::Link) -> Result<bool, StackError> {
    use crate::{dpo::artifact as dpo, orpo::artifact as orpo};
    let (summary_file, key, base) = match link.kind.as_str() {
        "orpo" => (
            orpo::SUMMARY_FILE,
            orpo::APPLIES_TO_KEY,
            orpo::APPLIES_TO_BASE,
        ),
        "dpo" => (dpo::SUMMARY_FILE, dpo::APPLIES_TO_KEY, dpo::APPLIES_TO_BASE),
        _ => return Ok(false),
    };
    let path = link.dir.join(summary_file);
    let text = std::fs::read_to_string(&path).map_err(|e| StackError::Summary {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let summary: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| StackError::Summary {
            path: path.clone(),
            message: format!("not JSON: {e}"),
        })?;
    match summary[key].as_str() {
        None => Ok(false),
        Some(v) if v == base => Ok(true),
        Some(v) if v.starts_with("base+") => Ok(false),
        Some(other) => Err(StackError::Summary {
            path,
            message: format!(
                "`{key}` = {other:?}: expected \"base\" or \"base+sft\"; re-run `pipe run --from {}`",
                link.instance
            ),
        }),
    }
}

/// Loads the adapters of `stack` onto `model`: all but the top merged into its weights, the
/// top one attached unmerged (so 8-bit decode copies keep the weights below exact and the
/// top adapter is added in f32, as with one adapter).
pub fn apply_stack_for_decode(
    model: &mut LlamaModel,
    stack: &ModelStack,
    device: &Device,
) -> Result<(), LlmError> {
    let mut adapters = load_adapters(stack, device)?;
    let top = adapters.pop();
    if !adapters.is_empty() {
        crate::llm::merge_adapters_into_model(model, &adapters)?;
    }
    if let Some(top) = top {
        top.attach_to(model)?;
    }
    Ok(())
}

/// Every adapter of `stack`, loaded, bottom first.
pub fn load_adapters(
    stack: &ModelStack,
    device: &Device,
) -> Result<Vec<crate::llm::PeftAdapter>, LlmError> {
    stack
        .adapters
        .iter()
        .map(|a| crate::llm::PeftAdapter::load(&a.dir, device))
        .collect()
}
