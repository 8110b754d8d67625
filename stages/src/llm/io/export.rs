//! Writes a model as an HF directory that transformers (and pipe itself) load:
//! model.safetensors in f32/bf16/f16, config.json, tokenizer.json, tokenizer_config.json
//! with the chat template, and generation_config.json.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use candle_core::Tensor;
use safetensors::{Dtype, View};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::io::hf_files::{
    CONFIG_FILE, GENERATION_CONFIG_FILE, SAFETENSORS_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
};
use crate::llm::io::loader::LoadedModel;
use crate::llm::io::weights::ModelWeights;
use crate::llm::model::config::ModelConfig;
use crate::llm::text::tokenizer::TextTokenizer;

/// The element type of exported weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportDtype {
    F32,
    /// Half the size of f32 with its range; what most HF checkpoints use.
    #[default]
    Bf16,
    F16,
}

impl ExportDtype {
    /// transformers' name for it in config.json (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            ExportDtype::F32 => "float32",
            ExportDtype::Bf16 => "bfloat16",
            ExportDtype::F16 => "float16",
        }
    }

    fn safetensors_dtype(self) -> Dtype {
        match self {
            ExportDtype::F32 => Dtype::F32,
            ExportDtype::Bf16 => Dtype::BF16,
            ExportDtype::F16 => Dtype::F16,
        }
    }

    /// Little-endian bytes of `values` in this type.
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            ExportDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ExportDtype::Bf16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            ExportDtype::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }
}

impl FromStr for ExportDtype {
    type Err = LlmError;
    fn from_str(s: &str) -> LlmResult<Self> {
        match s {
            "f32" | "float32" => Ok(ExportDtype::F32),
            "bf16" | "bfloat16" => Ok(ExportDtype::Bf16),
            "f16" | "float16" => Ok(ExportDtype::F16),
            other => Err(LlmError::Invalid(format!(
                "unknown dtype `{other}`: use f32, bf16 or f16"
            ))),
        }
    }
}

/// Everything an HF model directory is written from.
#[derive(Debug, Clone, Copy)]
pub struct HfExport<'a> {
    pub config: &'a ModelConfig,
    pub weights: &'a ModelWeights,
    pub tokenizer: &'a TextTokenizer,
    /// Saved as `chat_template` in tokenizer_config.json.
    pub chat_template: Option<&'a str>,
    pub dtype: ExportDtype,
}

impl<'a> HfExport<'a> {
    /// Exports a loaded model as it is (e.g. a GGUF as an HF directory).
    pub fn from_model(model: &'a LoadedModel, dtype: ExportDtype) -> Self {
        HfExport {
            config: &model.config,
            weights: &model.weights,
            tokenizer: &model.tokenizer,
            chat_template: model.chat_template.as_deref(),
            dtype,
        }
    }

    /// Writes the directory `dir` (created if needed; existing files are replaced). The
    /// weights are checked against the config first so a wrong model is never written.
    pub fn write(&self, dir: &Path) -> LlmResult<()> {
        let mut weights = self.weights.clone();
        weights.validate(self.config)?;
        std::fs::create_dir_all(dir).map_err(|e| LlmError::io(dir, e))?;
        let names = weights.names();
        let tensors: Vec<(&str, &Tensor)> = names
            .iter()
            .map(|name| Ok((*name, weights.require(name)?)))
            .collect::<LlmResult<_>>()?;
        write_safetensors(&dir.join(SAFETENSORS_FILE), &tensors, self.dtype)?;
        write_json(
            &dir.join(CONFIG_FILE),
            &self.config.to_hf_json(self.dtype.torch_name()),
        )?;
        let tokenizer_json = self.tokenizer.to_json()?;
        let path = dir.join(TOKENIZER_FILE);
        std::fs::write(&path, tokenizer_json).map_err(|e| LlmError::io(path, e))?;
        write_json(&dir.join(TOKENIZER_CONFIG_FILE), &self.tokenizer_config())?;
        write_json(
            &dir.join(GENERATION_CONFIG_FILE),
            &generation_config(self.config),
        )?;
        Ok(())
    }

    /// tokenizer_config.json: the special tokens by text, the chat template, and the fast
    /// tokenizer class (tokenizer.json carries the vocabulary and added tokens).
    fn tokenizer_config(&self) -> Json {
        let special = self.tokenizer.special();
        json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": special.bos,
            "eos_token": special.eos,
            "pad_token": special.pad,
            "unk_token": special.unk,
            "add_bos_token": special.add_bos,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": self.config.max_position_embeddings,
            "chat_template": self.chat_template,
        })
    }
}

