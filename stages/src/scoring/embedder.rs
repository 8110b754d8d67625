//! Sentence embeddings with a BERT-family encoder from a local directory, computed the way
//! sentence-transformers computes them for all-MiniLM-L6-v2 (`modules.json`: Transformer →
//! mean Pooling → Normalize): token states averaged over the attention mask, then L2-normalised.
//!
//! The directory holds `config.json`, `model.safetensors` (or `pytorch_model.bin`, read through
//! candle's pickle support) and `tokenizer.json`; `sentence_bert_config.json` gives the
//! truncation length (`max_seq_length`, 256 for MiniLM: sentence-transformers truncates there,
//! not at the 128 that MiniLM's tokenizer.json carries), and `1_Pooling/config.json`, when
//! present, must ask for mean pooling. Runs on the CPU: a 6-layer encoder embeds thousands of
//! short answers in seconds.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{Tokenizer, TruncationParams};

use super::error::ScoringError;
use crate::progress::Progress;

/// sentence-transformers' default when a model has no `sentence_bert_config.json`.
const FALLBACK_MAX_LENGTH: usize = 512;

/// A loaded sentence encoder.
pub struct Embedder {
    dir: PathBuf,
    model: BertModel,
    tokenizer: Tokenizer,
    pad_id: u32,
    max_length: usize,
    device: Device,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dir", &self.dir)
            .field("max_length", &self.max_length)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the model in `dir`; `max_length` overrides the model's own truncation length.
    pub fn load(dir: &Path, max_length: Option<usize>) -> Result<Self, ScoringError> {
        if !dir.is_dir() {
            return Err(ScoringError::EmbedderNotFound {
                dir: dir.to_path_buf(),
            });
        }
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        check_pooling(dir)?;
        let max_length = truncation_length(dir, max_length, config.max_position_embeddings)?;
        let tokenizer = load_tokenizer(dir, max_length)?;
        let device = Device::Cpu;
        let vb = load_weights(dir, &device)?;
        let model = BertModel::load(vb, &config).map_err(|e| ScoringError::Embedding {
            model: dir.to_path_buf(),
            message: format!(
                "the weights do not fit a BERT model of this config.json: {e}; the embedding \
                 scorer needs a BERT-family encoder (all-MiniLM-L6-v2, bge, e5, ...)"
            ),
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            tokenizer,
            pad_id: u32::try_from(config.pad_token_id).unwrap_or(0),
            max_length,
            device,
        })
    }

    /// The token count at which texts are truncated.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// One unit-length embedding per text, in order. Texts are batched by length (longest
    /// first) so that little padding is computed; `progress` counts texts.
    pub fn embed(
        &self,
        texts: &[&str],
        batch_size: usize,
        progress: &dyn Progress,
    ) -> Result<Vec<Vec<f32>>, ScoringError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| self.error(format!("cannot tokenize: {e}")))?;
        let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![Vec::new(); texts.len()];
        let bar = progress.bar(Some(texts.len() as u64), "texts");
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i]).collect();
            let vectors = self
                .embed_batch(&batch)
                .map_err(|e| self.error(e.to_string()))?;
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish();
        Ok(out)
    }

    /// Pads one batch, runs the encoder, mean-pools over real tokens, normalises.
    fn embed_batch(&self, batch: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let width = batch.iter().map(|ids| ids.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(batch.len() * width);
        let mut mask = Vec::with_capacity(batch.len() * width);
        for row in batch {
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(self.pad_id, width - row.len()));
            mask.extend(std::iter::repeat_n(1u32, row.len()));
            mask.extend(std::iter::repeat_n(0u32, width - row.len()));
        }
        let shape = (batch.len(), width);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let types = ids.zeros_like()?;
        let states = self.model.forward(&ids, &types, Some(&mask))?;
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = states.broadcast_mul(&mask)?.sum(1)?;
        // sentence-transformers clamps the token count at 1e-9 (an all-padding row).
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        // torch.nn.functional.normalize: divide by max(‖v‖, 1e-12).
        let norms = mean
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        mean.broadcast_div(&norms)?.to_vec2::<f32>()
    }

    fn error(&self, message: String) -> ScoringError {
        ScoringError::Embedding {
            model: self.dir.clone(),
            message,
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ScoringError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScoringError::EmbedderFile {
        path: path.to_path_buf(),
        message: format!("cannot read it: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| ScoringError::EmbedderFile {
        path: path.to_path_buf(),
        message: format!("not the expected JSON: {e}"),
    })
}

/// Refuses a model whose sentence-transformers pooling is not the mean we compute.
fn check_pooling(dir: &Path) -> Result<(), ScoringError> {
    let path = dir.join("1_Pooling").join("config.json");
    if !path.is_file() {
        return Ok(());
    }
    let pooling: serde_json::Value = read_json(&path)?;
    let mean = pooling
        .get("pooling_mode_mean_tokens")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    if mean {
        return Ok(());
    }
    let modes: Vec<&str> = pooling
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| k.starts_with("pooling_mode_") && v.as_bool() == Some(true))
        .map(|(k, _)| k.trim_start_matches("pooling_mode_"))
        .collect();
    Err(ScoringError::EmbedderFile {
        path,
        message: format!(
            "the model pools with {}, but only mean pooling (pooling_mode_mean_tokens) is \
             supported; use a mean-pooling model such as all-MiniLM-L6-v2",
            if modes.is_empty() {
                "no mode".to_string()
            } else {
                modes.join(", ")
            }
        ),
    })
}

