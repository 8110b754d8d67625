//! The model's tensors as f32 candle tensors under their HF names, whichever file they came
//! from, and the check that they have exactly the shapes the config implies.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::io::hf_files::{SAFETENSORS_FILE, SAFETENSORS_INDEX};
use crate::llm::model::config::ModelConfig;
use crate::llm::model::family::NormForm;

/// HF-named f32 tensors (`model.embed_tokens.weight`, `model.layers.0.self_attn.q_proj.weight`,
/// ..., `model.norm.weight`, and `lm_head.weight` when the embeddings are untied).
#[derive(Debug, Clone, Default)]
pub struct ModelWeights {
    tensors: HashMap<String, Tensor>,
}

impl ModelWeights {
    /// Wraps tensors that already carry HF names.
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        ModelWeights { tensors }
    }

    /// A tensor by HF name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// A tensor by HF name, or an error naming it.
    pub fn require(&self, name: &str) -> LlmResult<&Tensor> {
        self.get(name)
            .ok_or_else(|| LlmError::tensor(name, "missing from the checkpoint"))
    }

    /// All tensors by HF name (what `candle_nn::VarBuilder::from_tensors` takes).
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// Gives up the map, e.g. to build a `VarBuilder` without copying.
    pub fn into_map(self) -> HashMap<String, Tensor> {
        self.tensors
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Tensor names in sorted order (stable for hashing and for writing files).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Loads the safetensors checkpoint of an HF model directory: `model.safetensors`, or the
    /// shards listed by `model.safetensors.index.json`.
    pub fn from_hf_dir(dir: &Path, device: &Device) -> LlmResult<Self> {
        let files = safetensors_files(dir)?;
        let mut weights = ModelWeights::default();
        for file in files {
            weights.tensors.extend(read_safetensors(&file, device)?);
        }
        Ok(weights)
    }

    /// Loads one safetensors file.
    pub fn from_safetensors(path: &Path, device: &Device) -> LlmResult<Self> {
        Ok(ModelWeights::new(read_safetensors(path, device)?))
    }

    /// Seeded random weights for every tensor of `config` (uniform, std 0.02 as transformers'
    /// `initializer_range`; norms at their identity: 1, or 0 for Gemma's `1 + w`), for
    /// measuring speed on shapes whose checkpoints are not at hand.
    pub fn random(config: &ModelConfig, seed: u64, device: &Device) -> LlmResult<Self> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let identity = match config.architecture.family().norm {
            NormForm::Weight => 1.0f32,
            NormForm::OnePlusWeight => 0.0,
        };
        let bound = 0.02f32 * 3f32.sqrt();
        let mut tensors = HashMap::new();
        for (name, shape) in expected_shapes(config) {
            let count: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with("norm.weight") {
                vec![identity; count]
            } else {
                (0..count)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect()
            };
            let tensor = Tensor::from_vec(values, shape, device)?;
            tensors.insert(name, tensor);
        }
        Ok(ModelWeights::new(tensors))
    }

    /// Makes the tensor set exactly what `config` describes: every expected tensor present with
    /// the expected shape, nothing unexpected. A tied checkpoint that also stores `lm_head`
    /// loses it (the model reads the embedding) and stale `rotary_emb.inv_freq` buffers of old
    /// checkpoints are dropped; anything else unexpected is an error naming the tensor.
    pub fn validate(&mut self, config: &ModelConfig) -> LlmResult<()> {
        if config.tie_word_embeddings {
            self.tensors.remove("lm_head.weight");
        }
        self.tensors
            .retain(|name, _| !name.ends_with(".rotary_emb.inv_freq"));
        check_tensor_count(config, self.tensors.len()).map_err(LlmError::Invalid)?;
        let expected = expected_shapes(config);
        for (name, shape) in &expected {
            let tensor = self.require(name)?;
            if tensor.dims() != shape.as_slice() {
                return Err(LlmError::tensor(
                    name,
                    format!(
                        "expected shape {shape:?} from the config, found {:?}",
                        tensor.dims()
                    ),
                ));
            }
        }
        let mut unexpected: Vec<&str> = self
            .tensors
            .keys()
            .filter(|name| !expected.contains_key(name.as_str()))
            .map(String::as_str)
            .collect();
        unexpected.sort_unstable();
        if let Some(name) = unexpected.first() {
            return Err(LlmError::tensor(
                *name,
                format!(
                    "not part of a {} model with this config ({} unexpected tensors)",
                    config.architecture.model_type(),
                    unexpected.len()
                ),
            ));
        }
        Ok(())
    }
}

/// How many tensors a model with `config` has, or `None` if that overflows.
pub fn expected_tensor_count(config: &ModelConfig) -> Option<usize> {
    let norms = config.architecture.family().layer_norms.len();
    let per_layer = 7 + norms + if config.attention_bias { 3 } else { 0 };
    let outside = 2 + usize::from(!config.tie_word_embeddings);
    config
        .num_hidden_layers
        .checked_mul(per_layer)?
        .checked_add(outside)
}

