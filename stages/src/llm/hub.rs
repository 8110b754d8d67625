//! Finds models in the local Hugging Face hub cache (the layout `huggingface_hub` and the
//! hf-hub crate share: `models--org--name/{refs,snapshots,blobs}`), so `hf:org/name` works
//! offline once downloaded, without pipe keeping its own copy.

use std::path::{Path, PathBuf};

use super::error::{LlmError, LlmResult};

/// The root of a Hugging Face hub cache (`~/.cache/huggingface/hub` by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    root: PathBuf,
}

impl HubCache {
    /// A cache at an explicit root.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HubCache { root: root.into() }
    }

    /// The cache `huggingface_hub` would use: `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`,
    /// `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`, then `~/.cache/huggingface/hub`.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .or_else(|| var("HF_HOME").map(|home| home.join("hub")))
            .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
            .or_else(|| var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        HubCache { root }
    }

    /// True when `HF_HUB_OFFLINE` asks for no network access.
    pub fn offline_from_env() -> bool {
        std::env::var("HF_HUB_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false)
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cache folder of a model repository (`models--org--name`).
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The snapshot directory of `repo` at `revision` (a branch, tag or commit hash), if
    /// it has been downloaded.
    pub fn snapshot(&self, repo: &str, revision: &str) -> LlmResult<Option<PathBuf>> {
        let repo_dir = self.repo_dir(repo);
        let commit = if is_commit_hash(revision) {
            revision.to_string()
        } else {
            let ref_file = repo_dir.join("refs").join(revision);
            match std::fs::read_to_string(&ref_file) {
                Ok(text) => text.trim().to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(LlmError::io(ref_file, e)),
            }
        };
        if commit.is_empty() || commit.contains(['/', '\\']) || commit == ".." {
            return Err(LlmError::bad_file(
                repo_dir.join("refs").join(revision),
                "does not hold a commit hash",
            ));
        }
        let snapshot = repo_dir.join("snapshots").join(commit);
        Ok(snapshot.is_dir().then_some(snapshot))
    }

    /// The error for a repository that is not in the cache, saying where it was looked for
    /// and how to get it there.
    pub fn not_cached(&self, spec: &str, repo: &str, revision: &str) -> LlmError {
        let offline = if Self::offline_from_env() {
            " (HF_HUB_OFFLINE is set, so nothing is downloaded)"
        } else {
            ""
        };
        LlmError::ModelSpec {
            spec: spec.to_string(),
            message: format!(
                "revision `{revision}` is not in the Hugging Face cache{offline}: looked for {}; \
                 download it with `huggingface-cli download {repo} --revision {revision}` \
                 (or `hf download ...`), or point HF_HUB_CACHE / HF_HOME at the cache that holds it, \
                 or give the model's local directory or .gguf path instead",
                self.repo_dir(repo).join("refs").join(revision).display()
            ),
        }
    }
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_branches_and_commits() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HubCache::new(dir.path());
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo_dir = dir.path().join("models--org--name");
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::create_dir_all(repo_dir.join("snapshots").join(commit)).unwrap();
        std::fs::write(repo_dir.join("refs/main"), format!("{commit}\n")).unwrap();
        let expected = repo_dir.join("snapshots").join(commit);
        assert_eq!(
            cache.snapshot("org/name", "main").unwrap(),
            Some(expected.clone())
        );
        assert_eq!(cache.snapshot("org/name", commit).unwrap(), Some(expected));
        assert_eq!(cache.snapshot("org/name", "v2").unwrap(), None);
        assert_eq!(cache.snapshot("org/other", "main").unwrap(), None);
        let message = cache
            .not_cached("hf:org/other", "org/other", "main")
            .to_string();
        assert!(message.contains("models--org--other"), "{message}");
        assert!(
            message.contains("huggingface-cli download org/other"),
            "{message}"
        );
    }
}
