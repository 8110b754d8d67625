//! The contract between the `pipe` binary and a tool that is not a pipeline stage (the model
//! commands `generate`, `chat`, `bench`): the tool declares its clap subcommand and runs it;
//! the engine parses the command line and answers the tool's questions about the workspace.
//! Tools are registered by pipe-stages ([`crate::tools()`]) as stages are, so the engine
//! carries them without knowing any ML.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// An error the engine raised while answering a tool (a broken pipeline.toml, a stage that never
/// ran); the tool hands it back unchanged, so the engine reports it with its own exit code.
pub type HostError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the engine tells a tool about the workspace, each answer computed when asked.
pub trait ToolHost {
    /// The pipeline file `--config` names (it need not exist).
    fn config_path(&self) -> &Path;

    /// The table `table` of the pipeline as its stage sees it (every default filled in, `-s`
    /// overrides applied) and the workspace root its relative paths are relative to; `None`
    /// when the pipeline has no such table. Loads pipeline.toml: a broken one is an error.
    fn table(&self, table: &str) -> Result<Option<(serde_json::Value, PathBuf)>, HostError>;

    /// The committed artifact directory of `stage`: its current key's, else its latest. Errors
    /// name `flag`, the option that asked for it.
    fn artifact_dir(&self, stage: &str, flag: &str) -> Result<PathBuf, HostError>;

    /// The committed artifact of the instance `stage`, then those of the instances it reads
    /// through its input `follow`, theirs, and so on down (a model stack: `orpo`, `sft`,
    /// `model`); each the current key's, else the latest. Errors name `flag`.
    fn artifact_chain(
        &self,
        stage: &str,
        follow: &str,
        flag: &str,
    ) -> Result<Vec<crate::inputs::Link>, HostError>;

    /// This process's command line when the tool runs from it (a tool may re-run it as a child
    /// process, as bench does for each phase); `None` when it runs in-process.
    fn own_command(&self) -> Option<Vec<OsString>>;
}

/// Why a tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Arguments that cannot be honoured: a usage error (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The engine's own error, handed back.
    #[error(transparent)]
    Host(HostError),
    /// The tool's work failed (exit code 1); the message names the file or value.
    #[error("{0}")]
    Failed(String),
}

/// A subcommand of `pipe` that is not a stage.
pub trait Tool: Send + Sync {
    /// The subcommand: its name, help and arguments.
    fn command(&self) -> clap::Command;

    /// Runs the subcommand with its parsed arguments.
    fn run(&self, args: &clap::ArgMatches, host: &dyn ToolHost) -> Result<(), ToolError>;
}