fn generation_config(config: &ModelConfig) -> Json {
    let eos = match config.eos_token_ids.as_slice() {
        [] => Json::Null,
        [one] => json!(one),
        many => json!(many),
    };
    json!({
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": config.pad_token_id,
    })
}

fn write_json(path: &Path, value: &Json) -> LlmResult<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| LlmError::bad_file(path, format!("cannot serialise: {e}")))?;
    std::fs::write(path, text + "\n").map_err(|e| LlmError::io(path, e))
}

/// One tensor's bytes in the dtype being written.
struct EncodedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &EncodedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes named tensors to a safetensors file in `dtype`, with the `format: pt` metadata
/// transformers requires. Also used for adapters (PEFT's adapter_model.safetensors).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    dtype: ExportDtype,
) -> LlmResult<()> {
    let encoded: Vec<(String, EncodedTensor)> = tensors
        .iter()
        .map(|(name, tensor)| {
            let values = tensor
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| LlmError::tensor(*name, e))?;
            Ok((
                name.to_string(),
                EncodedTensor {
                    dtype: dtype.safetensors_dtype(),
                    shape: tensor.dims().to_vec(),
                    data: dtype.encode(&values),
                },
            ))
        })
        .collect::<LlmResult<_>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(
        encoded.iter().map(|(name, t)| (name.as_str(), t)),
        Some(metadata),
        path,
    )
    .map_err(|e| LlmError::bad_file(path, format!("cannot write safetensors: {e}")))?;
    make_world_readable(path)
}

