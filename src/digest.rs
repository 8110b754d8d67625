//! Content digests of external inputs, cached by (path, size, mtime, ctime, inode) so that a
//! no-op run never re-reads unchanged files (DVC's well-known pain: re-hashing big files on every
//! status). ctime is there as in git's index: `cp -p` of a same-size file keeps the mtime but not
//! the ctime, and no tool can set the ctime back.

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
    /// Absent in caches written before it was recorded: such an entry never matches.
    #[serde(default)]
    ctime_ns: Option<i128>,
    inode: u64,
    digest: String,
}

impl Stamp {
    fn matches(&self, stat: &FileStat) -> bool {
        self.size == stat.size
            && self.mtime_ns == stat.mtime_ns
            && self.ctime_ns == Some(stat.ctime_ns)
            && self.inode == stat.inode
    }
}

/// What a stat says about a file, all of which must be unchanged to trust a cached digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStat {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
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
        let stat = file_stat(&meta);
        if let Some(s) = self.entries.get(&key) {
            if s.matches(&stat) {
                return Ok(s.digest.clone());
            }
        }
        let digest = hash_file(path)?;
        self.entries.insert(
            key,
            Stamp {
                size: stat.size,
                mtime_ns: stat.mtime_ns,
                ctime_ns: Some(stat.ctime_ns),
                inode: stat.inode,
                digest: digest.clone(),
            },
        );
        self.dirty = true;
        Ok(digest)
    }

    /// The digest of `path` when it is a regular file, `None` when it does not exist or is not a
    /// file: for paths that are part of a key only when they name a file (a judge's argv).
    pub fn digest_if_file(&mut self, path: &Path) -> Result<Option<String>> {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => self.digest(path).map(Some),
            _ => Ok(None),
        }
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
fn file_stat(meta: &Metadata) -> FileStat {
    use std::os::unix::fs::MetadataExt;
    let ns = |secs: i64, nsec: i64| secs as i128 * 1_000_000_000 + nsec as i128;
    FileStat {
        size: meta.size(),
        mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
        ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        inode: meta.ino(),
    }
}

#[cfg(not(unix))]
fn file_stat(meta: &Metadata) -> FileStat {
    let ns = |t: std::io::Result<std::time::SystemTime>| {
        t.ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0)
    };
    FileStat {
        size: meta.len(),
        mtime_ns: ns(meta.modified()),
        ctime_ns: ns(meta.created()),
        inode: 0,
    }
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

    /// Issue 16: `cp -p` of a same-size file over the dataset kept it "cached": size, mtime
    /// and inode were unchanged. The ctime is not, and no tool can set it back.
    #[cfg(unix)]
    #[test]
    fn a_same_size_copy_keeping_the_mtime_is_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data.csv");
        let other = dir.path().join("other.csv");
        std::fs::write(&data, "a,b\n1,2\n").unwrap();
        std::fs::write(&other, "a,b\n3,4\n").unwrap();
        // One mtime for both, so that `cp -p` brings back the one the cache saw.
        let when =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for path in [&data, &other] {
            let file = std::fs::File::options().write(true).open(path).unwrap();
            file.set_modified(when).unwrap();
        }
        let mut cache = DigestCache::load(dir.path().join("c.json"));
        let before = cache.digest(&data).unwrap();
        // The ctime has a clock tick's resolution; make sure it moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let status = std::process::Command::new("cp")
            .arg("-p")
            .arg(&other)
            .arg(&data)
            .status()
            .unwrap();
        assert!(status.success());
        let meta = std::fs::metadata(&data).unwrap();
        let stamp = &cache.entries[&std::fs::canonicalize(&data).unwrap()];
        let stat = file_stat(&meta);
        assert_eq!(
            (stat.size, stat.mtime_ns, stat.inode),
            (stamp.size, stamp.mtime_ns, stamp.inode),
            "cp -p must reproduce the old (size, mtime, inode) for this test to mean anything"
        );
        let after = cache.digest(&data).unwrap();
        assert_ne!(before, after);
        assert_eq!(after, blake3::hash(b"a,b\n3,4\n").to_hex().to_string());
    }

    #[test]
    fn a_cache_without_ctimes_is_rehashed_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.txt");
        std::fs::write(&file, "hello").unwrap();
        let cache_path = dir.path().join("c.json");
        let mut cache = DigestCache::load(cache_path.clone());
        cache.digest(&file).unwrap();
        cache.save().unwrap();
        let old = std::fs::read_to_string(&cache_path).unwrap();
        let old = old.replace(",\"ctime_ns\":", ",\"x\":");
        std::fs::write(&cache_path, old).unwrap();
        let mut reloaded = DigestCache::load(cache_path);
        assert_eq!(reloaded.entries.len(), 1, "an old cache still loads");
        reloaded.digest(&file).unwrap();
        assert!(reloaded.dirty, "an entry without a ctime is re-hashed");
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
