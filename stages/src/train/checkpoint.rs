//! Training checkpoints in a stage's partial directory: a JSON state plus named tensors (LoRA
//! weights, optimizer moments), written atomically. A new checkpoint is assembled in a temp
//! directory and renamed into place, so a crash at any moment leaves either the previous
//! complete checkpoint or the new one, never a mix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The directory of the current checkpoint inside the partial directory.
pub const CHECKPOINT_DIR: &str = "checkpoint";
const STATE_FILE: &str = "state.json";
const TENSORS_FILE: &str = "tensors.safetensors";
/// The previous checkpoint, between the two renames that replace it.
const OLD_DIR: &str = "checkpoint.old";
const TMP_DIR: &str = "checkpoint.tmp";

/// Why a checkpoint could not be written or read; names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {}: {message}; delete the directory to start over", path.display())]
    Bad { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A checkpoint read back: the caller's state and the tensors by name.
#[derive(Debug)]
pub struct Loaded<S> {
    pub state: S,
    pub tensors: HashMap<String, Tensor>,
    pub dir: PathBuf,
}

/// Writes `state` and `tensors` as the checkpoint of `partial`, replacing the previous one.
pub fn save<S: Serialize>(
    partial: &Path,
    state: &S,
    tensors: &[(String, Tensor)],
) -> Result<PathBuf, CheckpointError> {
    let tmp = partial.join(TMP_DIR);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let tensors_path = tmp.join(TENSORS_FILE);
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| bad(&tensors_path, e))?;
    candle_core::safetensors::save(&map, &tensors_path).map_err(|e| bad(&tensors_path, e))?;
    sync_file(&tensors_path)?;
    let state_path = tmp.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).map_err(|e| bad(&state_path, e))?;
    // The state is written last: a directory with a state file has all its tensors. Both are
    // synced before the renames, so a power cut cannot leave a checkpoint of empty files.
    std::fs::write(&state_path, text).map_err(io(&state_path))?;
    sync_file(&state_path)?;
    sync_dir(&tmp);

    let current = partial.join(CHECKPOINT_DIR);
    let old = partial.join(OLD_DIR);
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    if current.exists() {
        std::fs::rename(&current, &old).map_err(io(&current))?;
    }
    std::fs::rename(&tmp, &current).map_err(io(&current))?;
    sync_dir(partial);
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(current)
}

/// The checkpoint of `partial`, if there is one (the previous one when a crash interrupted
/// the swap between the two renames of [`save`]).
pub fn load<S: DeserializeOwned>(
    partial: &Path,
    device: &Device,
) -> Result<Option<Loaded<S>>, CheckpointError> {
    let dir = [CHECKPOINT_DIR, OLD_DIR]
        .iter()
        .map(|d| partial.join(d))
        .find(|d| d.join(STATE_FILE).is_file());
    let Some(dir) = dir else {
        return Ok(None);
    };
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let state = serde_json::from_str(&text).map_err(|e| bad(&state_path, e))?;
    let tensors_path = dir.join(TENSORS_FILE);
    let tensors =
        candle_core::safetensors::load(&tensors_path, device).map_err(|e| bad(&tensors_path, e))?;
    Ok(Some(Loaded {
        state,
        tensors,
        dir,
    }))
}

/// Removes every checkpoint of `partial` (a run that must start over).
pub fn clear(partial: &Path) -> Result<(), CheckpointError> {
    for d in [CHECKPOINT_DIR, OLD_DIR, TMP_DIR] {
        let dir = partial.join(d);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
    }
    Ok(())
}

fn bad(path: &Path, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Bad {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Forces a written file's bytes to disk.
fn sync_file(path: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

/// Best effort: make the renames durable (not all filesystems support syncing a directory).
fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct State {
        step: usize,
    }

    #[test]
    fn saves_replaces_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        assert!(load::<State>(dir.path(), &dev).unwrap().is_none());
        let t = Tensor::new(&[1f32, 2.0, 3.0], &dev).unwrap();
        save(dir.path(), &State { step: 1 }, &[("w".into(), t.clone())]).unwrap();
        save(
            dir.path(),
            &State { step: 2 },
            &[("w".into(), (t * 2.0).unwrap())],
        )
        .unwrap();
        let loaded = load::<State>(dir.path(), &dev).unwrap().unwrap();
        assert_eq!(loaded.state, State { step: 2 });
        assert_eq!(
            loaded.tensors["w"].to_vec1::<f32>().unwrap(),
            vec![2.0, 4.0, 6.0]
        );
        assert!(!dir.path().join(OLD_DIR).exists() && !dir.path().join(TMP_DIR).exists());
    }

    #[test]
    fn a_crash_between_the_renames_keeps_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let t = Tensor::new(&[1f32], &dev).unwrap();
        save(dir.path(), &State { step: 4 }, &[("w".into(), t)]).unwrap();
        // As if killed after moving the current checkpoint aside, with a half-written new one.
        std::fs::rename(dir.path().join(CHECKPOINT_DIR), dir.path().join(OLD_DIR)).unwrap();
        std::fs::create_dir_all(dir.path().join(TMP_DIR)).unwrap();
        let loaded = load::<State>(dir.path(), &dev).unwrap().unwrap();
        assert_eq!(loaded.state, State { step: 4 });
        clear(dir.path()).unwrap();
        assert!(load::<State>(dir.path(), &dev).unwrap().is_none());
    }

    #[test]
    fn a_corrupt_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join(CHECKPOINT_DIR);
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::write(ck.join(STATE_FILE), "{not json").unwrap();
        let err = load::<State>(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("state.json"), "{err}");
    }
}
