//! Tiny synthetic models for tests: a small config, seeded random weights, a byte-level
//! vocabulary, and a GGUF writer that lays tensors out as llama.cpp's converter does (names,
//! q/k row permutation, quantization), so loaders can be tested without large files.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::llm::io::gguf::{
    gguf_architecture_name, gguf_tensor_name, permute_rows, to_llama_cpp_norm,
};
use crate::llm::io::weights::{expected_shapes, ModelWeights};
use crate::llm::model::config::{Architecture, ModelConfig};

/// A two-layer model: hidden 256, 4 heads of 64 (2 key/value heads), MLP 512. The
/// dimensions are multiples of 256 so every GGML quantization (K-quants included) applies.
pub fn tiny_config(architecture: Architecture, vocab_size: usize, tied: bool) -> ModelConfig {
    ModelConfig {
        architecture,
        vocab_size,
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 512,
        tie_word_embeddings: tied,
        attention_bias: architecture == Architecture::Qwen2,
        sliding_window: None,
        layer_types: None,
        rope_local_theta: None,
        query_pre_attn_scalar: None,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: Some(2),
    }
}

/// Seeded uniform weights in [-0.1, 0.1) (norms around 1) for every tensor of `config`.
pub fn random_weights(config: &ModelConfig, seed: u64) -> ModelWeights {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tensors = HashMap::new();
    for (name, shape) in expected_shapes(config) {
        let count: usize = shape.iter().product();
        let offset = if name.ends_with("norm.weight") {
            1.0
        } else {
            0.0
        };
        let values: Vec<f32> = (0..count)
            .map(|_| offset + rng.random_range(-0.1f32..0.1))
            .collect();
        let tensor = Tensor::from_vec(values, shape, &Device::Cpu).expect("shape matches count");
        tensors.insert(name, tensor);
    }
    ModelWeights::new(tensors)
}

/// A byte-level BPE vocabulary: three control tokens (`<|endoftext|>`, `<|im_start|>`,
/// `<|im_end|>`), the 256 byte symbols, and a few merges.
#[derive(Debug, Clone)]
pub struct TinyVocab {
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
}

impl TinyVocab {
    /// Builds the vocabulary (ids are stable: controls, sorted byte symbols, merged tokens).
    pub fn new() -> Self {
        let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            .map(String::from)
            .to_vec();
        let mut token_types = vec![3; tokens.len()];
        let mut bytes: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
            .into_iter()
            .collect();
        bytes.sort_unstable();
        tokens.extend(bytes.iter().map(char::to_string));
        let merges: Vec<String> = ["h e", "l l", "Ġ t", "Ġt he", "o r"]
            .map(String::from)
            .to_vec();
        tokens.extend(["he", "ll", "Ġt", "Ġthe", "or"].map(String::from));
        token_types.resize(tokens.len(), 1);
        TinyVocab {
            tokens,
            token_types,
            merges,
        }
    }
}

/// The tokenizer of [`TinyVocab`], read back from a tiny GGUF as a real model's would be.
pub fn tiny_tokenizer() -> crate::llm::TextTokenizer {
    let dir = tempfile_dir();
    let path = dir.join("vocab.gguf");
    let config = tiny_config(Architecture::Llama, 272, true);
    let weights = random_weights(&config, 0);
    write_gguf(
        &path,
        &config,
        &weights,
        &TinyVocab::new(),
        GgmlDType::Q8_0,
        None,
    )
    .expect("writing a tiny GGUF");
    let tokenizer = crate::llm::GgufFile::open(&path)
        .and_then(|gguf| crate::llm::TextTokenizer::from_gguf(&gguf))
        .expect("reading the tiny tokenizer");
    let _ = std::fs::remove_dir_all(&dir);
    tokenizer
}

/// A fresh directory under the system temp dir (tempfile is only a dev-dependency).
fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pipe-tiny-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    dir
}

impl Default for TinyVocab {
    fn default() -> Self {
        TinyVocab::new()
    }
}

/// Writes `weights` as a GGUF the way llama.cpp's converter would for `config`: llama.cpp
/// names, q/k rows permuted for the `llama` architecture, 2-D weights in `dtype` (norms and
/// biases stay f32), `output.weight` only when untied, and tokenizer + template metadata.
pub fn write_gguf(
    path: &Path,
    config: &ModelConfig,
    weights: &ModelWeights,
    vocab: &TinyVocab,
    dtype: GgmlDType,
    chat_template: Option<&str>,
) -> candle_core::Result<()> {
    let arch = gguf_architecture_name(config.architecture);
    let mut qtensors: Vec<(String, QTensor)> = Vec::new();
    for name in weights.names() {
        let tensor = weights.get(name).expect("listed name");
        let gguf_name = gguf_tensor_name(name, config.architecture)
            .ok_or_else(|| candle_core::Error::Msg(format!("no GGUF name for {name}")))?;
        let tensor = match permuted_heads(arch, name, config) {
            Some(heads) => permute_rows(tensor, heads, true)?,
            None => tensor.clone(),
        };
        let tensor = to_llama_cpp_norm(name, tensor, config.architecture)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let tensor_dtype = if tensor.rank() == 2 {
            dtype
        } else {
            GgmlDType::F32
        };
        qtensors.push((gguf_name, QTensor::quantize(&tensor, tensor_dtype)?));
    }
    let metadata = gguf_metadata(arch, config, vocab, chat_template);
    let metadata_refs: Vec<(&str, &Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> =
        qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path)?;
    gguf_file::write(&mut file, &metadata_refs, &tensor_refs)
}

fn permuted_heads(arch: &str, hf_name: &str, config: &ModelConfig) -> Option<usize> {
    if arch != "llama" {
        return None;
    }
    if hf_name.contains("q_proj") {
        Some(config.num_attention_heads)
    } else if hf_name.contains("k_proj") {
        Some(config.num_key_value_heads)
    } else {
        None
    }
}

fn gguf_metadata(
    arch: &str,
    config: &ModelConfig,
    vocab: &TinyVocab,
    chat_template: Option<&str>,
) -> Vec<(String, Value)> {
    let u32v = |n: usize| Value::U32(n as u32);
    let strings =
        |items: &[String]| Value::Array(items.iter().cloned().map(Value::String).collect());
    let mut m = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        (
            format!("{arch}.block_count"),
            u32v(config.num_hidden_layers),
        ),
        (
            format!("{arch}.context_length"),
            u32v(config.max_position_embeddings),
        ),
        (format!("{arch}.embedding_length"), u32v(config.hidden_size)),
        (
            format!("{arch}.feed_forward_length"),
            u32v(config.intermediate_size),
        ),
        (
            format!("{arch}.attention.head_count"),
            u32v(config.num_attention_heads),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            u32v(config.num_key_value_heads),
        ),
        (
            format!("{arch}.rope.freq_base"),
            Value::F32(config.rope_theta as f32),
        ),
        (
            format!("{arch}.rope.dimension_count"),
            u32v(config.head_dim),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(config.rms_norm_eps as f32),
        ),
        (format!("{arch}.vocab_size"), u32v(config.vocab_size)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strings(&vocab.tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(vocab.token_types.iter().map(|t| Value::I32(*t)).collect()),
        ),
        ("tokenizer.ggml.merges".into(), strings(&vocab.merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ];
    if let Some(template) = chat_template {
        m.push((
            "tokenizer.chat_template".into(),
            Value::String(template.into()),
        ));
    }
    m
}