/// safetensors creates its file owner-only (0600); an exported model is meant to be shared
/// like the other files of the directory.
fn make_world_readable(path: &Path) -> LlmResult<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| LlmError::io(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::testing::{self, random_weights, tiny_config};
    use crate::llm::{load_model_path, Architecture};
    use candle_core::Device;

    /// Largest |a - b| / max(|b|, 1e-3) over all elements.
    fn max_relative_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
            .fold(0.0, f32::max)
    }

    fn tokenizer_cases() -> Vec<String> {
        let text =
            std::fs::read_to_string(testing::smollm2_fixture("tokenizer_cases.json")).unwrap();
        let json: Json = serde_json::from_str(&text).unwrap();
        json["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["text"].as_str().unwrap().to_string())
            .collect()
    }

    /// A model with SmolLM2's tokenizer and template, exported in each dtype and loaded back:
    /// same config, tensors identical (f32) or within the dtype's precision, same
    /// tokenization of every fixture text, same template and special tokens.
    #[test]
    fn export_then_load_gives_the_same_model() {
        let tokenizer = testing::smollm2_tokenizer();
        let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
        let config = tiny_config(Architecture::Llama, 49152, true);
        let weights = random_weights(&config, 3);
        let export = HfExport {
            config: &config,
            weights: &weights,
            tokenizer,
            chat_template: Some(template),
            dtype: ExportDtype::F32,
        };
        let texts = tokenizer_cases();
        for (dtype, precision) in [
            (ExportDtype::F32, 0.0),
            (ExportDtype::Bf16, 1.0 / 256.0),
            (ExportDtype::F16, 1.0 / 2048.0),
        ] {
            let dir = tempfile::tempdir().unwrap();
            HfExport { dtype, ..export }.write(dir.path()).unwrap();
            let loaded = load_model_path(dir.path(), &Device::Cpu).unwrap();
            assert_eq!(loaded.config, config, "{dtype:?}");
            assert_eq!(loaded.weights.names(), weights.names());
            for name in weights.names() {
                let diff = max_relative_diff(
                    loaded.weights.get(name).unwrap(),
                    weights.get(name).unwrap(),
                );
                assert!(diff <= precision, "{dtype:?} {name}: {diff}");
            }
            for text in &texts {
                assert_eq!(
                    loaded.tokenizer.encode(text, false).unwrap(),
                    tokenizer.encode(text, false).unwrap(),
                    "{text:?}"
                );
            }
            assert_eq!(loaded.tokenizer.special(), tokenizer.special());
            assert_eq!(loaded.chat_template.as_deref(), Some(template));
            let config_json: Json = serde_json::from_str(
                &std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap(),
            )
            .unwrap();
            assert_eq!(config_json["torch_dtype"], dtype.torch_name());
            assert_eq!(config_json["architectures"][0], "LlamaForCausalLM");
        }
    }

    /// An untied Qwen2 model (biases, lm_head) read from a GGUF exports and reloads.
    #[test]
    fn gguf_model_exports_as_an_hf_directory() {
        let dir = tempfile::tempdir().unwrap();
        let gguf_path = dir.path().join("qwen.gguf");
        let config = tiny_config(Architecture::Qwen2, 272, false);
        let weights = random_weights(&config, 5);
        testing::write_gguf(
            &gguf_path,
            &config,
            &weights,
            &testing::TinyVocab::new(),
            candle_core::quantized::GgmlDType::F32,
            Some("{{ bos_token }}"),
        )
        .unwrap();
        let from_gguf = load_model_path(&gguf_path, &Device::Cpu).unwrap();
        let out = dir.path().join("hf");
        HfExport::from_model(&from_gguf, ExportDtype::F32)
            .write(&out)
            .unwrap();
        let reloaded = load_model_path(&out, &Device::Cpu).unwrap();
        assert_eq!(reloaded.config, from_gguf.config);
        assert!(reloaded.config.attention_bias && !reloaded.config.tie_word_embeddings);
        for name in weights.names() {
            assert_eq!(
                max_relative_diff(
                    reloaded.weights.get(name).unwrap(),
                    weights.get(name).unwrap()
                ),
                0.0,
                "{name}"
            );
        }
        let text = "<|im_start|>the other 42";
        assert_eq!(
            reloaded.tokenizer.encode(text, false).unwrap(),
            from_gguf.tokenizer.encode(text, false).unwrap()
        );
        assert_eq!(reloaded.chat_template.as_deref(), Some("{{ bos_token }}"));
    }

    /// A model whose tokenizer is a SentencePiece GGUF vocabulary exports transformers'
    /// conversion of it, which pipe reloads with the same ids, specials and decoding.
    #[test]
    fn sentencepiece_vocabulary_exports_and_reloads_with_the_same_ids() {
        use crate::llm::text::spm::tests_support::llama_cpp_cases;
        let path = testing::vocab_fixture("ggml-vocab-llama-spm.gguf");
        let gguf = crate::llm::GgufFile::open(&path).unwrap();
        let tokenizer = crate::llm::TextTokenizer::from_gguf(&gguf).unwrap();
        let config = tiny_config(Architecture::Llama, 32000, true);
        let weights = random_weights(&config, 7);
        let dir = tempfile::tempdir().unwrap();
        HfExport {
            config: &config,
            weights: &weights,
            tokenizer: &tokenizer,
            chat_template: None,
            dtype: ExportDtype::F32,
        }
        .write(dir.path())
        .unwrap();
        let loaded = load_model_path(dir.path(), &Device::Cpu).unwrap();
        assert!(loaded.tokenizer.inner().is_some());
        // (The pad token comes back from the test config's `pad_token_id`.)
        let (a, b) = (loaded.tokenizer.special(), tokenizer.special());
        assert_eq!(
            (&a.bos, &a.eos, &a.unk, a.add_bos),
            (&b.bos, &b.eos, &b.unk, b.add_bos)
        );
        for (text, _) in llama_cpp_cases() {
            let ids = tokenizer.encode(&text, true).unwrap();
            assert_eq!(
                loaded.tokenizer.encode(&text, true).unwrap(),
                ids,
                "{text:?}"
            );
            assert_eq!(
                loaded.tokenizer.decode(&ids[1..], true).unwrap(),
                tokenizer.decode(&ids[1..], true).unwrap(),
                "{text:?}"
            );
        }
        // Templated text: the same ids with control tokens parsed. (Decoding with them skipped
        // differs by design: HF strips the space after a skipped `<s>`, llama.cpp keeps it.)
        let text = "<s>[INST] Hi </s> there [/INST]";
        let ids = tokenizer.encode(text, false).unwrap();
        assert_eq!(loaded.tokenizer.encode(text, false).unwrap(), ids);
        assert_eq!(
            loaded.tokenizer.decode(&ids, false).unwrap(),
            tokenizer.decode(&ids, false).unwrap()
        );
    }

    #[test]
    fn dtype_names_parse() {
        assert_eq!("bf16".parse::<ExportDtype>().unwrap(), ExportDtype::Bf16);
        assert_eq!("float32".parse::<ExportDtype>().unwrap(), ExportDtype::F32);
        assert!("int8".parse::<ExportDtype>().is_err());
    }

    /// Writes the real SmolLM2 as an HF directory to `$PIPE_EXPORT_TO`, for
    /// `scripts/verify-export.py fixture` (transformers + a numpy forward against forward.json).
    #[test]
    #[ignore = "writes 540 MB; run by hand with PIPE_EXPORT_TO set"]
    fn export_smollm2_for_external_check() {
        let out =
            std::env::var_os("PIPE_EXPORT_TO").expect("set PIPE_EXPORT_TO to an output directory");
        HfExport::from_model(testing::smollm2_model(), ExportDtype::F32)
            .write(std::path::Path::new(&out))
            .unwrap();
    }
}
