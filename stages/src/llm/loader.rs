//! One entry point that turns a model spec into everything the stages need: the validated
//! config, HF-named f32 tensors, the tokenizer, the model's own chat template, and a portable
//! name for the source, whether the model is an HF directory or a GGUF file.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::Value as Json;

use super::config::ModelConfig;
use super::error::{LlmError, LlmResult};
use super::gguf::GgufFile;
use super::spec::{ModelFormat, ModelSpec, ResolvedModel};
use super::tokenizer::{SpecialTokens, TextTokenizer};
use super::weights::ModelWeights;

/// Where a loaded model came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSource {
    /// The spec as the user wrote it.
    pub spec: ModelSpec,
    /// Hub repository id or the path as written: what PEFT's `base_model_name_or_path` and
    /// manifests record (never an absolute cache path).
    pub name: String,
    /// The file or directory actually read (may be inside the hub cache).
    pub path: PathBuf,
    pub format: ModelFormat,
}

/// A model ready to be built: config, weights, tokenizer and chat template agree with each
/// other (shapes checked, tokenizer fits the embedding matrix).
#[derive(Debug)]
pub struct LoadedModel {
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub tokenizer: TextTokenizer,
    /// The model's own Jinja chat template, if it ships one.
    pub chat_template: Option<String>,
    pub source: ModelSource,
}

/// Loads the model `spec` names (a path relative to `workspace`, or `hf:org/name[@rev]`
/// from the Hugging Face cache), with every tensor as f32 on `device`.
pub fn load_model(spec: &ModelSpec, workspace: &Path, device: &Device) -> LlmResult<LoadedModel> {
    let resolved = spec.resolve(workspace)?;
    load_resolved(spec, resolved, device)
}

/// Loads a model directory or GGUF file by path (tests, exported models).
pub fn load_model_path(path: &Path, device: &Device) -> LlmResult<LoadedModel> {
    let spec = ModelSpec::Local(path.to_path_buf());
    let resolved = spec.resolve(Path::new(""))?;
    load_resolved(&spec, resolved, device)
}

/// Loads what a spec resolved to.
pub fn load_resolved(
    spec: &ModelSpec,
    resolved: ResolvedModel,
    device: &Device,
) -> LlmResult<LoadedModel> {
    let parts = match resolved.format {
        ModelFormat::HfDir => load_hf_dir(&resolved.path, device)?,
        ModelFormat::Gguf => load_gguf(&resolved.path, device)?,
    };
    let mut weights = parts.weights;
    weights.validate(&parts.config)?;
    check_tokenizer_fits(&parts.tokenizer, &parts.config, &resolved.path)?;
    Ok(LoadedModel {
        config: parts.config,
        weights,
        tokenizer: parts.tokenizer,
        chat_template: parts.chat_template,
        source: ModelSource {
            spec: spec.clone(),
            name: spec.portable_name(),
            path: resolved.path,
            format: resolved.format,
        },
    })
}

/// The pieces of a model before cross-checks.
struct Parts {
    config: ModelConfig,
    weights: ModelWeights,
    tokenizer: TextTokenizer,
    chat_template: Option<String>,
}

fn load_gguf(path: &Path, device: &Device) -> LlmResult<Parts> {
    let mut gguf = GgufFile::open(path)?;
    let config = gguf.config()?;
    let tokenizer = TextTokenizer::from_gguf(&gguf)?;
    let chat_template = gguf.chat_template()?;
    let weights = gguf.load_weights(&config, device)?;
    Ok(Parts {
        config,
        weights,
        tokenizer,
        chat_template,
    })
}

/// The files of an HF model directory.
pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

fn load_hf_dir(dir: &Path, device: &Device) -> LlmResult<Parts> {
    let mut config = ModelConfig::from_config_json(&dir.join(CONFIG_FILE))?;
    add_generation_eos(&mut config, &dir.join(GENERATION_CONFIG_FILE))?;
    let tokenizer_config = read_optional_json(&dir.join(TOKENIZER_CONFIG_FILE))?;
    let special = tokenizer_config
        .as_ref()
        .map(SpecialTokens::from_tokenizer_config)
        .unwrap_or_default();
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    if !tokenizer_path.is_file() {
        return Err(LlmError::bad_file(
            dir,
            format!(
                "no {TOKENIZER_FILE} in the model directory (only fast tokenizers are supported)"
            ),
        ));
    }
    let tokenizer = TextTokenizer::from_file(&tokenizer_path, special)?;
    let chat_template = hf_chat_template(dir, tokenizer_config.as_ref())?;
    let weights = ModelWeights::from_hf_dir(dir, device)?;
    Ok(Parts {
        config,
        weights,
        tokenizer,
        chat_template,
    })
}

