//! `pipe gc`, after DVC's habits: it lists what it would delete and asks on a terminal; without
//! one it deletes nothing unless `--yes`. It keeps the current artifacts, the `--keep` latest of
//! every instance (every directory under artifacts/, in the pipeline or not), everything a kept
//! artifact was made from, and checkpoints younger than a day. An entry is known by its
//! directory name: one whose manifest disagrees is reported as corrupt and left alone; one
//! that pipe itself marked corrupt (or that lost its manifest) is listed for deletion.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::cli::GcArgs;
use crate::digest::DigestCache;
use crate::error::{PipeError, Result};
use crate::lock::WorkspaceLock;
use crate::runner::{plan, RunOptions, Workspace};
use crate::store::{subdirs, Corruption, Entry, Found, Store};
use crate::ui::human_bytes;

/// Checkpoints younger than this are kept unless `--all`: a run may be about to resume them.
const CHECKPOINT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// An artifact by instance (its directory under artifacts/) and key (its directory name).
type Id = (String, String);

/// What a gc would delete, and what it found but will not touch.
#[derive(Debug, Default)]
pub struct Sweep {
    pub entries: Vec<Entry>,
    /// Entry directories that can never count again: no manifest (an interrupted removal),
    /// or marked corrupt by a run or `pipe verify`. Listed and deleted with the rest.
    pub unusable: Vec<(PathBuf, Corruption)>,
    pub checkpoints: Vec<PathBuf>,
    /// Directories whose manifest cannot be trusted: reported, never deleted.
    pub corrupt: Vec<(PathBuf, Corruption)>,
    pub kept: usize,
}

impl Sweep {
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.unusable.is_empty() && self.checkpoints.is_empty()
    }

    fn bytes(&self) -> u64 {
        self.entries.iter().map(Entry::size).sum()
    }
}

/// Lists, asks, then deletes (or with `--dry-run` only lists).
pub fn collect(ws: &Workspace, args: &GcArgs) -> Result<()> {
    let _lock = WorkspaceLock::acquire(ws.store.root())?;
    let current = current_keys(ws)?;
    let keep = if args.all { 0 } else { args.keep };
    let grace = (!args.all).then_some(CHECKPOINT_GRACE);
    let sweep = plan_sweep(&ws.store, &current, keep, grace)?;
    print_sweep(&sweep, ws.store.root());
    if sweep.is_empty() {
        println!("nothing to delete ({} artifact(s) kept)", sweep.kept);
        ws.store.clean_scratch()?;
        return Ok(());
    }
    if args.dry_run {
        return Ok(());
    }
    if !confirmed(args.yes)? {
        println!("nothing deleted");
        return Ok(());
    }
    delete(ws, &sweep)?;
    println!(
        "deleted {} artifact(s), {} checkpoint(s), {}",
        sweep.entries.len() + sweep.unusable.len(),
        sweep.checkpoints.len(),
        human_bytes(sweep.bytes())
    );
    Ok(())
}

/// Decides what goes: `current` and the `keep` latest entries of every instance stay with
/// everything they were made from; checkpoints of other keys go once older than `grace`.
pub fn plan_sweep(
    store: &Store,
    current: &BTreeSet<Id>,
    keep: usize,
    grace: Option<Duration>,
) -> Result<Sweep> {
    let mut sweep = Sweep::default();
    let mut all: Vec<Entry> = Vec::new();
    let mut kept: BTreeSet<Id> = current.clone();
    for instance in store.instances()? {
        let mut latest = 0;
        for found in store.scan(&instance) {
            match found {
                Found::Entry(entry) => {
                    if latest < keep {
                        kept.insert((instance.clone(), key_of(&entry)));
                        latest += 1;
                    }
                    all.push(*entry);
                }
                Found::Corrupt {
                    dir,
                    corruption: corruption @ (Corruption::NoManifest | Corruption::Marked(_)),
                    ..
                } => sweep.unusable.push((dir, corruption)),
                Found::Corrupt {
                    dir, corruption, ..
                } => sweep.corrupt.push((dir, corruption)),
            }
        }
    }
    add_upstreams(&all, &mut kept);
    for entry in all {
        let id = (instance_of(&entry), key_of(&entry));
        if kept.contains(&id) {
            sweep.kept += 1;
        } else {
            sweep.entries.push(entry);
        }
    }
    sweep.checkpoints = stale_checkpoints(store.root(), current, grace)?;
    Ok(sweep)
}

