//! Trust, then verify: before a run lets stages read cached artifacts it re-hashes them against
//! their manifests (blake3 reads several GB/s), so a same-size corruption is rebuilt instead of
//! read; `pipe verify` does the same for the whole store.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::error::{PipeError, Result};
use crate::lock::WorkspaceLock;
use crate::report::Why;
use crate::runner::{Action, Plan, Workspace};
use crate::store::Found;
use crate::ui::{human_bytes, human_duration};

/// Re-hashes the cached artifacts that the stages about to run read. A corrupt one is planned
/// to run again (its artifact marked corrupt when `mark`: a run holding the lock), and the
/// cached artifacts it reads are then checked in turn. A corrupt artifact that a selection
/// reuses although stale cannot be rebuilt as it was: that is an error saying what to run.
pub fn check_reads(ws: &Workspace, plan: &mut Plan, mark: bool) -> Result<()> {
    let index: BTreeMap<&str, usize> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.stage, i))
        .collect();
    let mut verified = BTreeSet::new();
    // Dependencies come first in the plan: walking backwards reaches a stage that has just
    // been planned to run again before its own dependencies.
    for i in (0..plan.steps.len()).rev() {
        if !matches!(plan.steps[i].action, Action::Run(_)) {
            continue;
        }
        for dep in ws.dag.deps(plan.steps[i].stage) {
            let Some(&j) = index.get(dep) else {
                continue;
            };
            if !verified.insert(j) {
                continue;
            }
            let step = &mut plan.steps[j];
            let (entry, stale) = match &step.action {
                Action::Cached(entry) => (entry, false),
                Action::Reuse { entry, stale } => (entry, !stale.is_empty()),
                Action::Run(_) | Action::Pulled(_) => continue,
            };
            let Err(corruption) = ws.store.verify(entry) else {
                continue;
            };
            if mark {
                ws.store.mark_corrupt(&entry.dir, &corruption)?;
            }
            if stale {
                return Err(PipeError::Usage(format!(
                    "the artifact {} of `{dep}` that this selection reuses is corrupt ({corruption}); \
                     rebuild `{dep}` first with `pipe run --to {dep}`",
                    step.key
                )));
            }
            step.action = Action::Run(Why::Corrupt(corruption.to_string()));
        }
    }
    Ok(())
}

/// `pipe verify`: re-hashes every artifact in the store, reports and marks the corrupt ones
/// (the next run rebuilds those the pipeline uses), and fails if there were any.
pub fn verify_store(ws: &Workspace) -> Result<()> {
    let _lock = WorkspaceLock::acquire(ws.store.root())?;
    let started = Instant::now();
    let (mut checked, mut bytes, mut corrupt) = (0usize, 0u64, 0usize);
    for instance in ws.store.instances()? {
        for found in ws.store.scan(&instance) {
            let (dir, corruption) = match found {
                Found::Entry(entry) => {
                    checked += 1;
                    bytes += entry.size();
                    match ws.store.verify(&entry) {
                        Ok(()) => continue,
                        Err(c) => {
                            ws.store.mark_corrupt(&entry.dir, &c)?;
                            (entry.dir, c)
                        }
                    }
                }
                Found::Corrupt {
                    dir, corruption, ..
                } => (dir, corruption),
            };
            corrupt += 1;
            let shown = dir.strip_prefix(ws.store.root()).unwrap_or(&dir);
            println!("corrupt {} ({corruption})", shown.display());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "verified {checked} artifact(s), {} in {} ({}/s)",
        human_bytes(bytes),
        human_duration(seconds),
        human_bytes((bytes as f64 / seconds.max(1e-9)) as u64)
    );
    if corrupt > 0 {
        return Err(PipeError::Corrupt(format!(
            "{corrupt} corrupt artifact(s); `pipe run` rebuilds those the pipeline uses, \
             `pipe gc` lists the rest"
        )));
    }
    Ok(())
}
