//! Reads a llama.cpp GGUF file as an HF-shaped model: the architecture from its `llama.*`
//! (or `qwen2.*`) metadata, every tensor dequantized to f32 under its HF name, with the
//! q/k row permutation of llama.cpp's converter undone so the model can use HF's RoPE.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::{Device, Tensor};

use super::gguf_header::read_header;
use super::weights::{check_tensor_count, expected_shapes, ModelWeights};
use crate::llm::error::{LlmError, LlmResult};
use crate::llm::model::config::{
    Architecture, LayerType, Llama3Scaling, ModelConfig, RopeScaling, MAX_LAYERS,
};
use crate::llm::model::family::{NormForm, NormSlot};

/// An opened GGUF file: its parsed header (metadata and tensor directory) and a reader
/// positioned anywhere, used to fetch tensor data on demand.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens `path` and parses its header; a truncated or foreign file is a [`LlmError::BadFile`].
    pub fn open(path: &Path) -> LlmResult<Self> {
        let file = File::open(path).map_err(|e| LlmError::io(path, e))?;
        let mut reader = BufReader::new(file);
        // Our reader, not candle's: it checks every count, length, shape and the alignment
        // against the file before allocating (candle divides by a zero alignment).
        let content = read_header(&mut reader).map_err(|e| {
            LlmError::bad_file(
                path,
                format!("not a readable GGUF file (corrupted or truncated?): {e}"),
            )
        })?;
        reader.rewind().map_err(|e| LlmError::io(path, e))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header, for the tokenizer and anything else that reads metadata.
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// A metadata value, if present.
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// `general.architecture` (`llama`, `qwen2`, ...).
    pub fn architecture_name(&self) -> LlmResult<&str> {
        self.string("general.architecture")?
            .ok_or_else(|| self.missing("general.architecture"))
    }

    /// The model's own chat template (`tokenizer.chat_template`), if the file has one.
    pub fn chat_template(&self) -> LlmResult<Option<String>> {
        Ok(self.string("tokenizer.chat_template")?.map(str::to_string))
    }

    /// The architecture description from the metadata and the tensor directory.
    pub fn config(&self) -> LlmResult<ModelConfig> {
        let arch_name = self.architecture_name()?;
        let architecture = gguf_architecture(arch_name)?;
        let key = |suffix: &str| format!("{arch_name}.{suffix}");
        let need = |suffix: &str| -> LlmResult<usize> {
            self.usize(&key(suffix))?
                .ok_or_else(|| self.missing(&key(suffix)))
        };
        let hidden_size = need("embedding_length")?;
        let num_attention_heads = need("attention.head_count")?;
        if num_attention_heads == 0 {
            return Err(self.bad(format!(
                "`{}` must be positive",
                key("attention.head_count")
            )));
        }
        let head_dim = match self.usize(&key("attention.key_length"))? {
            Some(n) => n,
            None => hidden_size / num_attention_heads,
        };
        let intermediate_size = need("feed_forward_length")?;
        let num_hidden_layers = need("block_count")?;
        let default_theta = match architecture {
            Architecture::Gemma3 => 1_000_000.0,
            _ => 10_000.0,
        };
        let rope_theta = self.float(&key("rope.freq_base"))?.unwrap_or(default_theta);
        let vocab_size = match self.usize(&key("vocab_size"))? {
            Some(n) => n,
            None => self.embedding_rows()?,
        };
        let config = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: self
                .usize(&key("attention.head_count_kv"))?
                .unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: self
                .float(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6),
            rope_theta,
            rope_scaling: self.rope_scaling(arch_name, rope_theta, head_dim)?,
            max_position_embeddings: self.usize(&key("context_length"))?.unwrap_or(2048),
            tie_word_embeddings: !self.has_tensor("output.weight"),
            attention_bias: self.has_tensor("blk.0.attn_q.bias"),
            sliding_window: None,
            layer_types: None,
            rope_local_theta: None,
            query_pre_attn_scalar: None,
            bos_token_id: self.u32("tokenizer.ggml.bos_token_id")?,
            eos_token_ids: self.eos_token_ids()?,
            pad_token_id: self.u32("tokenizer.ggml.padding_token_id")?,
        };
        let mut config = config;
        if architecture == Architecture::Gemma3 {
            self.gemma3_attention(&mut config)?;
        }
        config.validate().map_err(|m| self.bad(m))?;
        let tensors = self
            .content
            .tensor_infos
            .keys()
            .filter(|name| !is_ignored_tensor(name))
            .count();
        check_tensor_count(&config, tensors).map_err(|m| self.bad(m))?;
        Ok(config)
    }

    /// Gemma-3's attention as llama.cpp runs it (it stores no pattern, local base or query
    /// scalar): five sliding-window layers (base 1e4) per global one when
    /// `gemma3.attention.sliding_window` is set, scores scaled by `head_dim^-1/2` (by
    /// `(hidden/heads)^-1/2` for the 62-layer 27B).
    fn gemma3_attention(&self, config: &mut ModelConfig) -> LlmResult<()> {
        let window = self
            .usize("gemma3.attention.sliding_window")?
            .filter(|&w| w > 0);
        config.query_pre_attn_scalar = Some(if config.num_hidden_layers == 62 {
            (config.hidden_size / config.num_attention_heads) as f64
        } else {
            config.head_dim as f64
        });
        if let Some(window) = window {
            if config.num_hidden_layers > MAX_LAYERS {
                return Err(self.bad(format!(
                    "`gemma3.block_count` is {}; pipe reads at most {MAX_LAYERS} layers",
                    config.num_hidden_layers
                )));
            }
            config.sliding_window = Some(window);
            config.rope_local_theta = Some(GEMMA3_LOCAL_ROPE_THETA);
            let types: Vec<LayerType> = (0..config.num_hidden_layers)
                .map(|i| match (i + 1) % GEMMA3_SWA_PATTERN {
                    0 => LayerType::FullAttention,
                    _ => LayerType::SlidingAttention,
                })
                .collect();
            let uniform = types.iter().all(|t| *t == LayerType::SlidingAttention);
            config.layer_types = (!uniform).then_some(types);
        }
        if self
            .float("gemma3.final_logit_softcapping")?
            .is_some_and(|v| v != 0.0)
        {
            return Err(self.bad(
                "`gemma3.final_logit_softcapping` is set; pipe implements Gemma-3 without logit soft-capping",
            ));
        }
        Ok(())
    }

    /// Every tensor the config implies is in the directory with its shape, checked before any
    /// tensor data is read.
    fn check_directory(&self, config: &ModelConfig) -> LlmResult<()> {
        check_tensor_count(config, self.content.tensor_infos.len()).map_err(|m| self.bad(m))?;
        for (hf_name, shape) in expected_shapes(config) {
            let Some(gguf_name) = gguf_tensor_name(&hf_name, config.architecture) else {
                continue;
            };
            let Some(info) = self.tensor_info(&gguf_name) else {
                return Err(LlmError::tensor(
                    &gguf_name,
                    format!("missing from {}", self.path.display()),
                ));
            };
            if info.shape.dims() != shape.as_slice() {
                return Err(LlmError::tensor(
                    &gguf_name,
                    format!(
                        "{}: shape {:?}, the metadata implies {shape:?}",
                        self.path.display(),
                        info.shape.dims()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every model tensor dequantized to f32 on `device`, under its HF name.
    pub fn load_weights(
        &mut self,
        config: &ModelConfig,
        device: &Device,
    ) -> LlmResult<ModelWeights> {
        // llama.cpp's converter permutes q/k rows only for the `llama` architecture (its
        // kernels use interleaved RoPE there); qwen2 is stored as HF has it.
        let unpermute = self.architecture_name()? == "llama";
        self.check_directory(config)?;
        let mut names: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        names.sort();
        let mut tensors = HashMap::with_capacity(names.len());
        for gguf_name in names {
            let Some(hf_name) = hf_tensor_name(&gguf_name, config.architecture) else {
                if is_ignored_tensor(&gguf_name) {
                    continue;
                }
                return Err(LlmError::tensor(
                    &gguf_name,
                    format!(
                        "{}: unexpected tensor for a {} model",
                        self.path.display(),
                        config.architecture.model_type()
                    ),
                ));
            };
            let tensor = self.dequantize(&gguf_name, device)?;
            let tensor = match (unpermute, permuted_heads(&hf_name, config)) {
                (true, Some(heads)) => unpermute_rows(&tensor, heads).map_err(|e| {
                    LlmError::tensor(
                        &hf_name,
                        format!("cannot undo llama.cpp's q/k permutation: {e}"),
                    )
                })?,
                _ => tensor,
            };
            let tensor = from_llama_cpp_norm(&hf_name, tensor, config.architecture)?;
            tensors.insert(hf_name, tensor);
        }
        Ok(ModelWeights::new(tensors))
    }

    /// Reads and dequantizes one tensor by its GGUF name.
    pub fn dequantize(&mut self, gguf_name: &str, device: &Device) -> LlmResult<Tensor> {
        let qtensor = self
            .content
            .tensor(&mut self.reader, gguf_name, device)
            .map_err(|e| LlmError::bad_file(&self.path, format!("tensor `{gguf_name}`: {e}")))?;
        qtensor.dequantize(device).map_err(|e| {
            LlmError::tensor(
                gguf_name,
                format!("cannot dequantize {:?}: {e}", qtensor.dtype()),
            )
        })
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.content.tensor_infos.get(name)
    }

    fn embedding_rows(&self) -> LlmResult<usize> {
        self.tensor_info("token_embd.weight")
            .and_then(|info| info.shape.dims().first().copied())
            .ok_or_else(|| {
                LlmError::tensor(
                    "token_embd.weight",
                    format!("missing from {}", self.path.display()),
                )
            })
    }

    /// Llama-3 GGUFs carry the scaled frequencies as a `rope_freqs.weight` tensor of divisors
    /// instead of the `rope_scaling` parameters; recover the parameters and check they
    /// reproduce the tensor, so an unusual scaling is refused rather than ignored.
    fn rope_scaling(
        &self,
        arch: &str,
        theta: f64,
        head_dim: usize,
    ) -> LlmResult<Option<RopeScaling>> {
        if !self.has_tensor("rope_freqs.weight") {
            return self.rope_scaling_keys(arch);
        }
        let divisors = {
            let mut file = File::open(&self.path).map_err(|e| LlmError::io(&self.path, e))?;
            let qtensor = self
                .content
                .tensor(&mut file, "rope_freqs.weight", &Device::Cpu)
                .map_err(|e| {
                    LlmError::bad_file(&self.path, format!("tensor `rope_freqs.weight`: {e}"))
                })?;
            qtensor
                .dequantize(&Device::Cpu)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(|e| LlmError::tensor("rope_freqs.weight", e))?
        };
        let original = self
            .usize(&format!("{arch}.rope.scaling.original_context_length"))?
            .unwrap_or(8192);
        fit_llama3_rope(&divisors, theta, head_dim, original)
            .map(|s| Some(RopeScaling::Llama3(s)))
            .ok_or_else(|| {
                self.bad("`rope_freqs.weight` does not match Llama-3 rope scaling; this rope scaling is not supported")
            })
    }

    /// `<arch>.rope.scaling.type` and `.factor`, as llama.cpp's converter writes linear
    /// scaling (deepseek-coder); other types are refused by name.
    fn rope_scaling_keys(&self, arch: &str) -> LlmResult<Option<RopeScaling>> {
        let type_key = format!("{arch}.rope.scaling.type");
        let factor_key = format!("{arch}.rope.scaling.factor");
        match self.string(&type_key)? {
            None | Some("none") => Ok(None),
            Some("linear") => {
                let factor = self
                    .float(&factor_key)?
                    .ok_or_else(|| self.missing(&factor_key))?;
                Ok((factor != 1.0).then_some(RopeScaling::Linear { factor }))
            }
            Some(other) => Err(self.bad(format!(
                "`{type_key}` is `{other}`; pipe reads linear scaling and llama3's rope_freqs"
            ))),
        }
    }

    /// `eos_token_id`, plus the end-of-turn token when the file names a different one
    /// (Llama-3 chat models stop on `<|eot_id|>`).
    fn eos_token_ids(&self) -> LlmResult<Vec<u32>> {
        let mut ids = Vec::new();
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
            if let Some(id) = self.u32(key)? {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    fn missing(&self, key: &str) -> LlmError {
        LlmError::MissingField {
            path: self.path.clone(),
            field: key.to_string(),
        }
    }

    fn bad(&self, message: impl std::fmt::Display) -> LlmError {
        LlmError::bad_file(&self.path, message)
    }

    /// A string metadata value; present with another type is an error naming the key.
    pub fn string(&self, key: &str) -> LlmResult<Option<&str>> {
        match self.metadata(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.bad(format!("metadata `{key}` must be a string"))),
        }
    }

    /// An integer metadata value of any width.
    pub fn usize(&self, key: &str) -> LlmResult<Option<usize>> {
        self.metadata(key)
            .map(|v| {
                value_as_usize(v).ok_or_else(|| {
                    self.bad(format!("metadata `{key}` must be a non-negative integer"))
                })
            })
            .transpose()
    }

    /// A token id metadata value.
    pub fn u32(&self, key: &str) -> LlmResult<Option<u32>> {
        Ok(self.usize(key)?.and_then(|n| u32::try_from(n).ok()))
    }

    /// A boolean metadata value.
    pub fn bool(&self, key: &str) -> LlmResult<Option<bool>> {
        match self.metadata(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.bad(format!("metadata `{key}` must be a boolean"))),
        }
    }

    /// A float metadata value (f32 or f64 in the file).
    pub fn float(&self, key: &str) -> LlmResult<Option<f64>> {
        match self.metadata(key) {
            None => Ok(None),
            // The shortest decimal that round-trips the f32 (1e-5, not 9.999999747378752e-6):
            // what the HF config held before conversion, and what an export should write.
            Some(Value::F32(v)) => Ok(Some(v.to_string().parse().unwrap_or(f64::from(*v)))),
            Some(Value::F64(v)) => Ok(Some(*v)),
            Some(v) => value_as_usize(v)
                .map(|n| Some(n as f64))
                .ok_or_else(|| self.bad(format!("metadata `{key}` must be a number"))),
        }
    }
}

/// Any integer GGUF value that fits a usize.
pub(crate) fn value_as_usize(value: &Value) -> Option<usize> {
    match *value {
        Value::U8(v) => Some(usize::from(v)),
        Value::U16(v) => Some(usize::from(v)),
        Value::U32(v) => usize::try_from(v).ok(),
        Value::U64(v) => usize::try_from(v).ok(),
        Value::I8(v) => usize::try_from(v).ok(),
        Value::I16(v) => usize::try_from(v).ok(),
        Value::I32(v) => usize::try_from(v).ok(),
        Value::I64(v) => usize::try_from(v).ok(),
        _ => None,
    }
}

/// Tensors a GGUF may carry that are not weights of the HF model.
fn is_ignored_tensor(gguf_name: &str) -> bool {
    // rope_freqs is turned into `rope_scaling` by `GgufFile::config`.
    gguf_name == "rope_freqs.weight"
}

/// The architecture of a GGUF's `general.architecture`.
pub fn gguf_architecture(name: &str) -> LlmResult<Architecture> {
    match name {
        "llama" => Ok(Architecture::Llama),
        "qwen2" => Ok(Architecture::Qwen2),
        "qwen3" => Ok(Architecture::Qwen3),
        "gemma3" => Ok(Architecture::Gemma3),
        other => Err(LlmError::UnsupportedArchitecture(other.to_string())),
    }
}

/// llama.cpp's `general.architecture` for a model: Mistral is written as `llama`.
pub fn gguf_architecture_name(architecture: Architecture) -> &'static str {
    match architecture {
        Architecture::Llama | Architecture::Mistral => "llama",
        Architecture::Qwen2 => "qwen2",
        Architecture::Qwen3 => "qwen3",
        Architecture::Gemma3 => "gemma3",
    }
}

/// llama.cpp runs Gemma-3 with five sliding-window layers per global one...
pub(crate) const GEMMA3_SWA_PATTERN: usize = 6;
/// ...and the sliding-window layers with rope base 1e4.
pub(crate) const GEMMA3_LOCAL_ROPE_THETA: f64 = 10_000.0;

/// The projections' llama.cpp names.
const PROJECTIONS: &[(&str, &str)] = &[
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// The HF name of a llama.cpp tensor of an `architecture` model
/// (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`; a norm maps by its
/// role, so Gemma's `blk.3.ffn_norm` is `pre_feedforward_layernorm`).
pub fn hf_tensor_name(gguf_name: &str, architecture: Architecture) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let family = architecture.family();
    let hf_module = PROJECTIONS
        .iter()
        .find(|(_, g)| *g == module)
        .map(|(hf, _)| *hf)
        .or_else(|| {
            family
                .layer_norms
                .iter()
                .find(|(slot, _)| slot.gguf_name() == module)
                .map(|(_, hf)| *hf)
        })?;
    Some(format!("model.layers.{layer}.{hf_module}.{kind}"))
}

/// The llama.cpp tensor name of an HF tensor, the inverse of [`hf_tensor_name`].
pub fn gguf_tensor_name(hf_name: &str, architecture: Architecture) -> Option<String> {
    match hf_name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let gguf_module = PROJECTIONS
        .iter()
        .find(|(hf, _)| *hf == module)
        .map(|(_, g)| *g)
        .or_else(|| {
            architecture
                .family()
                .slot_of(module)
                .map(NormSlot::gguf_name)
        })?;
    Some(format!("blk.{layer}.{gguf_module}.{kind}"))
}

/// Whether an HF tensor is a norm weight that llama.cpp stores as applied (`1 + w`) for
/// `architecture`: its converter adds one to every Gemma `*norm.weight`.
fn shifted_norm(hf_name: &str, architecture: Architecture) -> bool {
    architecture.family().norm == NormForm::OnePlusWeight && hf_name.ends_with("norm.weight")
}

/// A tensor read from a GGUF, in HF's form: Gemma's norms lose the one llama.cpp added.
fn from_llama_cpp_norm(
    hf_name: &str,
    tensor: Tensor,
    architecture: Architecture,
) -> LlmResult<Tensor> {
    if shifted_norm(hf_name, architecture) {
        Ok((tensor - 1.0).map_err(|e| LlmError::tensor(hf_name, e))?)
    } else {
        Ok(tensor)
    }
}

/// A tensor about to be written to a GGUF, in llama.cpp's form (Gemma's norms plus one).
pub fn to_llama_cpp_norm(
    hf_name: &str,
    tensor: Tensor,
    architecture: Architecture,
) -> LlmResult<Tensor> {
    if shifted_norm(hf_name, architecture) {
        Ok((tensor + 1.0).map_err(|e| LlmError::tensor(hf_name, e))?)
    } else {
        Ok(tensor)
    }
}

/// How many heads a permuted tensor is grouped in: q_proj by the attention heads, k_proj by
/// the key/value heads (as llama.cpp's `permute(w, n_head, n_head_kv)`); `None` otherwise.
pub fn permuted_heads(hf_name: &str, config: &ModelConfig) -> Option<usize> {
    if hf_name.contains(".self_attn.q_proj.") {
        Some(config.num_attention_heads)
    } else if hf_name.contains(".self_attn.k_proj.") {
        Some(config.num_key_value_heads)
    } else {
        None
    }
}

/// Undoes llama.cpp's `permute`: within each head, the converter reorders the rows
/// `[h, j, i]` (j = first/second half, i < head_dim/2, HF's rotate_half layout) into
/// `[h, i, j]` (pairs adjacent, the interleaved layout of GGML's RoPE). Works for
/// weights `[rows, in]` and biases `[rows]`.
pub fn unpermute_rows(tensor: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    permute_rows(tensor, heads, false)
}

/// llama.cpp's converter permutation (HF layout → GGUF layout); used to write GGUFs in tests
/// and to check that [`unpermute_rows`] is its inverse.
pub fn permute_rows(tensor: &Tensor, heads: usize, to_gguf: bool) -> candle_core::Result<Tensor> {
    let dims = tensor.dims().to_vec();
    let Some(&rows) = dims.first() else {
        candle_core::bail!("a scalar cannot be split into heads");
    };
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        candle_core::bail!("{rows} rows cannot be split into {heads} heads of pairs");
    }
    let half = rows / heads / 2;
    let rest: usize = dims[1..].iter().product();
    // GGUF → HF reads the rows as [h, half, 2] and swaps the last two; HF → GGUF the reverse.
    let grouped = if to_gguf {
        tensor.reshape((heads, 2, half, rest))?
    } else {
        tensor.reshape((heads, half, 2, rest))?
    };
    grouped.transpose(1, 2)?.contiguous()?.reshape(dims)
}

/// Finds the Llama-3 `rope_scaling` whose frequency divisors equal `divisors` (the
/// `rope_freqs.weight` of a GGUF), trying the published low/high frequency factors.
fn fit_llama3_rope(
    divisors: &[f32],
    theta: f64,
    head_dim: usize,
    original: usize,
) -> Option<Llama3Scaling> {
    let factor = divisors.iter().copied().fold(f32::MIN, f32::max) as f64;
    if divisors.len() != head_dim / 2 || factor < 1.0 {
        return None;
    }
    [(1.0, 4.0)].into_iter().find_map(|(low, high)| {
        let scaling = Llama3Scaling {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings: original,
        };
        let expected = llama3_divisors(&scaling, theta, head_dim);
        let close = expected
            .iter()
            .zip(divisors)
            .all(|(e, d)| (e - f64::from(*d)).abs() <= 1e-3 * e.abs().max(1.0));
        close.then_some(scaling)
    })
}

/// transformers' `_compute_llama3_parameters`, expressed as the divisor of each base frequency.
pub(crate) fn llama3_divisors(scaling: &Llama3Scaling, theta: f64, head_dim: usize) -> Vec<f64> {
    let original = scaling.original_max_position_embeddings as f64;
    let low_wavelen = original / scaling.low_freq_factor;
    let high_wavelen = original / scaling.high_freq_factor;
    (0..head_dim / 2)
        .map(|i| {
            let inv_freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                scaling.factor
            } else {
                let smooth = (original / wavelen - scaling.low_freq_factor)
                    / (scaling.high_freq_factor - scaling.low_freq_factor);
                1.0 / ((1.0 - smooth) / scaling.factor + smooth)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "token_embd.weight",
            "output_norm.weight",
            "output.weight",
            "blk.0.attn_q.weight",
            "blk.12.attn_k.bias",
            "blk.29.ffn_down.weight",
            "blk.3.attn_norm.weight",
            "blk.3.ffn_norm.weight",
        ] {
            let hf = hf_tensor_name(name, Architecture::Llama).unwrap();
            assert_eq!(
                gguf_tensor_name(&hf, Architecture::Llama).as_deref(),
                Some(name)
            );
        }
        assert_eq!(
            hf_tensor_name("blk.7.attn_output.weight", Architecture::Llama).as_deref(),
            Some("model.layers.7.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_tensor_name("blk.x.attn_q.weight", Architecture::Llama),
            None
        );
        assert_eq!(
            hf_tensor_name("blk.1.attn_q_norm.weight", Architecture::Llama),
            None
        );
    }

    /// Norms map by role: llama.cpp's `ffn_norm` is Llama's `post_attention_layernorm` but
    /// Gemma's `pre_feedforward_layernorm`; Gemma's `post_attention_layernorm` is
    /// `post_attention_norm`.
    #[test]
    fn norm_names_follow_the_family() {
        let cases = [
            (
                Architecture::Qwen3,
                "blk.2.attn_q_norm.weight",
                "model.layers.2.self_attn.q_norm.weight",
            ),
            (
                Architecture::Qwen3,
                "blk.2.attn_k_norm.weight",
                "model.layers.2.self_attn.k_norm.weight",
            ),
            (
                Architecture::Qwen3,
                "blk.2.ffn_norm.weight",
                "model.layers.2.post_attention_layernorm.weight",
            ),
            (
                Architecture::Gemma3,
                "blk.0.ffn_norm.weight",
                "model.layers.0.pre_feedforward_layernorm.weight",
            ),
            (
                Architecture::Gemma3,
                "blk.0.post_attention_norm.weight",
                "model.layers.0.post_attention_layernorm.weight",
            ),
            (
                Architecture::Gemma3,
                "blk.0.post_ffw_norm.weight",
                "model.layers.0.post_feedforward_layernorm.weight",
            ),
            (
                Architecture::Gemma3,
                "blk.0.attn_norm.weight",
                "model.layers.0.input_layernorm.weight",
            ),
        ];
        for (arch, gguf, hf) in cases {
            assert_eq!(hf_tensor_name(gguf, arch).as_deref(), Some(hf), "{gguf}");
            assert_eq!(gguf_tensor_name(hf, arch).as_deref(), Some(gguf), "{hf}");
        }
        assert_eq!(
            hf_tensor_name("blk.0.post_ffw_norm.weight", Architecture::Qwen3),
            None
        );
    }

    /// The permutation as llama.cpp's convert_hf_to_gguf.py writes it, on explicit indices:
    /// `w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)`.
    #[test]
    fn permutation_matches_llama_cpp_and_is_inverted() {
        let heads = 2;
        let rows = 8; // head_dim 4: half = 2
        let hf = Tensor::arange(0f32, (rows * 3) as f32, &Device::Cpu)
            .unwrap()
            .reshape((rows, 3))
            .unwrap();
        let gguf = permute_rows(&hf, heads, true).unwrap();
        let first_col: Vec<f32> = gguf
            .narrow(1, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // head 0 rows [0,1 | 2,3] interleave to 0,2,1,3; head 1 rows [4,5 | 6,7] to 4,6,5,7.
        let expected_rows = [0, 2, 1, 3, 4, 6, 5, 7];
        let expected: Vec<f32> = expected_rows.iter().map(|r| (r * 3) as f32).collect();
        assert_eq!(first_col, expected);
        let back = unpermute_rows(&gguf, heads).unwrap();
        let diff = (back - &hf)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
        let bias = Tensor::arange(0f32, rows as f32, &Device::Cpu).unwrap();
        let round = unpermute_rows(&permute_rows(&bias, heads, true).unwrap(), heads).unwrap();
        assert_eq!(
            round.to_vec1::<f32>().unwrap(),
            bias.to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn llama3_rope_divisors_are_refitted() {
        let scaling = Llama3Scaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let divisors: Vec<f32> = llama3_divisors(&scaling, 500_000.0, 64)
            .into_iter()
            .map(|d| d as f32)
            .collect();
        let fitted = fit_llama3_rope(&divisors, 500_000.0, 64, 8192).unwrap();
        assert!((fitted.factor - 32.0).abs() < 1e-4);
        assert_eq!(fitted.original_max_position_embeddings, 8192);
        let mut odd = divisors.clone();
        odd[10] = 2.5;
        assert!(fit_llama3_rope(&odd, 500_000.0, 64, 8192).is_none());
    }

    /// GGML's RoPE for `llama` rotates adjacent pairs (x[2i], x[2i+1]); HF's rotate_half
    /// rotates (x[i], x[i + d/2]), both by pos·θ^(-2i/d).
    fn rope_pairs(v: &mut [f32], pos: usize, theta: f64, interleaved: bool) {
        let d = v.len();
        for i in 0..d / 2 {
            let angle = pos as f64 * theta.powf(-((2 * i) as f64) / d as f64);
            let (sin, cos) = angle.sin_cos();
            let (a, b) = if interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + d / 2)
            };
            let (x, y) = (f64::from(v[a]), f64::from(v[b]));
            v[a] = (x * cos - y * sin) as f32;
            v[b] = (x * sin + y * cos) as f32;
        }
    }

    /// Attention scores q(t)·k(s) of every query head against its key/value head.
    fn attention_scores(
        x: &Tensor,
        wq: &Tensor,
        wk: &Tensor,
        config: &ModelConfig,
        interleaved: bool,
    ) -> Vec<f32> {
        let hd = config.head_dim;
        let q = x
            .matmul(&wq.t().unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let k = x
            .matmul(&wk.t().unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let group = config.num_attention_heads / config.num_key_value_heads;
        let mut scores = Vec::new();
        for h in 0..config.num_attention_heads {
            let kv = h / group;
            for (t, q_row) in q.iter().enumerate() {
                let mut qh = q_row[h * hd..(h + 1) * hd].to_vec();
                rope_pairs(&mut qh, t, config.rope_theta, interleaved);
                for (s, k_row) in k.iter().enumerate() {
                    let mut kh = k_row[kv * hd..(kv + 1) * hd].to_vec();
                    rope_pairs(&mut kh, s, config.rope_theta, interleaved);
                    scores.push(qh.iter().zip(&kh).map(|(a, b)| a * b).sum());
                }
            }
        }
        scores
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// The real check of the un-permutation: the attention scores llama.cpp computes (GGUF
    /// rows as stored, interleaved RoPE) equal the scores of our tensors under HF's
    /// rotate_half RoPE, on the SmolLM2 weights and random inputs; with the rows left
    /// permuted, HF's RoPE gives different scores (so the check can fail).
    #[test]
    fn unpermuted_qk_under_hf_rope_match_gguf_qk_under_ggml_rope() {
        let model = crate::llm::testing::smollm2_model();
        let mut gguf = GgufFile::open(&crate::llm::testing::smollm2_gguf_path()).unwrap();
        let config = &model.config;
        let x = Tensor::randn(0f32, 1.0, (6, config.hidden_size), &Device::Cpu).unwrap();
        for layer in [0, 17, 29] {
            let raw_q = gguf
                .dequantize(&format!("blk.{layer}.attn_q.weight"), &Device::Cpu)
                .unwrap();
            let raw_k = gguf
                .dequantize(&format!("blk.{layer}.attn_k.weight"), &Device::Cpu)
                .unwrap();
            let hf_q = model
                .weights
                .require(&format!("model.layers.{layer}.self_attn.q_proj.weight"))
                .unwrap();
            let hf_k = model
                .weights
                .require(&format!("model.layers.{layer}.self_attn.k_proj.weight"))
                .unwrap();
            let ggml = attention_scores(&x, &raw_q, &raw_k, config, true);
            let ours = attention_scores(&x, hf_q, hf_k, config, false);
            let scale = ggml.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                max_abs_diff(&ggml, &ours) <= 1e-4 * scale.max(1.0),
                "layer {layer}"
            );
            let wrong = attention_scores(&x, &raw_q, &raw_k, config, false);
            assert!(
                max_abs_diff(&ggml, &wrong) > 1e-2 * scale,
                "layer {layer}: check is insensitive"
            );
        }
    }

    use crate::llm::testing::{random_weights, tiny_config, write_gguf, TinyVocab};
    use crate::llm::text::tokenizer::TextTokenizer;
    use candle_core::quantized::GgmlDType;

    const VOCAB_ROWS: usize = 272;

    fn written(
        arch: Architecture,
        tied: bool,
        dtype: GgmlDType,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        ModelConfig,
        ModelWeights,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let config = tiny_config(arch, VOCAB_ROWS, tied);
        let weights = random_weights(&config, 7);
        write_gguf(
            &path,
            &config,
            &weights,
            &TinyVocab::new(),
            dtype,
            Some("{{ messages }}"),
        )
        .unwrap();
        (dir, path, config, weights)
    }

    fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = b
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        diff / scale
    }

    /// A GGUF written as llama.cpp's converter does (names, permuted q/k) loads back to the
    /// exact HF tensors and config, tied and untied, llama (permuted) and qwen2 (not, biases).
    #[test]
    fn f32_gguf_round_trips_to_hf_tensors() {
        for (arch, tied) in [
            (Architecture::Llama, false),
            (Architecture::Llama, true),
            (Architecture::Qwen2, true),
        ] {
            let (_dir, path, config, weights) = written(arch, tied, GgmlDType::F32);
            let mut gguf = GgufFile::open(&path).unwrap();
            let loaded_config = gguf.config().unwrap();
            assert_eq!(loaded_config, config, "{arch:?} tied={tied}");
            let mut loaded = gguf.load_weights(&loaded_config, &Device::Cpu).unwrap();
            loaded.validate(&loaded_config).unwrap();
            assert_eq!(loaded.names(), weights.names());
            for name in weights.names() {
                let diff = relative_error(loaded.get(name).unwrap(), weights.get(name).unwrap());
                assert_eq!(diff, 0.0, "{name} ({arch:?})");
            }
            assert_eq!(
                gguf.chat_template().unwrap().as_deref(),
                Some("{{ messages }}")
            );
        }
    }

    /// Every quantization we claim dequantizes to (close to) the original values.
    #[test]
    fn quantized_ggufs_dequantize_close_to_the_original() {
        let cases = [
            (GgmlDType::F16, 1e-3),
            (GgmlDType::BF16, 1e-2),
            (GgmlDType::Q8_0, 1e-2),
            (GgmlDType::Q6K, 3e-2),
            (GgmlDType::Q5_0, 6e-2),
            (GgmlDType::Q4_0, 0.12),
            (GgmlDType::Q4_1, 0.1),
            (GgmlDType::Q4K, 0.1),
        ];
        for (dtype, tolerance) in cases {
            let (_dir, path, config, weights) = written(Architecture::Llama, false, dtype);
            let mut gguf = GgufFile::open(&path).unwrap();
            let loaded = gguf.load_weights(&config, &Device::Cpu).unwrap();
            for name in [
                "model.layers.1.self_attn.q_proj.weight",
                "model.layers.0.self_attn.k_proj.weight",
                "lm_head.weight",
                "model.layers.1.mlp.down_proj.weight",
            ] {
                let err = relative_error(loaded.get(name).unwrap(), weights.get(name).unwrap());
                assert!(err < tolerance, "{dtype:?} {name}: relative error {err}");
            }
        }
    }

    #[test]
    fn corrupted_ggufs_are_clear_errors() {
        let (dir, path, config, _) = written(Architecture::Llama, true, GgmlDType::Q8_0);
        let bytes = std::fs::read(&path).unwrap();

        let bad_magic = dir.path().join("magic.gguf");
        let mut flipped = bytes.clone();
        flipped[..4].copy_from_slice(b"GGML");
        std::fs::write(&bad_magic, &flipped).unwrap();
        let err = GgufFile::open(&bad_magic).unwrap_err().to_string();
        assert!(
            err.contains("magic.gguf") && err.contains("not a readable GGUF"),
            "{err}"
        );

        for keep in [10, 2000, bytes.len() - 100] {
            let truncated = dir.path().join(format!("cut{keep}.gguf"));
            std::fs::write(&truncated, &bytes[..keep]).unwrap();
            let result =
                GgufFile::open(&truncated).and_then(|mut g| g.load_weights(&config, &Device::Cpu));
            let err = result.unwrap_err().to_string();
            assert!(err.contains(&format!("cut{keep}.gguf")), "{err}");
        }
    }

    fn gguf_with_metadata(dir: &Path, metadata: &[(&str, Value)]) -> PathBuf {
        let path = dir.join("meta.gguf");
        let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let mut file = File::create(&path).unwrap();
        candle_core::quantized::gguf_file::write(&mut file, &refs, &[]).unwrap();
        path
    }

    #[test]
    fn unsupported_or_incomplete_gguf_metadata_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = gguf_with_metadata(
            dir.path(),
            &[("general.architecture", Value::String("gpt2".into()))],
        );
        let err = GgufFile::open(&path).unwrap().config().unwrap_err();
        assert!(
            matches!(&err, LlmError::UnsupportedArchitecture(a) if a == "gpt2"),
            "{err}"
        );

        let path = gguf_with_metadata(
            dir.path(),
            &[
                ("general.architecture", Value::String("llama".into())),
                ("llama.embedding_length", Value::U32(64)),
                ("llama.attention.head_count", Value::U32(4)),
            ],
        );
        let err = GgufFile::open(&path)
            .unwrap()
            .config()
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("meta.gguf: missing required field `llama.feed_forward_length`"),
            "{err}"
        );

        let path = gguf_with_metadata(
            dir.path(),
            &[("tokenizer.ggml.model", Value::String("t5".into()))],
        );
        let err = TextTokenizer::from_gguf(&GgufFile::open(&path).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`tokenizer.ggml.model` = `t5` is not supported"),
            "{err}"
        );
    }
}
