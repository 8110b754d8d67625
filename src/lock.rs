//! One `pipe run` at a time per workspace: an OS file lock (released even on SIGKILL) on
//! `artifacts/.lock`, which also records the holder's pid for the second run's message.

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
