//! The artifact store: `artifacts/<stage>/<key>/` with the stage's files and `manifest.json`.
//! Stages write into `artifacts/.tmp/<unique>/`; the files are synced, the manifest is written
//! and synced last, then the directory is synced, renamed into place and its parent synced: a
//! crash (or a power cut) never leaves an entry that counts but is incomplete.
//!
//! An entry's identity is its directory name: a manifest whose key disagrees, an output that is
//! missing or has another size (a stat), or, when verified, another blake3 digest (a read) makes
//! it corrupt. A corrupt entry found by a run is marked (`CORRUPT` holds the reason, the
//! manifest is renamed aside), so it never counts again until it is rebuilt.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::digest::hash_file;
use crate::error::{PipeError, Result};
use crate::fingerprint::KeyInputs;

/// The name of the file that makes a directory a committed entry.
pub const MANIFEST: &str = "manifest.json";
/// What a marked corrupt entry's manifest is renamed to (kept for a post-mortem).
pub const CORRUPT_MANIFEST: &str = "manifest.corrupt.json";
/// The reason an entry was marked corrupt.
pub const CORRUPT_MARK: &str = "CORRUPT";

/// Why an entry that exists cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error("unreadable manifest: {0}")]
    UnreadableManifest(String),
    #[error("its manifest names key `{manifest}`, not its directory's `{dir}`")]
    KeyMismatch { dir: String, manifest: String },
    #[error("{path} is missing")]
    MissingOutput { path: String },
    #[error("{path} has {found} bytes, the manifest says {expected}")]
    SizeMismatch {
        path: String,
        expected: u64,
        found: u64,
    },
    #[error("{path} does not match its blake3 digest in the manifest")]
    DigestMismatch { path: String },
    #[error("{path} cannot be read: {message}")]
    Unreadable { path: String, message: String },
    #[error("no manifest (an interrupted commit or removal)")]
    NoManifest,
    #[error("marked corrupt: {0}")]
    Marked(String),
}

/// What the store holds for one key.
#[derive(Debug, Clone)]
pub enum Inspection {
    /// No directory for the key.
    Missing,
    /// A directory that is not a usable entry.
    Corrupt {
        dir: PathBuf,
        corruption: Corruption,
    },
    /// A committed entry whose outputs are present with their sizes (not re-hashed).
    Intact(Box<Entry>),
}

