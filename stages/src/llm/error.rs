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
    /// A model family we do not implement.
    #[error(
        "unsupported architecture `{0}`: pipe implements Llama, SmolLM/SmolLM2, Mistral and Qwen2"
    )]
    UnsupportedArchitecture(String),
    /// A tensor that is missing or has the wrong shape.
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Results of the LLM engine.
pub type LlmResult<T> = Result<T, LlmError>;
