//! One entry point that turns a model spec into everything the stages need: the validated
//! config, HF-named f32 tensors, the tokenizer, the model's own chat template, and a portable
//! name for the source, whether the model is an HF directory or a GGUF file.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::Value as Json;

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::io::gguf::GgufFile;
use crate::llm::io::hf_files::{
    CHAT_TEMPLATE_FILE, CONFIG_FILE, GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
};
use crate::llm::io::spec::{ModelFormat, ModelSpec, ResolvedModel};
use crate::llm::io::weights::ModelWeights;
use crate::llm::model::config::ModelConfig;
use crate::llm::text::template::ChatTemplate;
use crate::llm::text::tokenizer::{SpecialTokens, TextTokenizer};

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

impl LoadedModel {
    /// The chat template to use: `choice` `None`/`"model"` is the model's own, anything
    /// else a named fallback (see [`ChatTemplate::select`]).
    pub fn template(&self, choice: Option<&str>) -> LlmResult<ChatTemplate> {
        ChatTemplate::select(
            choice,
            self.chat_template.as_deref(),
            self.tokenizer.special(),
        )
    }
}

/// Loads the model `spec` names (a path relative to `workspace`, or `hf:org/name[@rev]`
/// from the Hugging Face cache, downloaded into it when missing unless `HF_HUB_OFFLINE`
/// is set), with every tensor as f32 on `device`.
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
    load_resolved_with(spec, resolved, device, None)
}

/// As [`load_model`], with seeded random weights instead of the checkpoint's: an HF directory
/// needs only `config.json` and `tokenizer.json` (`pipe bench --random-weights` measures any
/// model shape without downloading weights).
pub fn load_model_random(
    spec: &ModelSpec,
    workspace: &Path,
    device: &Device,
    seed: u64,
) -> LlmResult<LoadedModel> {
    let resolved = spec.resolve(workspace)?;
    if resolved.format != ModelFormat::HfDir {
        return Err(LlmError::Invalid(format!(
            "{}: random weights need an HF directory (config.json and tokenizer.json)",
            resolved.path.display()
        )));
    }
    load_resolved_with(spec, resolved, device, Some(seed))
}

