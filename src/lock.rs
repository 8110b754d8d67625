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
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let pid = if pid.is_empty() { "unknown" } else { pid };
                return Err(PipeError::Locked {
                    pid: pid.to_string(),
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

fn write_pid(file: &mut File) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    write!(file, "{}", std::process::id())?;
    file.flush()
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
}
