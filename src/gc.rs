//! `pipe gc`: deletes artifacts the current pipeline does not use (keeping the N most recent
//! others per stage), stale checkpoints and scratch left by killed runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::cli::GcArgs;
use crate::digest::DigestCache;
use crate::error::{PipeError, Result};
use crate::lock::WorkspaceLock;
use crate::runner::{plan, RunOptions, Workspace};
use crate::store::Entry;
use crate::ui::human_bytes;

/// Deletes (or with --dry-run lists) what is not current.
pub fn collect(ws: &Workspace, args: &GcArgs) -> Result<()> {
    let _lock = WorkspaceLock::acquire(ws.store.root())?;
    let current = current_keys(ws)?;
    let mut doomed: Vec<Entry> = Vec::new();
    for stage in stage_dirs(ws.store.root())? {
        let others = ws
            .store
            .entries(&stage)
            .into_iter()
            .filter(|e| !current.contains(&(stage.clone(), e.manifest.key.clone())));
        doomed.extend(others.skip(args.keep));
    }
    let partials = stale_partials(ws, &current)?;
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    let mut freed = 0;
    for entry in &doomed {
        freed += entry.size();
        println!(
            "{verb} {}/{} ({})",
            entry.manifest.stage,
            entry.manifest.key,
            human_bytes(entry.size())
        );
        if !args.dry_run {
            ws.store.remove(entry)?;
        }
    }
    for dir in &partials {
        println!("{verb} checkpoint {}", dir.display());
        if !args.dry_run {
            std::fs::remove_dir_all(dir).map_err(|e| PipeError::io(dir, e))?;
        }
    }
    if !args.dry_run {
        ws.store.clean_scratch()?;
    }
    println!(
        "{verb} {} artifact(s), {} checkpoint(s), {}",
        doomed.len(),
        partials.len(),
        human_bytes(freed)
    );
    Ok(())
}

/// (stage, key) of every stage of the pipeline as configured now.
fn current_keys(ws: &Workspace) -> Result<BTreeSet<(String, String)>> {
    let mut digests = DigestCache::load(ws.store.digest_cache_path());
    let plan = plan(ws, &RunOptions::default(), &mut digests)?;
    digests.save()?;
    Ok(plan
        .steps
        .into_iter()
        .map(|s| (s.stage.to_string(), s.key))
        .collect())
}

/// Stage directories in the store, including stages no longer in the pipeline.
fn stage_dirs(root: &Path) -> Result<Vec<String>> {
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

fn stale_partials(ws: &Workspace, current: &BTreeSet<(String, String)>) -> Result<Vec<PathBuf>> {
    let root = ws.store.root().join(".partial");
    let mut out = Vec::new();
    for stage in stage_dirs(&root)? {
        for key in stage_dirs(&root.join(&stage))? {
            if !current.contains(&(stage.clone(), key.clone())) {
                out.push(root.join(&stage).join(key));
            }
        }
    }
    Ok(out)
}