fn load_resolved_with(
    spec: &ModelSpec,
    resolved: ResolvedModel,
    device: &Device,
    random_seed: Option<u64>,
) -> LlmResult<LoadedModel> {
    let parts = match resolved.format {
        ModelFormat::HfDir => load_hf_dir(&resolved.path, device, random_seed)?,
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
    let mut config = gguf.config()?;
    let tokenizer = TextTokenizer::from_gguf(&gguf)?;
    add_spm_end_ids(&mut config, &tokenizer);
    let chat_template = gguf.chat_template()?;
    let weights = gguf.load_weights(&config, device)?;
    Ok(Parts {
        config,
        weights,
        tokenizer,
        chat_template,
    })
}

fn load_hf_dir(dir: &Path, device: &Device, random_seed: Option<u64>) -> LlmResult<Parts> {
    let mut config = ModelConfig::from_config_json(&dir.join(CONFIG_FILE))?;
    add_generation_eos(&mut config, &dir.join(GENERATION_CONFIG_FILE))?;
    let tokenizer_config = read_optional_json(&dir.join(TOKENIZER_CONFIG_FILE))?;
    let mut special = tokenizer_config
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
    let mut tokenizer = TextTokenizer::from_file(&tokenizer_path, special.clone())?;
    if fill_specials_from_ids(&mut special, &tokenizer, &config) {
        tokenizer = tokenizer.with_special(special);
    }
    let chat_template = hf_chat_template(dir, tokenizer_config.as_ref())?;
    let weights = match random_seed {
        Some(seed) => ModelWeights::random(&config, seed, device)?,
        None => ModelWeights::from_hf_dir(dir, device)?,
    };
    Ok(Parts {
        config,
        weights,
        tokenizer,
        chat_template,
    })
}

/// A SentencePiece GGUF's BOS/EOS default to llama.cpp's (1 and 2) when the file names none,
/// and llama.cpp also stops on end-of-turn texts (Gemma's `<end_of_turn>`) without a key:
/// fold those into the config so generation stops where llama.cpp's does.
fn add_spm_end_ids(config: &mut ModelConfig, tokenizer: &TextTokenizer) {
    let Some(spm) = tokenizer.spm() else {
        return;
    };
    if config.bos_token_id.is_none() {
        config.bos_token_id = spm.bos_id();
    }
    for id in spm.end_of_generation_ids() {
        if !config.eos_token_ids.contains(&id) {
            config.eos_token_ids.push(id);
        }
    }
}

/// Older checkpoints name special tokens only by id in config.json; templates need their
/// text (`bos_token`). Returns whether anything was filled in.
fn fill_specials_from_ids(
    special: &mut SpecialTokens,
    tokenizer: &TextTokenizer,
    config: &ModelConfig,
) -> bool {
    let mut changed = false;
    let mut fill = |slot: &mut Option<String>, id: Option<u32>| {
        if slot.is_none() {
            if let Some(token) = id.and_then(|id| tokenizer.id_to_token(id)) {
                *slot = Some(token);
                changed = true;
            }
        }
    };
    fill(&mut special.bos, config.bos_token_id);
    fill(&mut special.eos, config.eos_token_ids.first().copied());
    fill(&mut special.pad, config.pad_token_id);
    changed
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
        assert_eq!(c.rms_norm_eps, 1e-5);
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

    use crate::llm::io::export::{ExportDtype, HfExport};
    use crate::llm::io::hub::HubCache;
    use crate::llm::testing::{random_weights, tiny_config, tiny_tokenizer};

    /// A tiny tied Llama model exported as an HF directory in `dir`.
    fn tiny_hf_dir(dir: &Path, vocab_rows: usize) -> ModelConfig {
        let config = tiny_config(Architecture::Llama, vocab_rows, true);
        let weights = random_weights(&config, 11);
        let tokenizer = tiny_tokenizer();
        HfExport {
            config: &config,
            weights: &weights,
            tokenizer: &tokenizer,
            chat_template: None,
            dtype: ExportDtype::F32,
        }
        .write(dir)
        .unwrap();
        config
    }

    fn load_err(path: &Path) -> String {
        load_model_path(path, &Device::Cpu).unwrap_err().to_string()
    }

    fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Json>)) {
        let path = dir.join(CONFIG_FILE);
        let mut json: Json =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(json.as_object_mut().unwrap());
        std::fs::write(&path, json.to_string()).unwrap();
    }

    #[test]
    fn truncated_safetensors_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        tiny_hf_dir(dir.path(), 272);
        let file = dir.path().join("model.safetensors");
        let bytes = std::fs::read(&file).unwrap();
        for keep in [4, 100, bytes.len() / 2] {
            std::fs::write(&file, &bytes[..keep]).unwrap();
            let err = load_err(dir.path());
            assert!(
                err.contains("model.safetensors") && err.contains("not a valid safetensors file"),
                "{err}"
            );
        }
    }

    #[test]
    fn config_errors_name_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        tiny_hf_dir(dir.path(), 272);
        edit_config(dir.path(), |c| {
            c.remove("hidden_size");
        });
        let err = load_err(dir.path());
        assert!(
            err.ends_with("config.json: missing required field `hidden_size`"),
            "{err}"
        );

        edit_config(dir.path(), |c| {
            c.insert("hidden_size".into(), 256.into());
            c.insert("model_type".into(), "gpt2".into());
        });
        let err = load_model_path(dir.path(), &Device::Cpu).unwrap_err();
        assert!(
            matches!(&err, LlmError::UnsupportedArchitecture(a) if a == "gpt2"),
            "{err}"
        );

        edit_config(dir.path(), |c| {
            c.insert("model_type".into(), "llama".into());
            c.insert("intermediate_size".into(), 1024.into());
        });
        let err = load_err(dir.path());
        assert!(
            err.contains("model.layers.0.mlp.down_proj.weight")
                && err.contains("expected shape [256, 1024] from the config, found [256, 512]"),
            "{err}"
        );

        edit_config(dir.path(), |c| {
            c.insert("intermediate_size".into(), 512.into());
            c.insert(
                "rope_scaling".into(),
                serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
            );
        });
        let err = load_err(dir.path());
        assert!(
            err.contains("rope_scaling type `yarn` is not supported"),
            "{err}"
        );
    }

    #[test]
    fn architectures_from_config_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        let base = serde_json::json!({
            "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4,
        });
        let parse = |extra: Json| {
            let mut json = base.clone();
            json.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            std::fs::write(&path, json.to_string()).unwrap();
            ModelConfig::from_config_json(&path)
        };
        let qwen = parse(
            serde_json::json!({"architectures": ["Qwen2ForCausalLM"], "num_key_value_heads": 2,
            "sliding_window": 4096, "use_sliding_window": false, "tie_word_embeddings": true}),
        )
        .unwrap();
        assert_eq!(qwen.architecture, Architecture::Qwen2);
        assert!(qwen.attention_bias && qwen.tie_word_embeddings);
        assert_eq!(
            (qwen.num_key_value_heads, qwen.head_dim, qwen.sliding_window),
            (2, 16, None)
        );
        let mistral = parse(
            serde_json::json!({"model_type": "mistral", "sliding_window": 4096, "head_dim": 32,
            "eos_token_id": [2, 7]}),
        )
        .unwrap();
        assert_eq!(
            (
                mistral.sliding_window,
                mistral.head_dim,
                mistral.num_key_value_heads
            ),
            (Some(4096), 32, 4)
        );
        assert_eq!(mistral.eos_token_ids, vec![2, 7]);
        let llama3 = parse(
            serde_json::json!({"model_type": "llama", "rope_theta": 500000.0, "rope_scaling": {
            "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}}),
        )
        .unwrap();
        assert!(matches!(
            llama3.rope_scaling,
            Some(crate::llm::model::config::RopeScaling::Llama3(ref s)) if s.factor == 32.0
        ));
        assert_eq!(
            ModelConfig::from_hf_json(&llama3.to_hf_json("float32"), &path).unwrap(),
            llama3
        );
        let err = parse(serde_json::json!({"architectures": ["GPT2LMHeadModel"]})).unwrap_err();
        assert!(
            matches!(&err, LlmError::UnsupportedArchitecture(a) if a == "GPT2LMHeadModel"),
            "{err}"
        );
        let err = parse(serde_json::json!({"model_type": "llama", "num_key_value_heads": 3}))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("multiple of `num_key_value_heads`"),
            "{err}"
        );
        let err =
            parse(serde_json::json!({"model_type": "llama", "hidden_size": "big"})).unwrap_err();
        assert!(
            err.to_string()
                .contains("`hidden_size` must be a non-negative integer"),
            "{err}"
        );
    }

    #[test]
    fn tokenizer_larger_than_the_embedding_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        tiny_hf_dir(dir.path(), 200);
        let err = load_err(dir.path());
        assert!(
            err.contains(
                "the tokenizer has ids up to 263 but the embedding matrix has only 200 rows"
            ),
            "{err}"
        );
    }

    #[test]
    fn sentencepiece_end_ids_join_the_config() {
        let path = testing::vocab_fixture("ggml-vocab-llama-spm.gguf");
        let tokenizer = TextTokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
        let mut config = testing::tiny_config(Architecture::Llama, 32000, true);
        config.bos_token_id = None;
        config.eos_token_ids = vec![7];
        add_spm_end_ids(&mut config, &tokenizer);
        assert_eq!(config.bos_token_id, Some(1));
        assert_eq!(config.eos_token_ids, vec![7, 2]);
        // An HF tokenizer leaves the config alone.
        let mut hf_config = testing::tiny_config(Architecture::Llama, 272, true);
        let before = hf_config.clone();
        add_spm_end_ids(&mut hf_config, &testing::tiny_tokenizer());
        assert_eq!(hf_config, before);
    }

    #[test]
    fn special_tokens_fall_back_to_config_ids() {
        let dir = tempfile::tempdir().unwrap();
        tiny_hf_dir(dir.path(), 272);
        std::fs::remove_file(dir.path().join(TOKENIZER_CONFIG_FILE)).unwrap();
        let model = load_model_path(dir.path(), &Device::Cpu).unwrap();
        let special = model.tokenizer.special();
        assert_eq!(special.bos.as_deref(), Some("<|im_start|>"));
        assert_eq!(special.eos.as_deref(), Some("<|im_end|>"));
        assert_eq!(model.tokenizer.pad_id(), Some(2));
        assert!(model.chat_template.is_none());
        assert!(model.template(None).is_err());
        assert_eq!(model.template(Some("chatml")).unwrap().name(), "chatml");
    }

    #[test]
    fn sharded_checkpoints_load() {
        let dir = tempfile::tempdir().unwrap();
        tiny_hf_dir(dir.path(), 272);
        let single = load_model_path(dir.path(), &Device::Cpu).unwrap();
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        let names = single.weights.names();
        let (first, second) = names.split_at(names.len() / 2);
        let mut weight_map = serde_json::Map::new();
        for (file, part) in [
            ("model-00001-of-00002.safetensors", first),
            ("model-00002-of-00002.safetensors", second),
        ] {
            let tensors: Vec<(&str, &candle_core::Tensor)> = part
                .iter()
                .map(|n| (*n, single.weights.get(n).unwrap()))
                .collect();
            crate::llm::write_safetensors(&dir.path().join(file), &tensors, ExportDtype::Bf16)
                .unwrap();
            weight_map.extend(part.iter().map(|n| (n.to_string(), Json::from(file))));
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let sharded = load_model_path(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(sharded.weights.names(), names);
    }

    /// `hf:org/name` resolves through a hub cache laid out as huggingface_hub writes it,
    /// with no network, and records the repository id, not the cache path.
    #[test]
    fn hub_cache_models_load_offline() {
        let cache_dir = tempfile::tempdir().unwrap();
        let commit = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
        let repo = cache_dir.path().join("models--TinyOrg--tiny-llama");
        let snapshot = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        let config = tiny_hf_dir(&snapshot, 272);
        let cache = HubCache::new(cache_dir.path());
        let spec = ModelSpec::parse("hf:TinyOrg/tiny-llama").unwrap();
        let resolved = spec
            .resolve_with_cache(Path::new("/nonexistent"), &cache)
            .unwrap();
        let model = load_resolved(&spec, resolved, &Device::Cpu).unwrap();
        assert_eq!(model.config, config);
        assert_eq!(model.source.name, "TinyOrg/tiny-llama");
        assert_eq!(model.source.path, snapshot);
        let pinned = ModelSpec::parse(&format!("hf:TinyOrg/tiny-llama@{commit}")).unwrap();
        assert!(pinned.resolve_with_cache(Path::new("."), &cache).is_ok());
        let err = ModelSpec::parse("hf:TinyOrg/tiny-llama@v9")
            .unwrap()
            .resolve_with_cache(Path::new("."), &cache)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not in the Hugging Face cache") && err.contains("refs/v9"),
            "{err}"
        );
    }

    #[test]
    fn local_paths_resolve_against_the_workspace() {
        let workspace = tempfile::tempdir().unwrap();
        tiny_hf_dir(&workspace.path().join("models/tiny"), 272);
        let spec = ModelSpec::parse("models/tiny").unwrap();
        let model = load_model(&spec, workspace.path(), &Device::Cpu).unwrap();
        assert_eq!(model.source.name, "models/tiny");
        assert_eq!(model.source.format, ModelFormat::HfDir);
    }
}
