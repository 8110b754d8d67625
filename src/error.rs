//! The engine's error type and how each kind maps to an exit code
//! (0 ok, 1 a stage or the workspace failed, 2 usage or config error).

use std::path::PathBuf;

/// Everything the engine can report to the user.
#[derive(Debug, thiserror::Error)]
pub enum PipeError {
    /// pipeline.toml or a `-s` override is wrong; the message is fully rendered (file:line:col, hint).
    #[error("{0}")]
    Config(String),
    /// A command-line request that cannot be honoured (unknown stage in --from, bad combination).
    #[error("{0}")]
    Usage(String),
    /// Another `pipe run` holds the workspace lock.
    #[error("another pipe run (pid {pid}) holds the workspace lock {path}; wait for it to finish, or stop it")]
    Locked { pid: String, path: PathBuf },
    /// A stage returned an error or panicked.
    #[error("stage `{stage}` failed: {message}")]
    StageFailed { stage: String, message: String },
    /// A model command (generate, chat, bench) failed; the message names the file or value.
    #[error("{0}")]
    Tool(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `pipe verify` found corrupt artifacts (each was already reported).
    #[error("{0}")]
    Corrupt(String),
    /// Some variants of a sweep failed (each was reported; the others ran).
    #[error("{0}")]
    Sweep(String),
    /// Ctrl-C (or SIGTERM) stopped a run; the message says what was cancelled.
    #[error("{0}")]
    Interrupted(String),
    /// A corrupt file in the artifact store (manifest, digest cache).
    #[error("{path}: {message}")]
    Store { path: PathBuf, message: String },
}

impl PipeError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Usage(_) => 2,
            Self::Interrupted(_) => 130,
            _ => 1,
        }
    }
}

/// Results of the engine.
pub type Result<T, E = PipeError> = std::result::Result<T, E>;
