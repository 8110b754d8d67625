//! The engine's side of the tools pipe-stages registers (`pipe generate`, `chat`, `bench`):
//! the workspace facts a tool asks for — a table of pipeline.toml, a stage's committed
//! artifact — computed when it asks, and the tool's errors mapped to the engine's.

use std::cell::OnceCell;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use pipe_stages::{DynStage, HostError, Link, ToolError, ToolHost};

use crate::cli::Globals;
use crate::config::{Override, PipelineConfig};
use crate::error::{PipeError, Result};
use crate::runner::Workspace;
use crate::show::current_entry;

/// What a tool may ask of the workspace; the pipeline is loaded on the first question.
pub struct Host<'r> {
    globals: &'r Globals,
    registry: &'r [Box<dyn DynStage>],
    own_argv: bool,
    workspace: OnceCell<Workspace<'r>>,
}

impl<'r> Host<'r> {
    /// `own_argv`: the command line was this process's own (a tool may re-run it).
    pub fn new(globals: &'r Globals, registry: &'r [Box<dyn DynStage>], own_argv: bool) -> Self {
        Self {
            globals,
            registry,
            own_argv,
            workspace: OnceCell::new(),
        }
    }

    fn workspace(&self) -> Result<&Workspace<'r>> {
        if let Some(ws) = self.workspace.get() {
            return Ok(ws);
        }
        let overrides = self
            .globals
            .set
            .iter()
            .map(|raw| Override::parse(raw))
            .collect::<Result<Vec<_>>>()?;
        let config = PipelineConfig::load(&self.globals.config, &overrides, self.registry)?;
        let ws = Workspace::new(config, self.registry)?;
        Ok(self.workspace.get_or_init(|| ws))
    }
}

impl ToolHost for Host<'_> {
    fn config_path(&self) -> &Path {
        &self.globals.config
    }

    fn table(
        &self,
        table: &str,
    ) -> std::result::Result<Option<(serde_json::Value, PathBuf)>, HostError> {
        let ws = self.workspace()?;
        Ok(ws
            .config
            .stages
            .get(table)
            .map(|loaded| (loaded.canonical.clone(), ws.config.root.clone())))
    }

    fn artifact_dir(&self, stage: &str, flag: &str) -> std::result::Result<PathBuf, HostError> {
        Ok(current_entry(self.workspace()?, stage, flag)?.dir)
    }

    fn artifact_chain(
        &self,
        stage: &str,
        follow: &str,
        flag: &str,
    ) -> std::result::Result<Vec<Link>, HostError> {
        let ws = self.workspace()?;
        let top = ws.dag.resolve(stage, flag)?;
        let below = ws
            .config
            .wiring
            .wires
            .get(top)
            .into_iter()
            .flatten()
            .find(|w| w.key == follow)
            .and_then(|w| w.chains.first().cloned())
            .unwrap_or_default();
        let mut chain = Vec::new();
        for name in std::iter::once(top).chain(below) {
            let dir = current_entry(ws, name, flag)?.dir;
            chain.push(Link::new(name, ws.kind(name), &dir));
        }
        Ok(chain)
    }

    fn own_command(&self) -> Option<Vec<OsString>> {
        self.own_argv.then(|| std::env::args_os().collect())
    }
}

/// A tool's error as the engine reports it: usage errors exit with 2, the engine's own errors
/// come back unchanged, anything else is a failed tool (exit 1).
pub fn tool_error(e: ToolError) -> PipeError {
    match e {
        ToolError::Usage(message) => PipeError::Usage(message),
        ToolError::Failed(message) => PipeError::Tool(message),
        ToolError::Host(host) => match host.downcast::<PipeError>() {
            Ok(own) => *own,
            Err(other) => PipeError::Tool(other.to_string()),
        },
    }
}
