//! The artifact store: `artifacts/<stage>/<key>/` with the stage's files and `manifest.json`.
//! Stages write into `artifacts/.tmp/<unique>/`, the manifest is written last, then the
//! directory is renamed into place: a crash never leaves an entry that counts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::digest::hash_file;
use crate::error::{PipeError, Result};
use crate::fingerprint::KeyInputs;

/// The name of the file that makes a directory a committed entry.
pub const MANIFEST: &str = "manifest.json";

/// One output file of a committed entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Relative to the entry directory, `/`-separated.
    pub path: String,
    pub size: u64,
    pub blake3: String,
}

/// What a committed entry is: its key inputs, timings, metrics and output files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub stage: String,
    pub key: String,
    pub pipe_version: String,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub duration_s: f64,
    pub inputs: KeyInputs,
    pub metrics: serde_json::Map<String, serde_json::Value>,
    pub outputs: Vec<OutputFile>,
}

/// A committed entry found in the store.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Entry {
    /// Total bytes of the entry's outputs.
    pub fn size(&self) -> u64 {
        self.manifest.outputs.iter().map(|o| o.size).sum()
    }
}

/// A directory a stage is writing into; removed on drop unless committed.
pub struct Scratch {
    dir: PathBuf,
    committed: bool,
}

impl Scratch {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The artifacts directory of a workspace.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn entry_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(stage).join(key)
    }

    /// Where a long stage keeps checkpoints for this key; survives crashes.
    pub fn partial_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(".partial").join(stage).join(key)
    }

    pub fn digest_cache_path(&self) -> PathBuf {
        self.root.join(".cache").join("digests.json")
    }

    fn tmp_root(&self) -> PathBuf {
        self.root.join(".tmp")
    }

    /// The committed entry for `key`, if its manifest exists and every output is still there.
    pub fn lookup(&self, stage: &str, key: &str) -> Option<Entry> {
        let dir = self.entry_dir(stage, key);
        let manifest = read_manifest(&dir.join(MANIFEST)).ok()?;
        outputs_intact(&dir, &manifest).then_some(Entry { dir, manifest })
    }

    /// Every committed entry of a stage, newest first. Unreadable directories are skipped.
    pub fn entries(&self, stage: &str) -> Vec<Entry> {
        let Ok(read) = std::fs::read_dir(self.root.join(stage)) else {
            return Vec::new();
        };
        let mut entries: Vec<Entry> = read
            .flatten()
            .filter_map(|e| {
                let dir = e.path();
                let manifest = read_manifest(&dir.join(MANIFEST)).ok()?;
                Some(Entry { dir, manifest })
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.manifest.finished_at_ms));
        entries
    }

    /// The most recently committed entry of a stage whose outputs are intact.
    pub fn latest(&self, stage: &str) -> Option<Entry> {
        self.entries(stage)
            .into_iter()
            .find(|e| outputs_intact(&e.dir, &e.manifest))
    }

    /// A fresh scratch directory for a stage run.
    pub fn scratch(&self) -> Result<Scratch> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-{}-{}",
            std::process::id(),
            now_ms(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = self.tmp_root().join(name);
        std::fs::create_dir_all(&dir).map_err(|e| PipeError::io(&dir, e))?;
        Ok(Scratch {
            dir,
            committed: false,
        })
    }

    /// Removes scratch directories left by killed runs. Call only while holding the lock.
    pub fn clean_scratch(&self) -> Result<()> {
        let tmp = self.tmp_root();
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| PipeError::io(&tmp, e))?;
        }
        Ok(())
    }

    /// Digests the outputs, writes the manifest last, and renames the scratch into place,
    /// replacing an existing entry with the same key (a forced re-run).
    pub fn commit(&self, mut scratch: Scratch, mut manifest: Manifest) -> Result<Entry> {
        manifest.outputs = describe_outputs(scratch.dir())?;
        write_json(&scratch.dir().join(MANIFEST), &manifest)?;
        let dest = self.entry_dir(&manifest.stage, &manifest.key);
        let parent = dest.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(parent).map_err(|e| PipeError::io(parent, e))?;
        if dest.exists() {
            let old = self
                .tmp_root()
                .join(format!("replaced-{}-{}", manifest.key, now_ms()));
            std::fs::rename(&dest, &old).map_err(|e| PipeError::io(&dest, e))?;
            let _ = std::fs::remove_dir_all(&old);
        }
        std::fs::rename(scratch.dir(), &dest).map_err(|e| PipeError::io(&dest, e))?;
        scratch.committed = true;
        Ok(Entry {
            dir: dest,
            manifest,
        })
    }

    /// Deletes an entry: the manifest first, so a crash mid-way leaves nothing that counts.
    pub fn remove(&self, entry: &Entry) -> Result<()> {
        let manifest = entry.dir.join(MANIFEST);
        if manifest.exists() {
            std::fs::remove_file(&manifest).map_err(|e| PipeError::io(&manifest, e))?;
        }
        std::fs::remove_dir_all(&entry.dir).map_err(|e| PipeError::io(&entry.dir, e))
    }
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    let bytes = std::fs::read(path).map_err(|e| PipeError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| PipeError::Store {
        path: path.to_path_buf(),
        message: format!("unreadable manifest ({e}); `pipe gc` removes such entries"),
    })
}