/// transformers stops generation on generation_config.json's `eos_token_id` (often a list
/// for chat models); fold those ids into the config's.
fn add_generation_eos(config: &mut ModelConfig, path: &Path) -> LlmResult<()> {
    let Some(json) = read_optional_json(path)? else {
        return Ok(());
    };
    let ids: Vec<u32> = match json.get("eos_token_id") {
        Some(Json::Number(n)) => n
            .as_u64()
            .into_iter()
            .filter_map(|n| u32::try_from(n).ok())
            .collect(),
        Some(Json::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect(),
        _ => Vec::new(),
    };
    for id in ids {
        if !config.eos_token_ids.contains(&id) {
            config.eos_token_ids.push(id);
        }
    }
    Ok(())
}

/// The model's template: `chat_template.jinja` (newer transformers save it there), else
/// `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates of
/// which `default` is the chat one).
fn hf_chat_template(dir: &Path, tokenizer_config: Option<&Json>) -> LlmResult<Option<String>> {
    let file = dir.join(CHAT_TEMPLATE_FILE);
    if file.is_file() {
        return std::fs::read_to_string(&file)
            .map(Some)
            .map_err(|e| LlmError::io(file, e));
    }
    Ok(tokenizer_config.and_then(|c| chat_template_from_tokenizer_config(c.get("chat_template")?)))
}

/// Reads a `chat_template` value of `tokenizer_config.json`.
pub fn chat_template_from_tokenizer_config(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .or_else(|| named.first())
            .and_then(|t| t.get("template")?.as_str())
            .map(str::to_string),
        _ => None,
    }
}

fn read_optional_json(path: &Path) -> LlmResult<Option<Json>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| LlmError::bad_file(path, format!("not valid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LlmError::io(path, e)),
    }
}

/// Every id the tokenizer can produce must index a row of the embedding matrix; a larger
/// tokenizer means tokenizer and weights come from different models.
fn check_tokenizer_fits(
    tokenizer: &TextTokenizer,
    config: &ModelConfig,
    path: &Path,
) -> LlmResult<()> {
    let needed = tokenizer.vocab_size();
    if needed > config.vocab_size {
        return Err(LlmError::bad_file(
            path,
            format!(
                "the tokenizer has ids up to {} but the embedding matrix has only {} rows: tokenizer and weights do not belong together",
                needed - 1,
                config.vocab_size
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::testing;
    use crate::llm::Architecture;

    #[test]
    fn loads_the_smollm2_gguf() {
        let start = std::time::Instant::now();
        let model = testing::smollm2_model();
        eprintln!("loaded SmolLM2 in {:?}", start.elapsed());
        let c = &model.config;
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!(
            (
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.num_key_value_heads
            ),
            (30, 576, 9, 3)
        );
        assert_eq!(
            (c.vocab_size, c.intermediate_size, c.head_dim),
            (49152, 1536, 64)
        );
        assert!(c.tie_word_embeddings);
        assert!(!c.attention_bias);
        assert_eq!(c.rope_theta, 100_000.0);
        assert!((c.rms_norm_eps - 1e-5).abs() < 1e-9);
        assert_eq!(c.max_position_embeddings, 8192);
        assert_eq!(
            (c.bos_token_id, c.eos_token_ids.as_slice(), c.pad_token_id),
            (Some(1), &[2][..], Some(2))
        );
        let w = &model.weights;
        assert_eq!(w.len(), 2 + 30 * 9);
        assert!(w.get("lm_head.weight").is_none());
        assert_eq!(
            w.require("model.embed_tokens.weight").unwrap().dims(),
            &[49152, 576]
        );
        assert_eq!(
            w.require("model.layers.0.self_attn.q_proj.weight")
                .unwrap()
                .dims(),
            &[576, 576]
        );
        assert_eq!(
            w.require("model.layers.29.self_attn.k_proj.weight")
                .unwrap()
                .dims(),
            &[192, 576]
        );
        assert_eq!(
            w.require("model.layers.7.mlp.down_proj.weight")
                .unwrap()
                .dims(),
            &[576, 1536]
        );
        assert_eq!(w.require("model.norm.weight").unwrap().dims(), &[576]);
        for t in w.tensors().values() {
            assert_eq!(t.dtype(), candle_core::DType::F32);
        }
        assert!(model
            .chat_template
            .as_deref()
            .unwrap()
            .contains("<|im_start|>"));
        assert_eq!(model.source.format, ModelFormat::Gguf);
        assert_eq!(model.tokenizer.eos_id(), Some(2));
    }
}
