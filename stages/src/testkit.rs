//! Test kit for the stages' tests and the CLI integration tests (the `testkit` feature, which
//! only dev-dependencies enable): tiny but complete models on disk — an HF directory
//! (config.json, model.safetensors, a byte-level BPE tokenizer.json and a chatml template in
//! tokenizer_config.json) that loads through the same code path as a real checkpoint, yet
//! trains in milliseconds — and a way to run any registered stage on committed upstream
//! artifacts, so a stage's tests build their inputs without importing other stages.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::DType;
use serde_json::{json, Value};

use crate::contract::{InputDirs, Link, StageContext, StageResult};
use crate::llm::testing::micro::random_tensors;
use crate::llm::{Architecture, LlmError, LlmResult, ModelConfig};
use crate::progress::NullProgress;

#[cfg(test)]
pub mod preference;

/// `<|endoftext|>`: padding.
pub const TINY_PAD: u32 = 0;
/// `<|im_start|>`.
pub const TINY_IM_START: u32 = 1;
/// `<|im_end|>`: the end of a turn and of generation.
pub const TINY_EOS: u32 = 2;
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// The chatml template, without a default system prompt (short sequences keep tests fast).
pub const TINY_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A 2-layer Llama with hidden size 64 over the 259 tokens of [`write_tiny_model`]'s
/// tokenizer (3 specials + 256 bytes; 5 spare rows). Hidden 64 rather than smaller: the final
/// RMSNorm bounds the logits by about `sqrt(hidden)`, and a model must be able to put most of
/// the probability on one token for an overfitting test to reach a low loss.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: 264,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 1024,
        tie_word_embeddings: true,
        attention_bias: false,
        sliding_window: None,
        layer_types: None,
        rope_local_theta: None,
        query_pre_attn_scalar: None,
        bos_token_id: None,
        eos_token_ids: vec![TINY_EOS],
        pad_token_id: Some(TINY_PAD),
    }
}

/// Writes the tiny model as an HF directory `dir` (created), weights seeded by `seed`.
pub fn write_tiny_model(dir: &Path, seed: u64) -> LlmResult<()> {
    std::fs::create_dir_all(dir).map_err(|e| LlmError::io(dir, e))?;
    let config = tiny_config();
    write_json(&dir.join("config.json"), &config.to_hf_json("float32"))?;
    let mut tensors: HashMap<String, candle_core::Tensor> =
        random_tensors(&config, seed, DType::F32);
    // Halved embeddings (hence tied logits): a random model starts less confidently wrong
    // (initial loss ~15 rather than ~30), while a trained one can still reach p > 0.99.
    let embed = "model.embed_tokens.weight";
    if let Some(e) = tensors.get(embed) {
        let halved = (e * 0.5)?;
        tensors.insert(embed.to_string(), halved);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    write_json(&dir.join("tokenizer.json"), &tokenizer_json())?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": null,
            "eos_token": SPECIALS[TINY_EOS as usize],
            "pad_token": SPECIALS[TINY_PAD as usize],
            "add_bos_token": false,
            "chat_template": TINY_TEMPLATE,
        }),
    )
}

/// A byte-level BPE without merges: every byte is one token, the specials are added tokens.
fn tokenizer_json() -> Value {
    let mut bytes: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    bytes.sort_unstable();
    let offset = SPECIALS.len();
    // The specials are in the model's vocabulary too: tokenizers gives added tokens that are
    // not new ids after the vocabulary instead of the ids written here.
    let vocab: serde_json::Map<String, Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| (s.to_string(), json!(i)))
        .chain(
            bytes
                .iter()
                .enumerate()
                .map(|(i, c)| (c.to_string(), json!(i + offset))),
        )
        .collect();
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(id, content)| {
            json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            })
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": []
        }
    })
}

/// Where a stage run by [`run_stage`] works and what it reads.
pub struct StageRun<'a> {
    /// The workspace root (relative paths in configs are relative to it).
    pub workspace: &'a Path,
    /// The artifact directory the stage writes (created).
    pub out: &'a Path,
    /// The checkpoint directory.
    pub partial: &'a Path,
    /// Upstream stage name → its committed artifact directory.
    pub inputs: BTreeMap<String, PathBuf>,
    pub seed: u64,
}