/// Every output still present with its recorded size (a cheap stat, never a re-hash).
fn outputs_intact(dir: &Path, manifest: &Manifest) -> bool {
    manifest.outputs.iter().all(|o| {
        std::fs::metadata(dir.join(&o.path))
            .map(|m| m.len() == o.size)
            .unwrap_or(false)
    })
}

fn describe_outputs(dir: &Path) -> Result<Vec<OutputFile>> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    files
        .into_iter()
        .map(|rel| {
            let path = dir.join(&rel);
            let size = std::fs::metadata(&path)
                .map_err(|e| PipeError::io(&path, e))?
                .len();
            Ok(OutputFile {
                path: rel,
                size,
                blake3: hash_file(&path)?,
            })
        })
        .collect()
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| PipeError::io(dir, e))? {
        let path = entry.map_err(|e| PipeError::io(dir, e))?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(rel.join("/"));
        }
    }
    Ok(())
}

/// Writes JSON through a temp file and a rename.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| PipeError::Store {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| PipeError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| PipeError::io(path, e))
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `2026-11-22 03:40:12 UTC` from unix milliseconds (no time-zone database needed).
pub fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::CACHE_FORMAT;
    use std::collections::BTreeMap;

    fn manifest(key: &str, finished: u64) -> Manifest {
        Manifest {
            stage: "s".into(),
            key: key.into(),
            pipe_version: "test".into(),
            started_at_ms: finished,
            finished_at_ms: finished,
            duration_s: 0.0,
            inputs: KeyInputs {
                cache_format: CACHE_FORMAT,
                stage: "s".into(),
                version: 1,
                seed: 1,
                config: serde_json::json!({}),
                upstream: BTreeMap::new(),
                inputs: BTreeMap::new(),
            },
            metrics: Default::default(),
            outputs: vec![],
        }
    }

    #[test]
    fn commit_makes_an_entry_and_scratch_alone_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf());
        let scratch = store.scratch().unwrap();
        std::fs::write(scratch.dir().join("out.txt"), "data").unwrap();
        assert!(store.lookup("s", "k1").is_none());
        let entry = store.commit(scratch, manifest("k1", 1)).unwrap();
        assert_eq!(entry.manifest.outputs.len(), 1);
        assert_eq!(entry.manifest.outputs[0].path, "out.txt");
        assert!(store.lookup("s", "k1").is_some());

        // a lost output makes the entry a miss
        std::fs::remove_file(entry.dir.join("out.txt")).unwrap();
        assert!(store.lookup("s", "k1").is_none());
    }

    #[test]
    fn dropped_scratch_is_removed_and_latest_is_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf());
        let path = {
            let s = store.scratch().unwrap();
            s.dir().to_path_buf()
        };
        assert!(!path.exists());
        store
            .commit(store.scratch().unwrap(), manifest("old", 1))
            .unwrap();
        store
            .commit(store.scratch().unwrap(), manifest("new", 2))
            .unwrap();
        assert_eq!(store.latest("s").unwrap().manifest.key, "new");
        // replacing an entry with the same key works (forced re-run)
        store
            .commit(store.scratch().unwrap(), manifest("old", 3))
            .unwrap();
        assert_eq!(store.latest("s").unwrap().manifest.key, "old");
        assert_eq!(store.entries("s").len(), 2);
    }

    #[test]
    fn formats_times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_795_000_000_000), "2026-11-18 11:06:40 UTC");
    }
}
