//! What a user writes to name a model in pipeline.toml: a local path (an HF directory or a
//! .gguf file) or `hf:org/name[@revision][:file]`, and how it resolves to files on disk.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::io::hub::HubCache;

/// A model as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A path as written (relative paths are relative to the workspace root).
    Local(PathBuf),
    /// A Hugging Face hub repository, optionally at a revision, optionally one file of it
    /// (a .gguf in a GGUF-only repository).
    Hub {
        repo: String,
        revision: Option<String>,
        file: Option<String>,
    },
}

/// The on-disk format a spec resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFormat {
    /// A directory with config.json, tokenizer.json and safetensors.
    HfDir,
    /// A llama.cpp GGUF file.
    Gguf,
}

/// A spec resolved to a file or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    pub path: PathBuf,
    pub format: ModelFormat,
}

const HUB_PREFIX: &str = "hf:";

impl ModelSpec {
    /// Parses `hf:org/name[@revision][:file]` or a path.
    pub fn parse(text: &str) -> LlmResult<Self> {
        let text = text.trim();
        let invalid = |message: &str| LlmError::ModelSpec {
            spec: text.to_string(),
            message: message.to_string(),
        };
        if text.is_empty() {
            return Err(invalid("empty model name; give a path or `hf:org/name`"));
        }
        let Some(rest) = text.strip_prefix(HUB_PREFIX) else {
            return Ok(ModelSpec::Local(PathBuf::from(text)));
        };
        let (rest, file) = match rest.split_once(':') {
            Some((rest, file)) if !file.is_empty() => (rest, Some(file.to_string())),
            Some(_) => return Err(invalid("nothing after `:`; write `hf:org/name:file.gguf`")),
            None => (rest, None),
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((repo, rev)) if !rev.is_empty() => (repo, Some(rev.to_string())),
            Some(_) => return Err(invalid("nothing after `@`; write `hf:org/name@revision`")),
            None => (rest, None),
        };
        let valid_part = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        match repo.split_once('/') {
            Some((org, name)) if valid_part(org) && valid_part(name) => {}
            _ => {
                return Err(invalid(
                    "expected `hf:org/name` (a Hugging Face repository id)",
                ))
            }
        }
        if let Some(rev) = &revision {
            if rev.starts_with('/') || rev.split('/').any(|p| p == ".." || p.is_empty()) {
                return Err(invalid("the revision must be a branch, tag or commit hash"));
            }
        }
        if let Some(file) = &file {
            if file.starts_with('/') || file.split('/').any(|p| p == "..") {
                return Err(invalid(
                    "the file must be a relative path inside the repository",
                ));
            }
        }
        Ok(ModelSpec::Hub {
            repo: repo.to_string(),
            revision,
            file,
        })
    }

    /// The name to record in outputs (PEFT's `base_model_name_or_path`, manifests): the hub
    /// repository id, or the path exactly as the user wrote it; never a cache path.
    pub fn portable_name(&self) -> String {
        match self {
            ModelSpec::Local(path) => path.to_string_lossy().into_owned(),
            ModelSpec::Hub { repo, .. } => repo.clone(),
        }
    }

    /// The commit a hub spec was resolved at: the snapshot directory `path` lies in (the
    /// cache's `snapshots/<commit>/`). `None` for a local spec.
    pub fn snapshot_revision(&self, path: &Path) -> Option<String> {
        let ModelSpec::Hub { file, .. } = self else {
            return None;
        };
        let snapshot = match file {
            Some(file) => Path::new(path)
                .ancestors()
                .nth(Path::new(file).components().count())?,
            None => path,
        };
        let parent = snapshot.parent()?;
        (parent.file_name()? == "snapshots")
            .then(|| snapshot.file_name()?.to_str().map(str::to_string))
            .flatten()
    }

    /// This spec pinned to `revision` (the commit model.json recorded); a local spec, or no
    /// revision, leaves it as it is.
    pub fn pinned(self, revision: Option<&str>) -> ModelSpec {
        match (self, revision) {
            (ModelSpec::Hub { repo, file, .. }, Some(commit)) => ModelSpec::Hub {
                repo,
                revision: Some(commit.to_string()),
                file,
            },
            (spec, _) => spec,
        }
    }

    /// Finds the files: relative local paths against `workspace`, hub repositories in the
    /// Hugging Face cache, downloaded into it first when missing unless `HF_HUB_OFFLINE` is
    /// set (see [`HubCache::from_env`]; a cached model costs no network call).
    pub fn resolve(&self, workspace: &Path) -> LlmResult<ResolvedModel> {
        self.resolve_with_cache(workspace, &HubCache::from_env())
    }

    /// [`ModelSpec::resolve`] with an explicit cache and download policy.
    pub fn resolve_with_cache(
        &self,
        workspace: &Path,
        cache: &HubCache,
    ) -> LlmResult<ResolvedModel> {
        let spec = self.to_string();
        let path = match self {
            ModelSpec::Local(path) => workspace.join(path),
            ModelSpec::Hub {
                repo,
                revision,
                file,
            } => {
                let revision = revision.as_deref().unwrap_or("main");
                let snapshot = cache.fetch(&spec, repo, revision, file.as_deref())?;
                match file {
                    Some(file) => snapshot.join(file),
                    None => snapshot,
                }
            }
        };
        classify(&spec, path)
    }
}

