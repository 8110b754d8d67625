//! Content digests of external inputs, cached by (path, size, mtime, inode) so that a no-op run
//! never re-reads unchanged files (DVC's well-known pain: re-hashing big files on every status).

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{PipeError, Result};

/// What we remember of a file to trust its digest without reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    digest: String,
}

/// The digest cache, persisted at `artifacts/.cache/digests.json`.
#[derive(Debug, Default)]
pub struct DigestCache {
    path: PathBuf,
    entries: BTreeMap<PathBuf, Stamp>,
    dirty: bool,
}

impl DigestCache {
    /// Loads the cache; a missing or unreadable cache is simply empty (it only saves work).
    pub fn load(path: PathBuf) -> Self {
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Self {
            path,
            entries,
            dirty: false,
        }
    }

    /// blake3 digest of a file, or of a directory (its relative file names and file digests).
    pub fn digest(&mut self, path: &Path) -> Result<String> {
        let meta = std::fs::metadata(path).map_err(|e| PipeError::io(path, e))?;
        if meta.is_dir() {
            return self.digest_dir(path);
        }
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let (size, mtime_ns, inode) = stat_triplet(&meta);
        if let Some(s) = self.entries.get(&key) {
            if s.size == size && s.mtime_ns == mtime_ns && s.inode == inode {
                return Ok(s.digest.clone());
            }
        }
        let digest = hash_file(path)?;
        self.entries.insert(
            key,
            Stamp {
                size,
                mtime_ns,
                inode,
                digest: digest.clone(),
            },
        );
        self.dirty = true;
        Ok(digest)
    }

    fn digest_dir(&mut self, dir: &Path) -> Result<String> {
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files)?;
        files.sort();
        let mut hasher = blake3::Hasher::new();
        for rel in files {
            let digest = self.digest(&dir.join(&rel))?;
            hasher.update(rel.to_string_lossy().as_bytes());
            hasher.update(&[0]);
            hasher.update(digest.as_bytes());
            hasher.update(&[0]);
        }
        Ok(hasher.finalize().to_hex().to_string())
    }

    /// Writes the cache back if anything changed (temp file then rename: never a torn file).
    pub fn save(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| PipeError::io(parent, e))?;
        }
        let bytes = serde_json::to_vec(&self.entries).map_err(|e| PipeError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(|e| PipeError::io(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| PipeError::io(&self.path, e))?;
        self.dirty = false;
        Ok(())
    }
}

/// blake3 of a file's bytes, memory-mapped and multi-threaded for big files.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_mmap_rayon(path)
        .map_err(|e| PipeError::io(path, e))?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| PipeError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| PipeError::io(dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}

#[cfg(unix)]
fn stat_triplet(meta: &Metadata) -> (u64, i128, u64) {
    use std::os::unix::fs::MetadataExt;
    let mtime = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
    (meta.size(), mtime, meta.ino())
}

#[cfg(not(unix))]
fn stat_triplet(meta: &Metadata) -> (u64, i128, u64) {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    (meta.len(), mtime, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_digest_is_reused_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.txt");
        std::fs::write(&file, "hello").unwrap();
        let mut cache = DigestCache::load(dir.path().join("cache.json"));
        let d1 = cache.digest(&file).unwrap();
        assert_eq!(d1, blake3::hash(b"hello").to_hex().to_string());
        cache.save().unwrap();

        let mut reloaded = DigestCache::load(dir.path().join("cache.json"));
        assert_eq!(reloaded.digest(&file).unwrap(), d1);
        assert!(!reloaded.dirty, "an unchanged file must not be re-hashed");

        std::fs::write(&file, "hellO").unwrap();
        assert_ne!(reloaded.digest(&file).unwrap(), d1);
    }

    #[test]
    fn directory_digest_covers_names_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        std::fs::write(model.join("a"), "1").unwrap();
        std::fs::write(model.join("sub/b"), "2").unwrap();
        let mut cache = DigestCache::load(dir.path().join("c.json"));
        let d1 = cache.digest(&model).unwrap();
        std::fs::rename(model.join("a"), model.join("a2")).unwrap();
        let d2 = cache.digest(&model).unwrap();
        assert_ne!(d1, d2);
    }

    #[test]
    fn missing_file_names_the_path() {
        let mut cache = DigestCache::default();
        let err = cache.digest(Path::new("/nonexistent/x.csv")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.csv"));
    }
}
