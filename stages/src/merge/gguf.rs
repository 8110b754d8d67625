//! Writes a merged model as a llama.cpp GGUF: llama.cpp's tensor names, q/k rows permuted
//! back into GGML's interleaved-RoPE layout (the inverse of what our reader undoes), 2-D
//! weights in f16 or q8_0 (norms and biases f32, as llama.cpp's converter keeps them), and
//! the tokenizer as `tokenizer.ggml.*` metadata: copied from the base GGUF when the base was
//! one, else built from tokenizer.json.

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::llm::gguf::{
    gguf_architecture_name, gguf_tensor_name, llama3_divisors, permute_rows, to_llama_cpp_norm,
    GEMMA3_LOCAL_ROPE_THETA, GEMMA3_SWA_PATTERN,
};
use crate::llm::{
    Architecture, GgufFile, LayerType, LlmError, LlmResult, ModelConfig, RopeScaling, TextTokenizer,
};

/// The element type of a GGUF export (`gguf` in `[merge]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GgufType {
    /// No GGUF.
    #[default]
    None,
    F16,
    /// 8-bit blocks of 32 with an f16 scale: half the size of f16, near-lossless.
    Q8_0,
}

impl GgufType {
    fn ggml(self) -> Option<GgmlDType> {
        match self {
            GgufType::None => None,
            GgufType::F16 => Some(GgmlDType::F16),
            GgufType::Q8_0 => Some(GgmlDType::Q8_0),
        }
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`): MOSTLY_F16 = 1, MOSTLY_Q8_0 = 7.
    fn file_type(self) -> u32 {
        match self {
            GgufType::Q8_0 => 7,
            _ => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgufType::None => "none",
            GgufType::F16 => "f16",
            GgufType::Q8_0 => "q8_0",
        }
    }
}

/// Where the tokenizer metadata comes from.
pub enum TokenizerSource<'a> {
    /// The base model's GGUF: its `tokenizer.ggml.*` keys are copied as they are.
    Gguf(&'a GgufFile),
    /// An HF tokenizer (tokenizer.json); the token types and pre-tokenizer name are derived.
    Hf(&'a TextTokenizer),
}

/// Everything a GGUF is written from.
pub struct GgufExport<'a> {
    pub config: &'a ModelConfig,
    /// HF-named f32 (or any float) tensors.
    pub weights: &'a BTreeMap<String, Tensor>,
    pub tokenizer: TokenizerSource<'a>,
    pub chat_template: Option<&'a str>,
    pub name: &'a str,
    pub dtype: GgufType,
}

/// llama.cpp's token types (`llama_token_type`).
const TYPE_NORMAL: i32 = 1;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;

impl GgufExport<'_> {
    /// Writes the file at `path` (replaced if it exists).
    pub fn write(&self, path: &Path) -> LlmResult<()> {
        let ggml = self
            .dtype
            .ggml()
            .ok_or_else(|| LlmError::Invalid("gguf = \"none\": nothing to write".into()))?;
        check_llama_cpp_runs(self.config)?;
        let arch = gguf_architecture_name(self.config.architecture);
        let tensors = self.tensors(arch, ggml)?;
        let mut metadata = self.model_metadata(arch);
        metadata.extend(self.tokenizer_metadata()?);
        let metadata_refs: Vec<(&str, &Value)> =
            metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> =
            tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let file = std::fs::File::create(path).map_err(|e| LlmError::io(path, e))?;
        let mut out = BufWriter::new(file);
        gguf_file::write(&mut out, &metadata_refs, &tensor_refs)
            .map_err(|e| LlmError::bad_file(path, format!("cannot write the GGUF: {e}")))?;
        std::io::Write::flush(&mut out).map_err(|e| LlmError::io(path, e))
    }

    /// Every tensor under its llama.cpp name, permuted and quantized as the converter does.
    fn tensors(&self, arch: &str, ggml: GgmlDType) -> LlmResult<Vec<(String, QTensor)>> {
        let mut out = Vec::with_capacity(self.weights.len() + 1);
        for (name, tensor) in self.weights {
            let architecture = self.config.architecture;
            let gguf_name = gguf_tensor_name(name, architecture).ok_or_else(|| {
                LlmError::tensor(name, "no llama.cpp name for this tensor".to_string())
            })?;
            let tensor = tensor
                .to_dtype(DType::F32)
                .map_err(|e| LlmError::tensor(name, e))?;
            let tensor = to_llama_cpp_norm(name, tensor, architecture)?;
            let tensor = match permuted_heads(arch, name, self.config) {
                Some(heads) => permute_rows(&tensor, heads, true).map_err(|e| {
                    LlmError::tensor(
                        name,
                        format!("cannot apply llama.cpp's q/k permutation: {e}"),
                    )
                })?,
                None => tensor,
            };
            let dtype = tensor_dtype(&tensor, ggml);
            let q = QTensor::quantize(&tensor, dtype).map_err(|e| {
                LlmError::tensor(name, format!("cannot quantize to {dtype:?}: {e}"))
            })?;
            out.push((gguf_name, q));
        }
        if let Some(RopeScaling::Llama3(scaling)) = &self.config.rope_scaling {
            // Llama-3 GGUFs carry the scaled RoPE as per-frequency divisors.
            let divisors: Vec<f32> =
                llama3_divisors(scaling, self.config.rope_theta, self.config.head_dim)
                    .into_iter()
                    .map(|d| d as f32)
                    .collect();
            let n = divisors.len();
            let t = Tensor::from_vec(divisors, n, &Device::Cpu)
                .and_then(|t| QTensor::quantize(&t, GgmlDType::F32))
                .map_err(|e| LlmError::tensor("rope_freqs.weight", e))?;
            out.push(("rope_freqs.weight".into(), t));
        }
        Ok(out)
    }

    /// `general.*` and `<arch>.*`: what llama.cpp and our reader build the model config from.
    fn model_metadata(&self, arch: &str) -> Vec<(String, Value)> {
        let c = self.config;
        let u32v = |n: usize| Value::U32(n as u32);
        let mut m = vec![
            ("general.architecture".into(), Value::String(arch.into())),
            ("general.name".into(), Value::String(self.name.into())),
            (
                "general.file_type".into(),
                Value::U32(self.dtype.file_type()),
            ),
            ("general.alignment".into(), Value::U32(32)),
            (format!("{arch}.block_count"), u32v(c.num_hidden_layers)),
            (
                format!("{arch}.context_length"),
                u32v(c.max_position_embeddings),
            ),
            (format!("{arch}.embedding_length"), u32v(c.hidden_size)),
            (
                format!("{arch}.feed_forward_length"),
                u32v(c.intermediate_size),
            ),
            (
                format!("{arch}.attention.head_count"),
                u32v(c.num_attention_heads),
            ),
            (
                format!("{arch}.attention.head_count_kv"),
                u32v(c.num_key_value_heads),
            ),
            (format!("{arch}.attention.key_length"), u32v(c.head_dim)),
            (format!("{arch}.attention.value_length"), u32v(c.head_dim)),
            (
                format!("{arch}.rope.freq_base"),
                Value::F32(c.rope_theta as f32),
            ),
            (format!("{arch}.rope.dimension_count"), u32v(c.head_dim)),
            (
                format!("{arch}.attention.layer_norm_rms_epsilon"),
                Value::F32(c.rms_norm_eps as f32),
            ),
            (format!("{arch}.vocab_size"), u32v(c.vocab_size)),
        ];
        match &c.rope_scaling {
            Some(RopeScaling::Llama3(s)) => m.push((
                format!("{arch}.rope.scaling.original_context_length"),
                u32v(s.original_max_position_embeddings),
            )),
            Some(RopeScaling::Linear { factor }) => {
                m.push((
                    format!("{arch}.rope.scaling.type"),
                    Value::String("linear".into()),
                ));
                m.push((
                    format!("{arch}.rope.scaling.factor"),
                    Value::F32(*factor as f32),
                ));
            }
            Some(RopeScaling::Dynamic { .. }) | None => {}
        }
        if c.architecture == Architecture::Gemma3 {
            if let Some(window) = c.sliding_window {
                m.push((format!("{arch}.attention.sliding_window"), u32v(window)));
            }
        }
        m
    }

    /// The `tokenizer.*` keys, with the chat template the pipeline used.
    fn tokenizer_metadata(&self) -> LlmResult<Vec<(String, Value)>> {
        let mut m: Vec<(String, Value)> = match &self.tokenizer {
            TokenizerSource::Gguf(gguf) => gguf
                .content()
                .metadata
                .iter()
                .filter(|(k, _)| k.starts_with("tokenizer.ggml."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            TokenizerSource::Hf(tokenizer) => hf_tokenizer_metadata(tokenizer, self.config)?,
        };
        // Copied metadata comes out of a hash map: sort for a reproducible file.
        m.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(template) = self.chat_template {
            m.push((
                "tokenizer.chat_template".into(),
                Value::String(template.into()),
            ));
        }
        Ok(m)
    }
}

/// Refuses a model llama.cpp would run with different math than transformers: it has no
/// dynamic-NTK rope, and fixes Gemma-3's layer pattern, local rope base and attention scale
/// instead of reading them from the file.
fn check_llama_cpp_runs(c: &ModelConfig) -> LlmResult<()> {
    let refuse = |what: String| {
        Err(LlmError::Invalid(format!(
            "cannot write a GGUF for this {} model: {what}; export the HF directory instead (gguf = \"none\")",
            c.architecture.model_type()
        )))
    };
    if let Some(RopeScaling::Dynamic { .. }) = c.rope_scaling {
        return refuse("llama.cpp has no dynamic-NTK rope scaling".into());
    }
    if c.architecture != Architecture::Gemma3 {
        return Ok(());
    }
    let llama_cpp_types: Vec<LayerType> = (0..c.num_hidden_layers)
        .map(|i| match (i + 1) % GEMMA3_SWA_PATTERN {
            0 => LayerType::FullAttention,
            _ => LayerType::SlidingAttention,
        })
        .collect();
    if c.sliding_window.is_some() && c.resolved_layer_types() != llama_cpp_types {
        return refuse(format!(
            "llama.cpp runs one global layer every {GEMMA3_SWA_PATTERN}, the config's `layer_types` differ"
        ));
    }
    if c.sliding_window.is_some() && c.rope_local_theta != Some(GEMMA3_LOCAL_ROPE_THETA) {
        return refuse(format!(
            "llama.cpp uses rope base {GEMMA3_LOCAL_ROPE_THETA} on sliding-window layers, the config has {:?}",
            c.rope_local_theta
        ));
    }
    let llama_cpp_scalar = if c.num_hidden_layers == 62 {
        (c.hidden_size / c.num_attention_heads) as f64
    } else {
        c.head_dim as f64
    };
    if c.query_pre_attn_scalar
        .is_some_and(|s| s != llama_cpp_scalar)
    {
        return refuse(format!(
            "llama.cpp scales attention by {llama_cpp_scalar}^-1/2, the config's `query_pre_attn_scalar` is {:?}",
            c.query_pre_attn_scalar
        ));
    }
    Ok(())
}

/// llama.cpp's converter permutes q/k rows for the `llama` architecture only.
fn permuted_heads(arch: &str, hf_name: &str, config: &ModelConfig) -> Option<usize> {
    (arch == "llama")
        .then(|| crate::llm::gguf::permuted_heads(hf_name, config))
        .flatten()
}

/// Matrices in the chosen type; vectors (norms, biases) in f32; a matrix whose rows do not
/// split into q8_0's 32-element blocks in f16.
fn tensor_dtype(tensor: &Tensor, ggml: GgmlDType) -> GgmlDType {
    if tensor.rank() != 2 {
        return GgmlDType::F32;
    }
    let cols = tensor.dims()[1];
    if !cols.is_multiple_of(ggml.block_size()) {
        GgmlDType::F16
    } else {
        ggml
    }
}

/// `tokenizer.ggml.*` from an HF byte-level BPE tokenizer, as llama.cpp's converter writes
/// them: tokens by id (padded with `[PAD<id>]` to the embedding rows), their types (special
/// added tokens CONTROL, other added tokens USER_DEFINED), merges as `"a b"`, the
/// pre-tokenizer name and the special ids.
fn hf_tokenizer_metadata(
    tokenizer: &TextTokenizer,
    config: &ModelConfig,
) -> LlmResult<Vec<(String, Value)>> {
    let json: Json = serde_json::from_str(&tokenizer.to_json()?)
        .map_err(|e| LlmError::Tokenizer(format!("cannot re-read the tokenizer JSON: {e}")))?;
    let model = &json["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(LlmError::Tokenizer(format!(
            "GGUF export supports byte-level BPE tokenizers only, not `{}`; set gguf = \"none\"",
            model["type"].as_str().unwrap_or("?")
        )));
    }
    let mut by_id: BTreeMap<usize, (String, i32)> = BTreeMap::new();
    if let Some(vocab) = model["vocab"].as_object() {
        for (token, id) in vocab {
            if let Some(id) = id.as_u64() {
                by_id.insert(id as usize, (token.clone(), TYPE_NORMAL));
            }
        }
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            continue;
        };
        let kind = if added["special"].as_bool().unwrap_or(false) {
            TYPE_CONTROL
        } else {
            TYPE_USER_DEFINED
        };
        by_id.insert(id as usize, (content.to_string(), kind));
    }
    let count = by_id
        .keys()
        .next_back()
        .map_or(0, |last| last + 1)
        .max(config.vocab_size);
    let mut tokens = Vec::with_capacity(count);
    let mut types = Vec::with_capacity(count);
    for id in 0..count {
        let (token, kind) = by_id
            .remove(&id)
            .unwrap_or_else(|| (format!("[PAD{id}]"), TYPE_UNUSED));
        tokens.push(Value::String(token));
        types.push(Value::I32(kind));
    }
    let merges = merges_of(&model["merges"])?;
    let pre = pre_tokenizer_name(&json["pre_tokenizer"])?;
    let special = tokenizer.special();
    let id_of = |t: &Option<String>| t.as_deref().and_then(|t| tokenizer.token_to_id(t));
    let mut m = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(special.add_bos),
        ),
    ];
    let bos = id_of(&special.bos).or(config.bos_token_id);
    let eos = id_of(&special.eos).or(config.eos_token_ids.first().copied());
    let pad = id_of(&special.pad).or(config.pad_token_id);
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", bos),
        ("tokenizer.ggml.eos_token_id", eos),
        ("tokenizer.ggml.padding_token_id", pad),
        ("tokenizer.ggml.unknown_token_id", id_of(&special.unk)),
    ] {
        if let Some(id) = id {
            m.push((key.into(), Value::U32(id)));
        }
    }
    // A second end token in the config (Llama-3's <|eot_id|>) is llama.cpp's end of turn.
    if let Some(eot) = config.eos_token_ids.iter().find(|&&id| Some(id) != eos) {
        m.push(("tokenizer.ggml.eot_token_id".into(), Value::U32(*eot)));
    }
    Ok(m)
}

/// Merges as `"a b"` strings, from either of tokenizer.json's spellings.
fn merges_of(merges: &Json) -> LlmResult<Vec<Value>> {
    let Some(items) = merges.as_array() else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(Value::String(s.clone())),
            Json::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(a), Some(b)) => Ok(Value::String(format!("{a} {b}"))),
                _ => Err(LlmError::Tokenizer(format!("merge {m} is not two strings"))),
            },
            other => Err(LlmError::Tokenizer(format!(
                "merge {other} is neither \"a b\" nor [a, b]"
            ))),
        })
        .collect()
}

/// llama.cpp's `tokenizer.ggml.pre` name for an HF pre-tokenizer (the ones our reader and
/// llama.cpp both know); anything else is refused rather than written with a wrong name.
fn pre_tokenizer_name(pre: &Json) -> LlmResult<&'static str> {
    let parts: Vec<&Json> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Some(_) => vec![pre],
        None => Vec::new(),
    };
    let kinds: Vec<&str> = parts.iter().filter_map(|p| p["type"].as_str()).collect();
    let split_regex = parts
        .iter()
        .find(|p| p["type"] == "Split")
        .and_then(|p| p["pattern"]["Regex"].as_str())
        .unwrap_or("");
    let name = match kinds.as_slice() {
        ["ByteLevel"] if parts[0]["use_regex"].as_bool() != Some(false) => Some("gpt-2"),
        ["Digits", "ByteLevel"] if parts[0]["individual_digits"].as_bool() == Some(true) => {
            Some("smollm")
        }
        ["Split", "ByteLevel"] if split_regex.contains(r"\p{N}{1,3}") => Some("llama-bpe"),
        ["Split", "ByteLevel"] if split_regex.contains(r"|\p{N}|") => Some("qwen2"),
        _ => None,
    };
    name.ok_or_else(|| {
        LlmError::Tokenizer(format!(
            "the pre-tokenizer {pre} has no llama.cpp name pipe knows (gpt-2, smollm, llama-bpe, qwen2); set gguf = \"none\""
        ))
    })
}