/// An explicit length, else `max_seq_length` of sentence_bert_config.json, else 512; never
/// more than the model's position embeddings.
fn truncation_length(
    dir: &Path,
    explicit: Option<usize>,
    positions: usize,
) -> Result<usize, ScoringError> {
    let configured = match explicit {
        Some(n) => n,
        None => {
            let path = dir.join("sentence_bert_config.json");
            if path.is_file() {
                let st: serde_json::Value = read_json(&path)?;
                st.get("max_seq_length")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|n| usize::try_from(n).ok())
                    .unwrap_or(FALLBACK_MAX_LENGTH)
            } else {
                FALLBACK_MAX_LENGTH
            }
        }
    };
    Ok(configured.clamp(2, positions.max(2)))
}

fn load_tokenizer(dir: &Path, max_length: usize) -> Result<Tokenizer, ScoringError> {
    let path = dir.join("tokenizer.json");
    let file_error = |message: String| ScoringError::EmbedderFile {
        path: path.clone(),
        message,
    };
    let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| {
        file_error(format!(
            "cannot load the tokenizer: {e}; the directory needs a fast-tokenizer tokenizer.json"
        ))
    })?;
    // Our own padding (per batch) replaces any fixed padding the file asks for.
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length,
            ..TruncationParams::default()
        }))
        .map_err(|e| file_error(format!("cannot set truncation to {max_length}: {e}")))?;
    Ok(tokenizer)
}

/// model.safetensors if present, else pytorch_model.bin.
fn load_weights(dir: &Path, device: &Device) -> Result<VarBuilder<'static>, ScoringError> {
    let safetensors = dir.join("model.safetensors");
    if safetensors.is_file() {
        let tensors = candle_core::safetensors::load(&safetensors, device).map_err(|e| {
            ScoringError::EmbedderFile {
                path: safetensors.clone(),
                message: format!("cannot read the weights: {e}"),
            }
        })?;
        return Ok(VarBuilder::from_tensors(tensors, DType::F32, device));
    }
    let pickle = dir.join("pytorch_model.bin");
    if pickle.is_file() {
        return VarBuilder::from_pth(&pickle, DType::F32, device).map_err(|e| {
            ScoringError::EmbedderFile {
                path: pickle,
                message: format!("cannot read the weights: {e}"),
            }
        });
    }
    Err(ScoringError::EmbedderFile {
        path: safetensors,
        message: "missing (and no pytorch_model.bin either); the directory needs the model's \
                  weights"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NullProgress;
    use crate::scoring::embedding::cosine;
    use crate::scoring::testing::minilm;

    const SENTENCES: [&str; 4] = [
        "How do I list the files in a directory?",
        "What command shows the contents of a folder?",
        "The cat sat quietly on the warm windowsill.",
        "디렉터리의 파일 목록을 보는 방법",
    ];

    #[test]
    fn minilm_matches_the_numpy_reference() {
        // scripts/verify-embedder.py: a numpy BERT forward in float64 on the same weights,
        // pooled and normalised as sentence-transformers does (first four dimensions).
        let expected: [[f32; 4]; 4] = [
            [0.005012, 0.038761, -0.081519, 0.022647],
            [0.033589, 0.043142, -0.108522, 0.043823],
            [0.147519, -0.02646, 0.013377, 0.145244],
            [0.016209, 0.019558, -0.044055, -0.036349],
        ];
        let embedder = minilm();
        assert_eq!(embedder.max_length(), 256);
        let vectors = embedder.embed(&SENTENCES, 3, &NullProgress).unwrap();
        for (v, want) in vectors.iter().zip(expected) {
            assert_eq!(v.len(), 384);
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{norm}");
            for (got, want) in v.iter().zip(want) {
                assert!((got - want).abs() < 2e-5, "{:?} vs {want:?}", &v[..4]);
            }
        }
        let cos = |i: usize, j: usize| cosine(&vectors[i], &vectors[j]);
        for (i, j, want) in [(0, 1, 0.626671), (0, 2, 0.055034), (1, 3, 0.012577)] {
            assert!(
                (cos(i, j) - want).abs() < 1e-5,
                "cos({i}, {j}) = {}",
                cos(i, j)
            );
        }
    }

    #[test]
    fn padding_in_a_batch_does_not_change_an_embedding() {
        // The short sentence is padded to the long one's length when they share a batch.
        let embedder = minilm();
        let long = "A much longer sentence that certainly has many more word pieces than the \
                    other one, so that padding is needed.";
        let together = embedder.embed(&[long, "ls"], 2, &NullProgress).unwrap();
        let alone = embedder.embed(&["ls"], 1, &NullProgress).unwrap();
        for (a, b) in together[1].iter().zip(&alone[0]) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn texts_longer_than_the_model_are_truncated() {
        let embedder = minilm();
        let long = "word ".repeat(2000);
        let v = embedder.embed(&[&long, ""], 2, &NullProgress).unwrap();
        assert_eq!(v[0].len(), 384);
        assert_eq!(v[1].len(), 384);
    }

    #[test]
    fn a_directory_without_weights_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Embedder::load(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("config.json: cannot read it"), "{err}");
        let src = crate::scoring::testing::minilm_dir();
        for name in ["config.json", "tokenizer.json"] {
            std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
        }
        let err = Embedder::load(dir.path(), None).unwrap_err().to_string();
        assert!(
            err.ends_with("model.safetensors: missing (and no pytorch_model.bin either); the directory needs the model's weights"),
            "{err}"
        );
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        std::fs::write(
            dir.path().join("1_Pooling/config.json"),
            r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
        )
        .unwrap();
        let err = Embedder::load(dir.path(), None).unwrap_err().to_string();
        assert!(
            err.contains("the model pools with cls_token, but only mean pooling"),
            "{err}"
        );
    }
}
