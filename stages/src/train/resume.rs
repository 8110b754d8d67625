//! Resuming a trainer stage from the checkpoint in its partial directory: a checkpoint of
//! another run (other settings, data, base or state format) is cleared and ignored; one of
//! this run sets the LoRA weights and the optimizer back to where it was saved.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::checkpoint::{self, CheckpointError};
use super::step::Trainer;
use crate::llm::{LlamaModel, LlmError};
use crate::progress::Progress;

/// What a trainer's checkpoint state tells about the run it belongs to.
pub trait RunCheckpoint: DeserializeOwned {
    /// The state layout version and the run's fingerprint.
    fn identity(&self) -> (u32, &str);
    /// Optimizer steps completed.
    fn step(&self) -> usize;
}

/// Why a checkpoint could not be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot restore the checkpoint in {}: {source}; delete it to start over", dir.display())]
    Restore {
        dir: PathBuf,
        #[source]
        source: LlmError,
    },
}

/// The run looking for its checkpoint.
pub struct ThisRun<'a> {
    pub stage: &'a str,
    pub partial: &'a Path,
    pub format: u32,
    pub fingerprint: &'a str,
    pub total_steps: usize,
    pub progress: &'a dyn Progress,
}

/// Restores the checkpoint of `run` into `model` and `trainer`, if there is one, and returns
/// its state.
pub fn resume<S: RunCheckpoint>(
    run: &ThisRun<'_>,
    model: &LlamaModel,
    trainer: &mut Trainer,
) -> Result<Option<S>, ResumeError> {
    let Some(loaded) = checkpoint::load::<S>(run.partial, model.device())? else {
        return Ok(None);
    };
    if loaded.state.identity() != (run.format, run.fingerprint) {
        run.progress.info(&format!(
            "{}: ignoring the checkpoint in {} (another run's); starting over",
            run.stage,
            loaded.dir.display()
        ));
        checkpoint::clear(run.partial)?;
        return Ok(None);
    }
    let step = loaded.state.step();
    trainer
        .restore_checkpoint(model, &loaded.tensors, step)
        .map_err(|source| ResumeError::Restore {
            dir: loaded.dir.clone(),
            source,
        })?;
    run.progress.info(&format!(
        "{}: resuming from the checkpoint of step {step} of {} in {}",
        run.stage,
        run.total_steps,
        loaded.dir.display()
    ));
    Ok(Some(loaded.state))
}

/// 16 hex digits identifying a run: the state format, the effective settings, the seed, the
/// base model, any other input (`extra`) and the rows by id and length. A checkpoint of
/// anything else is not resumed.
pub fn fingerprint<'r>(
    format: u32,
    settings: &impl Serialize,
    seed: u64,
    base: &str,
    extra: &[&str],
    rows: impl Iterator<Item = (&'r str, usize)>,
) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&format.to_le_bytes());
    h.update(
        serde_json::to_string(settings)
            .unwrap_or_default()
            .as_bytes(),
    );
    h.update(&seed.to_le_bytes());
    h.update(base.as_bytes());
    for e in extra {
        h.update(e.as_bytes());
    }
    for (id, len) in rows {
        h.update(id.as_bytes());
        h.update(&(len as u64).to_le_bytes());
    }
    h.finalize().to_hex()[..16].to_string()
}
