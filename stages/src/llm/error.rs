//! Errors of the LLM engine. Every message names the file, tensor, key or architecture at fault
//! and, where there is one, what the user should do.

use std::path::PathBuf;

/// Anything that can go wrong loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that exists but cannot be used (truncated, corrupted, wrong content).
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    /// A required field of a JSON config file or a GGUF metadata key is absent.
    #[error("{path}: missing required field `{field}`")]
    MissingField { path: PathBuf, field: String },
    /// A model family we do not implement.
    #[error(
        "unsupported architecture `{0}`: pipe implements Llama, SmolLM/SmolLM2, Mistral, Qwen2, Qwen3 and Gemma-3 text (gemma3_text)"
    )]
    UnsupportedArchitecture(String),
    /// A tensor that is missing or has the wrong shape.
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
    /// A model spec (`hf:org/name`, a path) that cannot be resolved to files.
    #[error("model `{spec}`: {message}")]
    ModelSpec { spec: String, message: String },
    /// The tokenizer cannot be built or cannot encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template that does not parse or render.
    #[error("chat template `{name}`: {message}")]
    Template { name: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl LlmError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LlmError::Io {
            path: path.into(),
            source,
        }
    }

    /// A file that exists but is unusable, with the reason.
    pub fn bad_file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        LlmError::BadFile {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// A tensor-level problem (missing, wrong shape, wrong dtype).
    pub fn tensor(name: impl Into<String>, message: impl std::fmt::Display) -> Self {
        LlmError::Tensor {
            name: name.into(),
            message: message.to_string(),
        }
    }
}

/// Results of the LLM engine.
pub type LlmResult<T> = Result<T, LlmError>;
