//! One `pipe run` at a time per workspace: an OS file lock (released even on SIGKILL) on
//! `artifacts/.lock`, which also records the holder's pid for the second run's message.
//! A holder that runs its stages as batch jobs lends them the lock: it writes a secret to
//! `artifacts/.lock.token`, passes it to its jobs, and a job that shows it works under the
//! holder's lock while the holder waits (any other `pipe run` is still refused).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{PipeError, Result};

/// Held for the lifetime of a run; the OS releases it when the process ends, however it ends.
#[derive(Debug)]
pub struct WorkspaceLock {
    _file: File,
    path: PathBuf,
}

impl WorkspaceLock {
    /// Takes the lock in `artifacts_dir`, or says which pid holds it.
    pub fn acquire(artifacts_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(artifacts_dir).map_err(|e| PipeError::io(artifacts_dir, e))?;
        let path = artifacts_dir.join(".lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| PipeError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(PipeError::Locked {
                    pid: holder_pid(&mut file),
                    path,
                });
            }
            Err(TryLockError::Error(e)) => return Err(PipeError::io(&path, e)),
        }
        write_pid(&mut file).map_err(|e| PipeError::io(&path, e))?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh secret that lets this holder's jobs work under its lock ([`join`]); written
    /// (owner-readable only, synced) to `.lock.token` beside the lock.
    pub fn lend(&self) -> Result<String> {
        let token = fresh_token();
        let path = token_path(&self.path);
        write_token(&path, &token).map_err(|e| PipeError::io(&path, e))?;
        Ok(token)
    }
}

/// How a run holds the workspace.
#[derive(Debug)]
pub enum RunLock {
    /// It took the lock itself.
    Held(WorkspaceLock),
    /// A batch job working under the lock of the run that submitted it.
    Lent,
}

impl RunLock {
    pub fn is_lent(&self) -> bool {
        matches!(self, RunLock::Lent)
    }

    /// The lock itself, when this run holds it.
    pub fn held(&self) -> Option<&WorkspaceLock> {
        match self {
            RunLock::Held(lock) => Some(lock),
            RunLock::Lent => None,
        }
    }
}

/// For a batch job given `token`: works under the submitter's lock if the lock is held and
/// the token is the holder's; takes the lock itself if nobody holds it (the submitter is
/// gone); otherwise refused like any second run.
pub fn join(artifacts_dir: &Path, token: &str) -> Result<RunLock> {
    match WorkspaceLock::acquire(artifacts_dir) {
        Ok(lock) => Ok(RunLock::Held(lock)),
        Err(PipeError::Locked { pid, path }) => {
            let lent = std::fs::read_to_string(token_path(&path)).unwrap_or_default();
            if !token.is_empty() && lent.trim() == token {
                Ok(RunLock::Lent)
            } else {
                Err(PipeError::Locked { pid, path })
            }
        }
        Err(other) => Err(other),
    }
}

fn token_path(lock: &Path) -> PathBuf {
    lock.with_extension("token")
}

/// 32 hex digits no other run can guess: blake3 over kernel randomness, the pid and the clock.
fn fresh_token() -> String {
    let mut hasher = blake3::Hasher::new();
    let mut random = [0u8; 32];
    if let Ok(mut urandom) = File::open("/dev/urandom") {
        let _ = urandom.read_exact(&mut random);
    }
    hasher.update(&random);
    hasher.update(&std::process::id().to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.update(&now.to_le_bytes());
    hasher.finalize().to_hex()[..32].to_string()
}

fn write_token(path: &Path, token: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()
}

/// How many bytes the pid record takes: always the same, so a new holder overwrites the old
/// record in one write and a reader never sees an emptied file.
const PID_RECORD: usize = 20;

/// Writes our pid over the previous holder's, in place (never truncating first: a second run
/// reading between a truncation and the write would see no pid at all).
fn write_pid(file: &mut File) -> std::io::Result<()> {
    let record = pid_record(std::process::id());
    file.seek(SeekFrom::Start(0))?;
    file.write_all(record.as_bytes())?;
    file.set_len(PID_RECORD as u64)?;
    file.flush()
}

/// `1234` left-aligned in [`PID_RECORD`] bytes, newline-terminated.
fn pid_record(pid: u32) -> String {
    format!("{pid:<width$}\n", width = PID_RECORD - 1)
}

/// The pid the holder wrote. A holder that has only just taken the lock may not have written
/// it yet: the file is re-read for a moment before saying "unknown".
fn holder_pid(file: &mut File) -> String {
    for _ in 0..50 {
        let mut text = String::new();
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut text));
        let pid = text.trim();
        if read.is_ok() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
            return pid.to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    "unknown".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = WorkspaceLock::acquire(dir.path()).unwrap();
        let err = WorkspaceLock::acquire(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        WorkspaceLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_job_with_the_holders_token_works_under_its_lock_and_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let holder = WorkspaceLock::acquire(dir.path()).unwrap();
        let token = holder.lend().unwrap();
        assert!(join(dir.path(), &token).unwrap().is_lent());
        let err = join(dir.path(), "not-the-token").unwrap_err();
        assert!(matches!(err, PipeError::Locked { .. }), "{err}");
        assert!(WorkspaceLock::acquire(dir.path()).is_err());
        drop(holder);
        // The holder is gone: a late job takes the lock itself.
        assert!(!join(dir.path(), &token).unwrap().is_lent());
    }

    /// Issue 16: a refusal said "pid unknown" because the holder emptied the lock file before
    /// writing its pid. A reader racing with holders that rewrite their pid must always find one.
    #[test]
    fn the_pid_is_never_missing_while_a_holder_rewrites_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        std::fs::write(&path, pid_record(4_194_304)).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut file = OpenOptions::new().write(true).open(&path).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    write_pid(&mut file).unwrap();
                }
            })
        };
        let mut reader = File::open(&path).unwrap();
        for _ in 0..20_000 {
            let mut text = String::new();
            reader.seek(SeekFrom::Start(0)).unwrap();
            reader.read_to_string(&mut text).unwrap();
            let pid = text.trim();
            assert!(
                !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()),
                "a reader saw {text:?}"
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
    }
}
