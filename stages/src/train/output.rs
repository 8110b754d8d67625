//! What the trainer stages write when they finish: pretty JSON, JSON lines, copies out of the
//! partial directory, and the PEFT adapter with a portable base reference. Shared so that sft
//! and orpo name their files and their base model the same way.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::llm::{portable_base_reference, LlamaModel, LlmResult, PeftAdapter};

/// A file that could not be written; names it.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct OutputError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn error(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError {
        path: path.to_path_buf(),
        source,
    }
}

/// Copies `from` (e.g. the metrics log of the partial directory) to `to`; a metrics log brings
/// its TensorBoard event file along.
pub fn copy(from: &Path, to: &Path) -> Result<(), OutputError> {
    std::fs::copy(from, to).map(|_| ()).map_err(error(to))?;
    super::metrics::copy_events(from, to).map_err(error(to))
}

/// `value` as pretty JSON with a final newline.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), OutputError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| error(path)(std::io::Error::other(e)))?;
    std::fs::write(path, text + "\n").map_err(error(path))
}

/// One JSON object a line.
pub fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), OutputError> {
    let mut text = String::new();
    for row in rows {
        let line = serde_json::to_string(row).map_err(|e| error(path)(std::io::Error::other(e)))?;
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(path, text).map_err(error(path))
}

/// PEFT's `base_model_name_or_path`: the model stage's portable name (a hub id or the path
/// as written, relative to the workspace). An absolute path as written is not portable: it
/// becomes a path relative to the adapter directory instead.
pub fn portable_base(name: &str, resolved: &Path, adapter_dir: &Path) -> LlmResult<String> {
    if crate::llm::base_ref::check_portable(name).is_ok() {
        return Ok(name.to_string());
    }
    portable_base_reference(&resolved.to_string_lossy(), adapter_dir)
}

/// Writes the attached LoRA of `model` as a PEFT adapter in `dir`, naming the base portably;
/// returns that name.
pub fn save_adapter(
    model: &LlamaModel,
    name: &str,
    resolved: &Path,
    dir: &Path,
) -> LlmResult<String> {
    let base = portable_base(name, resolved, dir)?;
    PeftAdapter::from_model(model, &base)?.save(dir)?;
    Ok(base)
}
