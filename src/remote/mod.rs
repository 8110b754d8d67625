//! The shared artifact cache (`[cache] remote`): a key names an artifact anywhere, so a run
//! downloads a stale stage's artifact instead of running it when the cache has it, and uploads
//! what it commits. Everything is verified against the manifest's digests; a cache that cannot
//! be reached, or refuses the credentials, is a warning and the run goes on locally.

mod aws_profile;
pub mod config;
mod store;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{PipeError, Result};
use crate::report::{Reporter, Why};
use crate::runner::{Action, Plan, Workspace};
use crate::store::Entry;
use crate::ui::{human_bytes, human_duration};

pub use store::{Remote, RemoteError, Transfer};

/// Set once the cache failed to answer in this process: warned about once, not tried again.
static UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// The workspace's cache, if it has one and it has not failed in this process.
fn open(ws: &Workspace, reporter: &dyn Reporter) -> Option<Remote> {
    let url = ws.config.cache.remote.as_deref()?;
    if UNAVAILABLE.load(Ordering::SeqCst) {
        return None;
    }
    match Remote::open(url) {
        Ok(remote) => Some(remote),
        Err(e) => {
            give_up(reporter, &e);
            None
        }
    }
}

fn give_up(reporter: &dyn Reporter, e: &RemoteError) {
    if !UNAVAILABLE.swap(true, Ordering::SeqCst) {
        reporter.warning(&format!(
            "the shared cache is unavailable, running locally: {e}"
        ));
    }
}

fn transfer_text(moved: &Transfer, url: &str, direction: &str) -> String {
    format!(
        "{} file(s), {} in {} {direction} {url}",
        moved.files,
        human_bytes(moved.bytes),
        human_duration(moved.seconds)
    )
}

/// After a commit: uploads the entry (`[cache] push`, on by default). Failures are warnings.
pub fn after_commit(ws: &Workspace, entry: &Entry, reporter: &dyn Reporter) {
    if !ws.config.cache.push {
        return;
    }
    let Some(remote) = open(ws, reporter) else {
        return;
    };
    match remote.push(entry) {
        Ok(Some(moved)) => reporter.note(
            &entry.manifest.stage,
            &format!("pushed {}", transfer_text(&moved, remote.url(), "to")),
        ),
        Ok(None) => {}
        Err(e @ RemoteError::Unavailable { .. }) => give_up(reporter, &e),
        Err(e) => reporter.warning(&format!("not pushed: {e}")),
    }
}

/// Before running: every stage that must run because it is stale (not because the user forced
/// it) is looked up in the cache; a hit is downloaded, verified and committed, and the step
/// becomes [`Action::Pulled`]. A refused artifact is named and the stage runs locally.
pub fn pull_stale(ws: &Workspace, plan: &mut Plan, reporter: &dyn Reporter) {
    if !ws.config.cache.pull || ws.config.cache.remote.is_none() {
        return;
    }
    let wanted = plan.steps.iter().any(|s| stale_not_forced(&s.action));
    if !wanted {
        return;
    }
    let Some(remote) = open(ws, reporter) else {
        return;
    };
    for step in &mut plan.steps {
        if !stale_not_forced(&step.action) {
            continue;
        }
        match remote.pull(&ws.store, step.stage, &step.key) {
            Ok(Some((entry, moved))) => {
                reporter.pulled(
                    step.stage,
                    &step.key,
                    &transfer_text(&moved, remote.url(), "from"),
                );
                step.action = Action::Pulled(entry);
            }
            Ok(None) => {}
            Err(e @ RemoteError::Unavailable { .. }) => {
                give_up(reporter, &e);
                return;
            }
            Err(e) => reporter.warning(&format!("{e}; running `{}` locally", step.stage)),
        }
    }
}

fn stale_not_forced(action: &Action) -> bool {
    matches!(
        action,
        Action::Run(Why::NeverRun | Why::Stale(_) | Why::Corrupt(_))
    )
}

/// The stages `names` selects (all of the pipeline's when empty), checked.
fn selected(ws: &Workspace, names: &[String], flag: &str) -> Result<Vec<&'static str>> {
    if names.is_empty() {
        return Ok(ws.dag.order().to_vec());
    }
    names.iter().map(|n| ws.dag.resolve(n, flag)).collect()
}

fn remote_for_command(ws: &Workspace) -> Result<Remote> {
    let url = ws.config.cache.remote.as_deref().ok_or_else(|| {
        PipeError::Usage(format!(
            "no shared cache: add `[cache]` with `remote = \"s3://bucket/prefix\"` (or gs://, az://, file:///path) to {}",
            ws.config.path.display()
        ))
    })?;
    Remote::open(url).map_err(|e| PipeError::Usage(e.to_string()))
}

/// `pipe push [NAME…]`: uploads the current artifact of each stage that has one locally.
pub fn push_command(ws: &Workspace, plan: &Plan, names: &[String]) -> Result<()> {
    let remote = remote_for_command(ws)?;
    let chosen = selected(ws, names, "pipe push")?;
    let mut failed = 0;
    for step in plan.steps.iter().filter(|s| chosen.contains(&s.stage)) {
        let Action::Cached(entry) = &step.action else {
            println!(
                "{:<10} not cached here (key {}); run it first",
                step.stage, step.key
            );
            continue;
        };
        match remote.push(entry) {
            Ok(Some(moved)) => println!(
                "{:<10} pushed   {} ({})",
                step.stage,
                step.key,
                transfer_text(&moved, remote.url(), "to")
            ),
            Ok(None) => println!(
                "{:<10} present  {} (already in {})",
                step.stage,
                step.key,
                remote.url()
            ),
            Err(e) => {
                failed += 1;
                eprintln!("{:<10} FAILED   {e}", step.stage);
            }
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(PipeError::Corrupt(format!("{n} stage(s) not pushed"))),
    }
}

/// `pipe pull [NAME…]`: downloads the current artifact of each stage not cached here.
pub fn pull_command(ws: &Workspace, plan: &Plan, names: &[String]) -> Result<()> {
    let remote = remote_for_command(ws)?;
    let chosen = selected(ws, names, "pipe pull")?;
    let mut failed = 0;
    for step in plan.steps.iter().filter(|s| chosen.contains(&s.stage)) {
        if let Action::Cached(_) = step.action {
            println!("{:<10} cached   {}", step.stage, step.key);
            continue;
        }
        match remote.pull(&ws.store, step.stage, &step.key) {
            Ok(Some((_, moved))) => println!(
                "{:<10} pulled   {} ({})",
                step.stage,
                step.key,
                transfer_text(&moved, remote.url(), "from")
            ),
            Ok(None) => println!(
                "{:<10} missing  {} (not in {})",
                step.stage,
                step.key,
                remote.url()
            ),
            Err(e) => {
                failed += 1;
                eprintln!("{:<10} FAILED   {e}", step.stage);
            }
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(PipeError::Corrupt(format!("{n} stage(s) not pulled"))),
    }
}
