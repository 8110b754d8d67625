//! The `base_model_name_or_path` of an adapter, kept portable: a hub id, or a path relative to
//! the adapter directory, never an absolute path into somebody's cache that breaks as soon as
//! the adapter is copied to another machine.

use std::path::{Component, Path, PathBuf};

use crate::llm::error::{LlmError, LlmResult};

/// Where an adapter's base model is, as resolved from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseModelRef {
    /// A Hugging Face hub id such as `HuggingFaceTB/SmolLM2-135M-Instruct`.
    Hub(String),
    /// A file or directory on this machine.
    Path(PathBuf),
}

/// Turns `base` (a hub id, or a path absolute or relative to the working directory) into the
/// portable form to store in an adapter written to `adapter_dir`:
/// - a hub id is kept;
/// - a path inside a hub cache (`.../models--Org--Name/snapshots/...`) becomes `Org/Name`;
/// - any other path becomes relative to `adapter_dir` (computed lexically, so the adapter
///   directory need not exist yet).
pub fn portable_base_reference(base: &str, adapter_dir: &Path) -> LlmResult<String> {
    let base = base.trim();
    if base.is_empty() {
        return Err(LlmError::Invalid(
            "base_model_name_or_path is empty: name the base model (hub id or path)".into(),
        ));
    }
    if let Some(id) = hub_id_from_cache_path(base) {
        return Ok(id);
    }
    let as_path = Path::new(base);
    if looks_like_hub_id(base) && !as_path.exists() {
        return Ok(base.to_string());
    }
    let cwd = std::env::current_dir().map_err(|source| LlmError::Io {
        path: PathBuf::from("."),
        source,
    })?;
    let target = normalize(&cwd.join(as_path));
    let from = normalize(&cwd.join(adapter_dir));
    Ok(relative_path(&from, &target))
}

/// Refuses a reference that is not portable (an absolute path); used before writing a config.
pub fn check_portable(reference: &str) -> LlmResult<()> {
    let p = Path::new(reference);
    if p.is_absolute() || reference.starts_with('~') || has_windows_drive(reference) {
        return Err(LlmError::Invalid(format!(
            "base_model_name_or_path `{reference}` is an absolute path; store a hub id or a path relative to the adapter directory (see portable_base_reference)"
        )));
    }
    Ok(())
}

/// Where the base model named by an adapter config is: a path relative to the adapter
/// directory when one exists there (or an absolute one, from configs written by other tools),
/// otherwise a hub id.
pub fn resolve_base_reference(reference: &str, adapter_dir: &Path) -> BaseModelRef {
    let p = Path::new(reference);
    if p.is_absolute() {
        return BaseModelRef::Path(p.to_path_buf());
    }
    let local = adapter_dir.join(p);
    if local.exists() || !looks_like_hub_id(reference) {
        BaseModelRef::Path(normalize(&local))
    } else {
        BaseModelRef::Hub(reference.to_string())
    }
}

/// `org/name` or `name`, of the characters the hub allows, not starting like a path.
fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    let valid_part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.starts_with('-')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (1..=2).contains(&parts.len()) && parts.iter().all(|p| valid_part(p))
}

/// `Org/Name` from a hub cache path component `models--Org--Name`.
fn hub_id_from_cache_path(s: &str) -> Option<String> {
    Path::new(s).components().find_map(|c| {
        let name = c.as_os_str().to_str()?;
        let rest = name.strip_prefix("models--")?;
        let (org, model) = rest.split_once("--")?;
        (!org.is_empty() && !model.is_empty()).then(|| format!("{org}/{model}"))
    })
}

fn has_windows_drive(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

/// Removes `.` and folds `..` without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The path from directory `from` to `to` (both absolute and normalised), `/`-separated.
fn relative_path(from: &Path, to: &Path) -> String {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_kept_and_cache_paths_become_hub_ids() {
        let dir = Path::new("/tmp/somewhere/adapter");
        assert_eq!(
            portable_base_reference("HuggingFaceTB/SmolLM2-135M-Instruct", dir).unwrap(),
            "HuggingFaceTB/SmolLM2-135M-Instruct"
        );
        let cached = "/root/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/abc123";
        assert_eq!(
            portable_base_reference(cached, dir).unwrap(),
            "HuggingFaceTB/SmolLM2-135M-Instruct"
        );
        assert!(portable_base_reference("  ", dir).is_err());
    }

    #[test]
    fn paths_become_relative_to_the_adapter_dir() {
        let dir = Path::new("/work/ws/artifacts/sft/abc/adapter");
        assert_eq!(
            portable_base_reference("/work/ws/models/m.gguf", dir).unwrap(),
            "../../../../models/m.gguf"
        );
        assert_eq!(
            portable_base_reference("/work/ws/artifacts/sft/abc/adapter/base", dir).unwrap(),
            "base"
        );
        let r = portable_base_reference("/work/ws/models/m.gguf", dir).unwrap();
        assert!(check_portable(&r).is_ok());
        assert!(check_portable("/abs/path").is_err());
        assert_eq!(
            resolve_base_reference(&r, dir),
            BaseModelRef::Path(PathBuf::from("/work/ws/models/m.gguf"))
        );
        assert_eq!(
            resolve_base_reference("HuggingFaceTB/SmolLM2-135M-Instruct", dir),
            BaseModelRef::Hub("HuggingFaceTB/SmolLM2-135M-Instruct".into())
        );
    }

    #[test]
    fn hub_id_shape() {
        assert!(looks_like_hub_id("gpt2"));
        assert!(looks_like_hub_id("Qwen/Qwen2-0.5B"));
        assert!(!looks_like_hub_id("./model"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("models/x y"));
    }
}