/// The inputs the engine gives an instance of `kind` in the default chain (every table named
/// after its kind), from the upstream artifacts by kind name (`"sft" -> its directory`);
/// inputs whose instance is not in `dirs` are left out.
pub fn default_inputs(kind: &str, dirs: &BTreeMap<String, PathBuf>) -> Vec<InputDirs> {
    let has = |k: &str| dirs.contains_key(k);
    let below = |k: &str| -> Option<&'static str> {
        match k {
            "sft" => Some("model"),
            "orpo" | "dpo" if has("sft") => Some("sft"),
            "orpo" | "dpo" => Some("model"),
            "merge" => ["orpo", "dpo", "sft"].into_iter().find(|t| has(t)),
            _ => None,
        }
    };
    let chain = |top: &str| -> Vec<Link> {
        let mut out = Vec::new();
        let mut at = Some(top.to_string());
        while let Some(name) = at.filter(|n| has(n)) {
            out.push(Link::new(&name, &name, &dirs[&name]));
            at = below(&name).map(String::from);
        }
        out
    };
    let one = |key: &str, top: &str| InputDirs {
        key: key.into(),
        chains: if has(top) { vec![chain(top)] } else { vec![] },
    };
    let preference_model = if has("sft") { "sft" } else { "model" };
    let inputs = match kind {
        "sft" => vec![one("data", "ingest"), one("model", "model")],
        "generate" => vec![one("data", "ingest"), one("model", "sft")],
        "score" => vec![one("candidates", "generate")],
        "orpo" | "dpo" => vec![one("model", preference_model), one("pairs", "score")],
        "merge" => vec![one("model", below("merge").unwrap_or("sft"))],
        "eval" => vec![
            one("data", "ingest"),
            InputDirs {
                key: "models".into(),
                chains: ["model", "sft", "merge"]
                    .into_iter()
                    .filter(|m| has(m))
                    .map(chain)
                    .collect(),
            },
            one("scorers", "score"),
        ],
        _ => vec![],
    };
    inputs
        .into_iter()
        .filter(|i| !i.chains.is_empty())
        .collect()
}

/// Runs the registered stage `name` as the engine does: its table loaded from `toml` (a
/// pipeline.toml text; an absent table takes the defaults) and validated, then run.
pub fn run_stage(name: &str, toml: &str, run: StageRun<'_>) -> StageResult {
    let stage = crate::registry()
        .into_iter()
        .find(|s| s.name() == name)
        .ok_or_else(|| format!("no stage `{name}` in the registry"))?;
    let config = stage
        .load_config(toml, name)
        .map_err(|e| format!("[{name}]: {e:?}"))?;
    std::fs::create_dir_all(run.out).map_err(|e| format!("{}: {e}", run.out.display()))?;
    let mut cx = StageContext::new(
        run.workspace.to_path_buf(),
        run.out.to_path_buf(),
        run.partial.to_path_buf(),
        default_inputs(name, &run.inputs),
        run.seed,
        &NullProgress,
    );
    stage.run(&config, &mut cx)
}

/// Runs the registered stage `name` (its table in `toml`) into `<workspace>/<name>-out`, on
/// the committed upstream artifacts `inputs`, with project seed 7; returns the artifact
/// directory. Panics with the stage's error: this is for tests.
pub fn stage_artifact(
    name: &str,
    toml: &str,
    workspace: &Path,
    inputs: &[(&str, &Path)],
) -> PathBuf {
    let out = workspace.join(format!("{name}-out"));
    let run = StageRun {
        workspace,
        out: &out,
        partial: &workspace.join(format!("{name}-partial")),
        inputs: inputs
            .iter()
            .map(|(dep, dir)| (dep.to_string(), dir.to_path_buf()))
            .collect(),
        seed: 7,
    };
    if let Err(e) = run_stage(name, toml, run) {
        panic!("stage `{name}` failed in the test fixture: {e}");
    }
    out
}

fn write_json(path: &Path, value: &Value) -> LlmResult<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| LlmError::bad_file(path, format!("cannot serialise: {e}")))?;
    std::fs::write(path, text + "\n").map_err(|e| LlmError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tiny_model_loads_tokenizes_and_renders() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_model(dir.path(), 3).unwrap();
        let loaded = crate::llm::load_model_path(dir.path(), &candle_core::Device::Cpu).unwrap();
        let ids = loaded
            .tokenizer
            .encode("<|im_start|>ab<|im_end|>", false)
            .unwrap();
        assert_eq!(ids.len(), 4);
        assert_eq!((ids[0], ids[3]), (TINY_IM_START, TINY_EOS));
        assert_eq!(loaded.tokenizer.decode(&ids[1..3], false).unwrap(), "ab");
        assert_eq!(loaded.tokenizer.eos_id(), Some(TINY_EOS));
        assert_eq!(loaded.chat_template.as_deref(), Some(TINY_TEMPLATE));
    }
}
