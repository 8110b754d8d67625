//! The model a tool talks to: a base model (path or hub spec) with adapters, or a pipeline
//! instance's model (an adapter stage's stack on its base, or a merge's `model/`), with its
//! tokenizer and chat template. The last adapter stays attached beside the 8-bit decode
//! copies (which then hold a GGUF base exactly); the ones before it are merged in order.

use std::path::PathBuf;

use crate::base::ModelStack;
use crate::inputs::Link;
use crate::llm::device::DeviceChoice;
use crate::llm::template::TemplateKwargs;
use crate::llm::{
    load_model, load_model_random, merge_adapters_into_model, ChatTemplate, LlamaModel, LlmError,
    LlmResult, ModelSpec, PeftAdapter, TextTokenizer,
};

/// The merged-model directory inside merge's artifact.
const STAGE_MODEL_DIR: &str = crate::merge::artifact::MODEL_DIR;

/// Which model to open, as the command line gives it.
#[derive(Debug, Clone, Default)]
pub struct ModelOptions {
    /// A path (relative to `model_root`) or `hf:org/name[@rev]`; ignored when the stage
    /// artifact holds a merged model.
    pub model: Option<String>,
    /// What a relative `model` path is relative to: the workspace root for the pipeline's
    /// `[model] path`, the current directory for `--model`.
    pub model_root: PathBuf,
    /// PEFT adapter directories (relative ones to the current directory), merged in order.
    pub adapters: Vec<PathBuf>,
    /// `--stage`: the instance's committed artifact and those below it through `model`,
    /// resolved by the engine (top first).
    pub stage: Option<Vec<Link>>,
    /// The workspace root, which a `model` artifact's spec is relative to.
    pub workspace: PathBuf,
    pub device: DeviceChoice,
    /// `model` (the model's own, the default) or a named fallback template.
    pub template: Option<String>,
    /// Extra variables for every render of the template (`enable_thinking`, ...).
    pub template_kwargs: TemplateKwargs,
    /// Decode with the exact f32 weights instead of 8-bit copies (slower, bit-for-bit the
    /// float path).
    pub exact: bool,
    /// Seeded random weights instead of the checkpoint's (an HF directory with config.json
    /// and tokenizer.json suffices): `pipe bench --random-weights`.
    pub random_weights: Option<u64>,
}

/// A model ready for inference.
pub struct ModelSession {
    pub model: LlamaModel,
    pub tokenizer: TextTokenizer,
    /// The chat template, or why there is none (a tool that needs one reports it).
    pub template: LlmResult<ChatTemplate>,
    /// What was opened, for messages: the base name plus adapters.
    pub description: String,
}

impl ModelSession {
    /// Loads the base model, then applies the adapters (`--adapter` ones, then the stage's).
    pub fn open(options: &ModelOptions) -> LlmResult<Self> {
        let device = options.device.open()?;
        let (spec, root, stage_adapters) = base_and_stage_adapters(options)?;
        let loaded = match options.random_weights {
            Some(seed) => load_model_random(&spec, &root, &device, seed)?,
            None => load_model(&spec, &root, &device)?,
        };
        let template = loaded
            .template(options.template.as_deref())
            .and_then(|t| t.with_kwargs(options.template_kwargs.clone()));
        let mut model = LlamaModel::from_tensors(&loaded.config, loaded.weights.into_map())?;
        let mut adapter_dirs = options.adapters.clone();
        adapter_dirs.extend(stage_adapters);
        let adapters = adapter_dirs
            .iter()
            .map(|dir| PeftAdapter::load(dir, &device))
            .collect::<LlmResult<Vec<_>>>()?;
        // The last adapter stays attached (decoding then rounds only the weights below it,
        // which for a GGUF base alone the 8-bit copies hold exactly); the others are merged.
        if let Some((last, below)) = adapters.split_last() {
            if !below.is_empty() {
                merge_adapters_into_model(&mut model, below)?;
            }
            last.attach_to(&mut model)?;
        }
        if !options.exact {
            model.pack_for_decode()?;
        }
        let mut description = loaded.source.name.clone();
        for dir in &adapter_dirs {
            description.push_str(&format!(" + {}", dir.display()));
        }
        Ok(ModelSession {
            model,
            tokenizer: loaded.tokenizer,
            template,
            description,
        })
    }
}