/// The instance of an entry: the name of the directory holding it.
fn instance_of(entry: &Entry) -> String {
    dir_name(entry.dir.parent().unwrap_or(&entry.dir))
}

/// The key of an entry: its directory name (never the manifest's word for it).
fn key_of(entry: &Entry) -> String {
    dir_name(&entry.dir)
}

fn dir_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Adds to `kept` every entry a kept entry was made from, transitively: a kept chain stays whole.
fn add_upstreams(all: &[Entry], kept: &mut BTreeSet<Id>) {
    loop {
        let before = kept.len();
        for entry in all {
            if kept.contains(&(instance_of(entry), key_of(entry))) {
                for (instance, key) in &entry.manifest.inputs.upstream {
                    kept.insert((instance.clone(), key.clone()));
                }
            }
        }
        if kept.len() == before {
            return;
        }
    }
}

fn print_sweep(sweep: &Sweep, root: &Path) {
    let verb = "would delete";
    for entry in &sweep.entries {
        println!(
            "{verb} {}/{} ({})",
            instance_of(entry),
            key_of(entry),
            human_bytes(entry.size())
        );
    }
    for (dir, corruption) in &sweep.unusable {
        println!("{verb} {} ({corruption})", shown(dir, root));
    }
    for dir in &sweep.checkpoints {
        println!("{verb} checkpoint {}", shown(dir, root));
    }
    for (dir, corruption) in &sweep.corrupt {
        println!(
            "corrupt {} ({corruption}): left in place; look at it, then delete it by hand",
            shown(dir, root)
        );
    }
    if !sweep.is_empty() {
        println!(
            "{verb} {} artifact(s), {} checkpoint(s), {}; keeping {} artifact(s)",
            sweep.entries.len() + sweep.unusable.len(),
            sweep.checkpoints.len(),
            human_bytes(sweep.bytes()),
            sweep.kept
        );
    }
}

fn shown(dir: &Path, root: &Path) -> String {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    rel.display().to_string()
}

/// `--yes`, or a `y` typed on a terminal. Without a terminal to ask on, nothing is deleted.
fn confirmed(yes: bool) -> Result<bool> {
    if yes {
        return Ok(true);
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(PipeError::Usage(
            "nothing deleted: there is no terminal to confirm on; pass --yes to delete the \
             above, or --dry-run to only list"
                .into(),
        ));
    }
    print!("delete them? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| PipeError::io("<stdin>", e))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

fn delete(ws: &Workspace, sweep: &Sweep) -> Result<()> {
    for entry in &sweep.entries {
        ws.store.remove(entry)?;
    }
    let unusable = sweep.unusable.iter().map(|(dir, _)| dir);
    for dir in unusable.chain(&sweep.checkpoints) {
        std::fs::remove_dir_all(dir).map_err(|e| PipeError::io(dir, e))?;
    }
    ws.store.clean_scratch()
}

/// (instance, key) of every stage of the pipeline as configured now.
fn current_keys(ws: &Workspace) -> Result<BTreeSet<Id>> {
    let mut digests = DigestCache::load(ws.store.digest_cache_path());
    let plan = plan(ws, &RunOptions::default(), &mut digests)?;
    digests.save()?;
    Ok(plan
        .steps
        .into_iter()
        .map(|s| (s.stage.to_string(), s.key))
        .collect())
}

/// Checkpoints of keys that are not current and were not touched within `grace`.
fn stale_checkpoints(
    root: &Path,
    current: &BTreeSet<Id>,
    grace: Option<Duration>,
) -> Result<Vec<PathBuf>> {
    let partial = root.join(".partial");
    let mut out = Vec::new();
    for instance in subdirs(&partial)? {
        for key in subdirs(&partial.join(&instance))? {
            let dir = partial.join(&instance).join(&key);
            let young = grace.is_some_and(|g| age(&dir) < g);
            if !current.contains(&(instance.clone(), key)) && !young {
                out.push(dir);
            }
        }
    }
    Ok(out)
}

/// Time since anything in `dir` (or one level below: a checkpoint's files) last changed.
fn age(dir: &Path) -> Duration {
    let mut newest = modified(dir);
    if let Ok(read) = std::fs::read_dir(dir) {
        for entry in read.flatten() {
            newest = newest.max(modified(&entry.path()));
            if let Ok(inner) = std::fs::read_dir(entry.path()) {
                for file in inner.flatten() {
                    newest = newest.max(modified(&file.path()));
                }
            }
        }
    }
    SystemTime::now().duration_since(newest).unwrap_or_default()
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}