/// One directory under an instance's directory: an entry, or why it is not one.
#[derive(Debug, Clone)]
pub enum Found {
    /// Boxed: an entry (its manifest) is several times the size of the other variant.
    Entry(Box<Entry>),
    Corrupt {
        dir: PathBuf,
        /// The directory name: the key it would be the entry of.
        key: String,
        corruption: Corruption,
    },
}

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

    /// The committed entry for `key`, if its manifest exists, names this key, and every output
    /// is still there with its size.
    pub fn lookup(&self, stage: &str, key: &str) -> Option<Entry> {
        match self.inspect(stage, key) {
            Inspection::Intact(entry) => Some(*entry),
            _ => None,
        }
    }

    /// What the store holds for `key`: nothing, a corrupt directory (and why), or an entry.
    /// Cheap: reads the manifest and stats the outputs.
    pub fn inspect(&self, stage: &str, key: &str) -> Inspection {
        let dir = self.entry_dir(stage, key);
        if !dir.is_dir() {
            return Inspection::Missing;
        }
        match open_entry(&dir, key) {
            Ok(entry) => Inspection::Intact(Box::new(entry)),
            Err(corruption) => Inspection::Corrupt { dir, corruption },
        }
    }

    /// Every instance with a directory in the store (in the pipeline or not), sorted.
    pub fn instances(&self) -> Result<Vec<String>> {
        subdirs(&self.root)
    }

    /// Every directory of an instance: its entries (newest first) and its corrupt directories.
    pub fn scan(&self, stage: &str) -> Vec<Found> {
        let Ok(read) = std::fs::read_dir(self.root.join(stage)) else {
            return Vec::new();
        };
        let mut found: Vec<Found> = read
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| {
                let dir = e.path();
                let key = e.file_name().to_string_lossy().into_owned();
                match open_entry(&dir, &key) {
                    Ok(entry) => Found::Entry(Box::new(entry)),
                    Err(corruption) => Found::Corrupt {
                        dir,
                        key,
                        corruption,
                    },
                }
            })
            .collect();
        found.sort_by_key(|f| match f {
            Found::Entry(e) => std::cmp::Reverse(e.manifest.finished_at_ms),
            Found::Corrupt { .. } => std::cmp::Reverse(0),
        });
        found
    }

    /// Every intact entry of a stage, newest first.
    pub fn entries(&self, stage: &str) -> Vec<Entry> {
        self.scan(stage)
            .into_iter()
            .filter_map(|f| match f {
                Found::Entry(e) => Some(*e),
                Found::Corrupt { .. } => None,
            })
            .collect()
    }

    /// The most recently committed entry of a stage whose outputs are intact.
    pub fn latest(&self, stage: &str) -> Option<Entry> {
        self.entries(stage).into_iter().next()
    }

    /// Re-hashes every output of `entry` and compares it with the manifest (blake3,
    /// multi-threaded: several GB/s). Use before trusting the bytes, not for a status.
    pub fn verify(&self, entry: &Entry) -> Result<(), Corruption> {
        outputs_intact(&entry.dir, &entry.manifest)?;
        for output in &entry.manifest.outputs {
            let path = entry.dir.join(&output.path);
            let digest = hash_file(&path).map_err(|e| Corruption::Unreadable {
                path: output.path.clone(),
                message: e.to_string(),
            })?;
            if digest != output.blake3 {
                return Err(Corruption::DigestMismatch {
                    path: output.path.clone(),
                });
            }
        }
        Ok(())
    }

    /// Marks the entry in `dir` corrupt so that it never counts again (until a run rebuilds
    /// it): the reason goes into `CORRUPT`, the manifest is renamed aside. Call while holding
    /// the lock.
    pub fn mark_corrupt(&self, dir: &Path, corruption: &Corruption) -> Result<()> {
        let mark = dir.join(CORRUPT_MARK);
        write_synced(&mark, format!("{corruption}\n").as_bytes())?;
        let manifest = dir.join(MANIFEST);
        if manifest.exists() {
            let aside = dir.join(CORRUPT_MANIFEST);
            std::fs::rename(&manifest, &aside).map_err(|e| PipeError::io(&manifest, e))?;
        }
        sync_dir(dir)
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

    /// Digests and syncs the outputs, writes and syncs the manifest last, syncs the directory,
    /// and renames the scratch into place (then syncs the parent), replacing an existing entry
    /// with the same key (a forced re-run, or one that was corrupt).
    pub fn commit(&self, mut scratch: Scratch, mut manifest: Manifest) -> Result<Entry> {
        manifest.outputs = describe_outputs(scratch.dir())?;
        let manifest_path = scratch.dir().join(MANIFEST);
        write_synced(&manifest_path, &json_bytes(&manifest_path, &manifest)?)?;
        sync_tree_dirs(scratch.dir())?;
        let dest = self.entry_dir(&manifest.stage, &manifest.key);
        let parent = dest.parent().unwrap_or(&self.root);
        if !parent.exists() {
            std::fs::create_dir_all(parent).map_err(|e| PipeError::io(parent, e))?;
            sync_dir(&self.root)?;
        }
        if dest.exists() {
            let old = self
                .tmp_root()
                .join(format!("replaced-{}-{}", manifest.key, now_ms()));
            std::fs::rename(&dest, &old).map_err(|e| PipeError::io(&dest, e))?;
            let _ = std::fs::remove_dir_all(&old);
        }
        std::fs::rename(scratch.dir(), &dest).map_err(|e| PipeError::io(&dest, e))?;
        scratch.committed = true;
        sync_dir(parent)?;
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

/// Names of the non-hidden subdirectories of `root`, sorted; none if it does not exist.
pub fn subdirs(root: &Path) -> Result<Vec<String>> {
    let Ok(read) = std::fs::read_dir(root) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| PipeError::io(root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && !name.starts_with('.') {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    let bytes = std::fs::read(path).map_err(|e| PipeError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| PipeError::Store {
        path: path.to_path_buf(),
        message: format!("unreadable manifest ({e})"),
    })
}

/// The entry in `dir` if it is one for `key`: a readable manifest naming that key, and every
/// output present with its size.
fn open_entry(dir: &Path, key: &str) -> Result<Entry, Corruption> {
    let manifest_path = dir.join(MANIFEST);
    if !manifest_path.exists() {
        return Err(match std::fs::read_to_string(dir.join(CORRUPT_MARK)) {
            Ok(reason) => Corruption::Marked(reason.trim().to_string()),
            Err(_) => Corruption::NoManifest,
        });
    }
    let manifest = read_manifest(&manifest_path).map_err(|e| match e {
        PipeError::Store { message, .. } => Corruption::UnreadableManifest(message),
        other => Corruption::UnreadableManifest(other.to_string()),
    })?;
    if manifest.key != key {
        return Err(Corruption::KeyMismatch {
            dir: key.to_string(),
            manifest: manifest.key,
        });
    }
    outputs_intact(dir, &manifest)?;
    Ok(Entry {
        dir: dir.to_path_buf(),
        manifest,
    })
}

/// Every output still present with its recorded size (a cheap stat, never a re-hash).
fn outputs_intact(dir: &Path, manifest: &Manifest) -> Result<(), Corruption> {
    for o in &manifest.outputs {
        let found = match std::fs::metadata(dir.join(&o.path)) {
            Ok(meta) => meta.len(),
            Err(_) => {
                return Err(Corruption::MissingOutput {
                    path: o.path.clone(),
                })
            }
        };
        if found != o.size {
            return Err(Corruption::SizeMismatch {
                path: o.path.clone(),
                expected: o.size,
                found,
            });
        }
    }
    Ok(())
}

/// Names, sizes and digests of every file under `dir`; each file is synced to disk on the way
/// (it is open for hashing anyway).
fn describe_outputs(dir: &Path) -> Result<Vec<OutputFile>> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    files
        .into_iter()
        .map(|rel| {
            let path = dir.join(&rel);
            let file = std::fs::File::open(&path).map_err(|e| PipeError::io(&path, e))?;
            file.sync_all().map_err(|e| PipeError::io(&path, e))?;
            let size = file.metadata().map_err(|e| PipeError::io(&path, e))?.len();
            Ok(OutputFile {
                path: rel,
                size,
                blake3: hash_file(&path)?,
            })
        })
        .collect()
}

/// Syncs `root` and every directory below it (deepest first), so that the names of the
/// files they hold survive a power cut.
fn sync_tree_dirs(root: &Path) -> Result<()> {
    for entry in std::fs::read_dir(root).map_err(|e| PipeError::io(root, e))? {
        let path = entry.map_err(|e| PipeError::io(root, e))?.path();
        if path.is_dir() {
            sync_tree_dirs(&path)?;
        }
    }
    sync_dir(root)
}

/// fsync on a directory makes the renames and creations inside it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let handle = std::fs::File::open(dir).map_err(|e| PipeError::io(dir, e))?;
    match handle.sync_all() {
        Ok(()) => Ok(()),
        // Some filesystems cannot sync a directory; their renames are as durable as they get.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(PipeError::io(dir, e)),
    }
}

/// Writes `bytes` to `path` and syncs them before returning.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| PipeError::io(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| PipeError::io(path, e))
}

fn json_bytes(path: &Path, value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(|e| PipeError::Store {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
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

/// Writes JSON through a synced temp file and a rename.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = json_bytes(path, value)?;
    let tmp = path.with_extension("json.tmp");
    write_synced(&tmp, &bytes)?;
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
                environment: BTreeMap::new(),
                reads: BTreeMap::new(),
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