/// Decides the format of a resolved path, or explains why it is not a model.
fn classify(spec: &str, path: PathBuf) -> LlmResult<ResolvedModel> {
    let error = |message: String| LlmError::ModelSpec {
        spec: spec.to_string(),
        message,
    };
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(ResolvedModel {
                path,
                format: ModelFormat::HfDir,
            });
        }
        let ggufs = gguf_files_in(&path);
        let hint = match ggufs.as_slice() {
            [] => String::new(),
            files => format!(
                "; it holds GGUF files, name one: {}",
                files
                    .iter()
                    .map(|f| format!("`{spec}:{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return Err(error(format!(
            "{} has no config.json{hint}",
            path.display()
        )));
    }
    if path.is_file() {
        if has_gguf_magic(&path) {
            return Ok(ResolvedModel {
                path,
                format: ModelFormat::Gguf,
            });
        }
        return Err(error(format!(
            "{} is neither a GGUF file nor a model directory (config.json, tokenizer.json, model.safetensors)",
            path.display()
        )));
    }
    let hint = if path.extension().is_some_and(|e| e == "gguf") {
        " (for the demo model, run scripts/fetch-model.sh)"
    } else {
        ""
    };
    Err(error(format!("{} does not exist{hint}", path.display())))
}

fn gguf_files_in(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".gguf"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A file is taken as GGUF by its extension or its magic; a bad magic with a .gguf
/// extension is reported by the GGUF reader with a precise message.
fn has_gguf_magic(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// Stage configs hold a spec as the string the user wrote.
impl Serialize for ModelSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ModelSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ModelSpec::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl FromStr for ModelSpec {
    type Err = LlmError;
    fn from_str(s: &str) -> LlmResult<Self> {
        ModelSpec::parse(s)
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSpec::Local(path) => write!(f, "{}", path.display()),
            ModelSpec::Hub {
                repo,
                revision,
                file,
            } => {
                write!(f, "{HUB_PREFIX}{repo}")?;
                if let Some(rev) = revision {
                    write!(f, "@{rev}")?;
                }
                if let Some(file) = file {
                    write!(f, ":{file}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_specs_know_their_snapshot_commit_and_pin_to_it() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let snapshot = Path::new("/c/models--o--n/snapshots").join(commit);
        let dir = ModelSpec::parse("hf:o/n").unwrap();
        assert_eq!(dir.snapshot_revision(&snapshot).as_deref(), Some(commit));
        let file = ModelSpec::parse("hf:o/n:sub/m.gguf").unwrap();
        let in_file = file.snapshot_revision(&snapshot.join("sub/m.gguf"));
        assert_eq!(in_file.as_deref(), Some(commit));
        let local = ModelSpec::parse("models/m.gguf").unwrap();
        assert_eq!(local.snapshot_revision(Path::new("/w/models/m.gguf")), None);
        assert_eq!(
            dir.pinned(Some(commit)).to_string(),
            format!("hf:o/n@{commit}")
        );
        assert_eq!(
            file.pinned(Some(commit)).to_string(),
            format!("hf:o/n@{commit}:sub/m.gguf")
        );
        assert_eq!(local.clone().pinned(Some(commit)), local);
    }

    #[test]
    fn parses_and_prints_specs() {
        for text in [
            "hf:HuggingFaceTB/SmolLM2-135M-Instruct",
            "hf:org/name@v1.0",
            "hf:org/name@main:sub/model-Q4_1.gguf",
            "models/x.gguf",
        ] {
            assert_eq!(ModelSpec::parse(text).unwrap().to_string(), text);
        }
        let spec = ModelSpec::parse("hf:org/name@abc:m.gguf").unwrap();
        assert_eq!(
            spec,
            ModelSpec::Hub {
                repo: "org/name".into(),
                revision: Some("abc".into()),
                file: Some("m.gguf".into())
            }
        );
        assert_eq!(spec.portable_name(), "org/name");
        assert_eq!(
            ModelSpec::parse("./m/dir").unwrap().portable_name(),
            "./m/dir"
        );
        for bad in [
            "",
            "hf:",
            "hf:name",
            "hf:org/",
            "hf:org/name@",
            "hf:a/b/c",
            "hf:org/name:../x",
        ] {
            assert!(ModelSpec::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn missing_paths_and_cache_entries_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HubCache::new(dir.path().join("hub"));
        let err = ModelSpec::parse("models/none.gguf")
            .unwrap()
            .resolve_with_cache(dir.path(), &cache)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist") && err.contains("fetch-model.sh"),
            "{err}"
        );
        let err = ModelSpec::parse("hf:org/name@dev")
            .unwrap()
            .resolve_with_cache(dir.path(), &cache)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("models--org--name") && err.contains("refs/dev"),
            "{err}"
        );
    }

    #[test]
    fn hub_snapshot_with_only_ggufs_suggests_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let commit = "89abcdef0123456789abcdef0123456789abcdef";
        let repo = dir.path().join("models--org--gguf");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        std::fs::write(
            repo.join("snapshots").join(commit).join("m-Q4.gguf"),
            b"GGUF",
        )
        .unwrap();
        let cache = HubCache::new(dir.path());
        let err = ModelSpec::parse("hf:org/gguf")
            .unwrap()
            .resolve_with_cache(dir.path(), &cache)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`hf:org/gguf:m-Q4.gguf`"), "{err}");
        let resolved = ModelSpec::parse("hf:org/gguf:m-Q4.gguf")
            .unwrap()
            .resolve_with_cache(dir.path(), &cache)
            .unwrap();
        assert_eq!(resolved.format, ModelFormat::Gguf);
    }
}