/// Refuses a config that implies more tensors than the checkpoint holds (`block_count =
/// 4294967295`) before anything is sized by it: the number of layers is only trusted as far
/// as the file backs it.
pub fn check_tensor_count(config: &ModelConfig, present: usize) -> Result<(), String> {
    match expected_tensor_count(config) {
        Some(expected) if expected <= present => Ok(()),
        expected => Err(format!(
            "the config declares {} layers, which need {} tensors; the checkpoint holds {present}",
            config.num_hidden_layers,
            expected.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
        )),
    }
}

/// Every tensor a model with `config` has, with its HF shape (`[out, in]` for linears).
pub fn expected_shapes(config: &ModelConfig) -> BTreeMap<String, Vec<usize>> {
    let h = config.hidden_size;
    let q_rows = config.num_attention_heads * config.head_dim;
    let kv_rows = config.num_key_value_heads * config.head_dim;
    let inter = config.intermediate_size;
    let mut shapes = BTreeMap::new();
    shapes.insert(
        "model.embed_tokens.weight".to_string(),
        vec![config.vocab_size, h],
    );
    shapes.insert("model.norm.weight".to_string(), vec![h]);
    if !config.tie_word_embeddings {
        shapes.insert("lm_head.weight".to_string(), vec![config.vocab_size, h]);
    }
    for layer in 0..config.num_hidden_layers {
        let p = format!("model.layers.{layer}");
        let mut add = |suffix: &str, shape: Vec<usize>| {
            shapes.insert(format!("{p}.{suffix}"), shape);
        };
        for &(slot, name) in config.architecture.family().layer_norms {
            let width = if slot.per_head() { config.head_dim } else { h };
            add(&format!("{name}.weight"), vec![width]);
        }
        add("self_attn.q_proj.weight", vec![q_rows, h]);
        add("self_attn.k_proj.weight", vec![kv_rows, h]);
        add("self_attn.v_proj.weight", vec![kv_rows, h]);
        add("self_attn.o_proj.weight", vec![h, q_rows]);
        if config.attention_bias {
            add("self_attn.q_proj.bias", vec![q_rows]);
            add("self_attn.k_proj.bias", vec![kv_rows]);
            add("self_attn.v_proj.bias", vec![kv_rows]);
        }
        add("mlp.gate_proj.weight", vec![inter, h]);
        add("mlp.up_proj.weight", vec![inter, h]);
        add("mlp.down_proj.weight", vec![h, inter]);
    }
    shapes
}

/// The safetensors files of an HF directory, from the shard index when there is one.
fn safetensors_files(dir: &Path) -> LlmResult<Vec<PathBuf>> {
    let index = dir.join(SAFETENSORS_INDEX);
    if index.is_file() {
        return shard_files(&index, dir);
    }
    let single = dir.join(SAFETENSORS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let hint = if dir.join("pytorch_model.bin").exists() {
        " (only safetensors checkpoints are read; convert pytorch_model.bin with transformers' save_pretrained(safe_serialization=True))"
    } else {
        ""
    };
    Err(LlmError::bad_file(
        dir,
        format!("no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX} in the model directory{hint}"),
    ))
}

/// The distinct shard files named in `model.safetensors.index.json`'s `weight_map`.
pub(crate) fn shard_files(index: &Path, dir: &Path) -> LlmResult<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| LlmError::io(index, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| LlmError::bad_file(index, format!("not valid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| LlmError::MissingField {
            path: index.to_path_buf(),
            field: "weight_map".into(),
        })?;
    let mut files: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    files.sort_unstable();
    files.dedup();
    let mut paths = Vec::with_capacity(files.len());
    for file in files {
        // A shard name is a plain file name; refuse paths that would escape the directory.
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(LlmError::bad_file(
                index,
                format!("shard name `{file}` is not a file name"),
            ));
        }
        paths.push(dir.join(file));
    }
    Ok(paths)
}

/// Reads every tensor of a safetensors file as f32.
fn read_safetensors(path: &Path, device: &Device) -> LlmResult<HashMap<String, Tensor>> {
    let file = File::open(path).map_err(|e| LlmError::io(path, e))?;
    // SAFETY: the map is read-only and dropped before we return; a concurrent writer
    // truncating the file is the only hazard, as for every mmap-based model loader.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LlmError::io(path, e))?;
    tensors_from_bytes(&mmap, path, device)
}

/// Every tensor of the safetensors file content `bytes` as f32; `path` names it in errors.
/// The header (length, offsets, shapes) is checked against `bytes` before anything is read.
pub fn tensors_from_bytes(
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> LlmResult<HashMap<String, Tensor>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        LlmError::bad_file(
            path,
            format!("not a valid safetensors file (truncated or corrupted?): {e}"),
        )
    })?;
    let mut tensors = HashMap::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let tensor = view_to_f32(&name, view.dtype(), view.shape(), view.data(), device)?;
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

/// Converts the little-endian bytes of one tensor to an f32 tensor.
fn view_to_f32(
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    data: &[u8],
    device: &Device,
) -> LlmResult<Tensor> {
    let values: Vec<f32> = match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        other => {
            return Err(LlmError::tensor(
                name,
                format!("dtype {other:?} is not supported (expected f32, f16 or bf16)"),
            ))
        }
    };
    Tensor::from_vec(values, shape, device)
        .and_then(|t| t.to_dtype(DType::F32))
        .map_err(|e| LlmError::tensor(name, e))
}