/// The model to load (and what a relative path in it is relative to) and the adapters of
/// the `--stage` instance's stack, bottom first.
fn base_and_stage_adapters(
    options: &ModelOptions,
) -> LlmResult<(ModelSpec, PathBuf, Vec<PathBuf>)> {
    let Some(chain) = &options.stage else {
        return Ok((base_spec(options)?, options.model_root.clone(), Vec::new()));
    };
    let top = chain
        .first()
        .ok_or_else(|| LlmError::Invalid("--stage: the engine gave no artifact".into()))?;
    let merged = top.dir.join(STAGE_MODEL_DIR);
    if top.kind == "merge" && merged.is_dir() {
        return Ok((
            ModelSpec::Local(merged),
            options.workspace.clone(),
            Vec::new(),
        ));
    }
    let stack = ModelStack::from_chain(chain).map_err(|e| {
        LlmError::Invalid(format!(
            "--stage {}: {e}; pick an instance that trains or merges a model",
            top.instance
        ))
    })?;
    let info =
        crate::model::artifact::read_info(&stack.base.join(crate::model::artifact::MODEL_FILE))
            .map_err(|e| LlmError::Invalid(e.to_string()))?;
    let spec = ModelSpec::parse(&info.spec)?.pinned(info.revision.as_deref());
    let adapters = stack.adapters.into_iter().map(|a| a.dir).collect();
    Ok((spec, options.workspace.clone(), adapters))
}

fn base_spec(options: &ModelOptions) -> LlmResult<ModelSpec> {
    let text = options.model.as_deref().ok_or_else(|| {
        LlmError::Invalid(
            "no model: pass --model PATH (a GGUF file or an HF directory) or `hf:org/name`, or add a `[model]` table with `path` to pipeline.toml".into(),
        )
    })?;
    ModelSpec::parse(text)
}

/// End-of-turn markers of common chat formats; the ones the template writes end a reply even
/// when the model's config names another EOS.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
];

impl ModelSession {
    /// Ids of the end-of-turn tokens the chat template uses (stop tokens for a chat reply).
    pub fn end_of_turn_ids(&self) -> Vec<u32> {
        let Ok(template) = &self.template else {
            return Vec::new();
        };
        END_OF_TURN
            .iter()
            .filter(|t| template.source().contains(*t))
            .filter_map(|t| self.tokenizer.token_to_id(t))
            .collect()
    }

    /// The chat template, or the error saying why there is none.
    pub fn chat_template(&self) -> LlmResult<&ChatTemplate> {
        self.template.as_ref().map_err(|e| {
            LlmError::Invalid(format!(
                "{e} (or pass --raw to feed the prompt without a template)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatMessage;

    fn tiny_options(dir: &std::path::Path, kwargs: TemplateKwargs) -> ModelOptions {
        crate::testkit::write_tiny_model(&dir.join("tiny"), 1).unwrap();
        ModelOptions {
            model: Some("tiny".into()),
            model_root: dir.to_path_buf(),
            device: DeviceChoice::Cpu,
            template_kwargs: kwargs,
            ..ModelOptions::default()
        }
    }

    /// `pipe generate`/`chat` render through the same template with the same kwargs as the
    /// stages; a kwarg the renderer owns leaves the session without a template, saying why.
    #[test]
    fn the_session_template_gets_the_kwargs() {
        let ws = tempfile::tempdir().unwrap();
        let kwargs = TemplateKwargs::from([("enable_thinking".into(), false.into())]);
        let session = ModelSession::open(&tiny_options(ws.path(), kwargs.clone())).unwrap();
        let template = session.chat_template().unwrap();
        assert_eq!(template.kwargs(), &kwargs);
        assert!(template
            .render(&[ChatMessage::user("hi")], true)
            .unwrap()
            .contains("hi"));
        let reserved = TemplateKwargs::from([("messages".into(), serde_json::json!([]))]);
        let session = ModelSession::open(&tiny_options(ws.path(), reserved)).unwrap();
        let err = session.chat_template().unwrap_err().to_string();
        assert!(err.contains("`messages`"), "{err}");
    }
}
