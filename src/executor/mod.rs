//! Where the stages of a plan run. The runner decides what is stale; an [`Executor`] decides
//! where it runs: `local` (in this process, one stage after another) or `slurm` (one batch job
//! per stage running `pipe run --only NAME` in the same workspace, chained by
//! `--dependency=afterok`). Another batch system (a Kubernetes Job, a Ray task) is one more
//! [`jobs::BatchSystem`]; the runner does not change.

pub mod config;
pub mod jobs;
mod signals;
pub mod slurm;

use std::path::PathBuf;

use crate::error::{PipeError, Result};
use crate::lock::{self, RunLock, WorkspaceLock};
use crate::report::Reporter;
use crate::runner::{execute, Action, Outcome, Plan, Workspace};

pub use config::{ExecutorConfig, ExecutorKind, Resources};

/// Runs the stages of a plan that must run.
pub trait Executor {
    /// Announces the cached, reused and pulled stages, runs the others, reports every event
    /// and the summary; fails with the first stage that failed.
    fn execute(
        &self,
        ws: &Workspace,
        plan: &Plan,
        reporter: &dyn Reporter,
        dry_run: bool,
    ) -> Result<Outcome>;
}

/// This process, one stage after another: the runner's own loop.
pub struct Local;

impl Executor for Local {
    fn execute(
        &self,
        ws: &Workspace,
        plan: &Plan,
        reporter: &dyn Reporter,
        dry_run: bool,
    ) -> Result<Outcome> {
        execute(ws, plan, reporter, dry_run)
    }
}

/// How the submitting `pipe` was invoked: what a job needs to see the same workspace and the
/// same config (hence the same keys).
#[derive(Debug, Clone)]
pub struct JobInvocation {
    /// The pipeline file, absolute.
    pub config: PathBuf,
    /// The `-s` overrides, as typed.
    pub overrides: Vec<String>,
    /// The binary the jobs run (this one: nodes share the filesystem).
    pub program: PathBuf,
}

/// The environment of a job: the lock token, and the key its stage must have.
pub const JOB_TOKEN_ENV: &str = "PIPE_JOB_TOKEN";
pub const JOB_KEY_ENV: &str = "PIPE_JOB_KEY";
/// The number of GPUs a job was given (read by the model stages: `device = "auto"` → CUDA).
pub const GPUS_ENV: &str = pipe_stages::contract::GPUS_ENV;

/// Whether this process is a batch job a `pipe run` submitted.
pub fn in_job() -> bool {
    std::env::var_os(JOB_TOKEN_ENV).is_some()
}

/// Takes the workspace lock for a run: a job works under its submitter's lock (and must not
/// clean the scratch space its sibling jobs write in); any other run takes the lock and
/// removes the scratch directories killed runs left.
pub fn lock_for_run(ws: &Workspace) -> Result<RunLock> {
    if let Ok(token) = std::env::var(JOB_TOKEN_ENV) {
        let lock = lock::join(ws.store.root(), &token)?;
        if !lock.is_lent() {
            ws.store.clean_scratch()?;
        }
        return Ok(lock);
    }
    let lock = WorkspaceLock::acquire(ws.store.root())?;
    ws.store.clean_scratch()?;
    Ok(RunLock::Held(lock))
}

/// In a job: the stage it runs must have the key its submitter planned (a changed input file
/// or config between submission and start would otherwise commit an artifact nobody asked for).
pub fn check_job_plan(plan: &Plan) -> Result<()> {
    let Ok(expected) = std::env::var(JOB_KEY_ENV) else {
        return Ok(());
    };
    let running: Vec<_> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.action, Action::Run(_)))
        .collect();
    match running.as_slice() {
        [step] if step.key == expected => Ok(()),
        [step] => Err(PipeError::Usage(format!(
            "this job was submitted to build `{}` with key {expected}, but its inputs now give key {}: \
             pipeline.toml, an override or an input file changed after submission; run `pipe run` again",
            step.stage, step.key
        ))),
        _ => Ok(()),
    }
}

/// The executor for this run: `--executor`, else `[executor] kind`; always local inside a job.
pub fn choose(
    ws: &Workspace,
    flag: Option<&str>,
    invocation: &JobInvocation,
    lock: Option<&RunLock>,
) -> Result<Box<dyn Executor>> {
    match kind(ws, flag)? {
        ExecutorKind::Local => Ok(Box::new(Local)),
        ExecutorKind::Slurm => Ok(Box::new(slurm_batch(invocation, lock)?)),
    }
}

/// Which executor runs this run's stages: `--executor`, else `[executor] kind`; always local
/// inside a job.
pub fn kind(ws: &Workspace, flag: Option<&str>) -> Result<ExecutorKind> {
    let kind = match flag {
        Some(text) => ExecutorKind::parse(text).ok_or_else(|| {
            PipeError::Usage(format!(
                "--executor {text}: unknown executor; use `local` or `slurm`"
            ))
        })?,
        None => ws.config.executor.kind,
    };
    Ok(if in_job() { ExecutorKind::Local } else { kind })
}

/// The Slurm executor, its jobs lent the run's lock (none in a dry run).
pub fn slurm_batch(
    invocation: &JobInvocation,
    lock: Option<&RunLock>,
) -> Result<jobs::Batch<slurm::Slurm>> {
    let token = match lock.and_then(RunLock::held) {
        Some(held) => Some(held.lend()?),
        None => None,
    };
    Ok(jobs::Batch::new(
        slurm::Slurm::new(),
        invocation.clone(),
        token,
    ))
}
