//! `pipe status`: every stage cached, stale (and why), corrupt or never run, from the same key
//! inputs that `pipe run` hashes. `--verify` also re-hashes every cached artifact.

use crate::digest::DigestCache;
use crate::error::Result;
use crate::report::Why;
use crate::runner::{plan, Action, RunOptions, Workspace};
use crate::store::{format_time, Inspection};
use crate::ui::human_duration;

/// Prints the status table; with `verify`, cached artifacts are re-hashed too.
pub fn print(ws: &Workspace, verify: bool) -> Result<()> {
    let mut digests = DigestCache::load(ws.store.digest_cache_path());
    let plan = plan(ws, &RunOptions::default(), &mut digests)?;
    digests.save()?;
    println!(
        "{} ({}), artifacts in {}",
        ws.config.project.name,
        ws.config.path.display(),
        ws.store.root().display()
    );
    let mut stale = 0;
    for step in &plan.steps {
        let corrupt = match &step.action {
            Action::Cached(entry) if verify => ws.store.verify(entry).err(),
            Action::Run(_) => match ws.store.inspect(step.stage, &step.key) {
                Inspection::Corrupt { corruption, .. } => Some(corruption),
                _ => None,
            },
            _ => None,
        };
        if let Some(corruption) = corrupt {
            stale += 1;
            println!(
                "  {:<10} corrupt    {} ({corruption})",
                step.stage, step.key
            );
            continue;
        }
        match &step.action {
            Action::Cached(entry) => println!(
                "  {:<10} cached     {}  {} ({})",
                step.stage,
                step.key,
                format_time(entry.manifest.finished_at_ms),
                human_duration(entry.manifest.duration_s)
            ),
            Action::Run(Why::NeverRun) => {
                stale += 1;
                println!("  {:<10} never run  {}", step.stage, step.key);
            }
            Action::Run(why) => {
                stale += 1;
                println!("  {:<10} stale      {}", step.stage, step.key);
                print_reasons(why);
            }
            Action::Reuse { .. } | Action::Pulled(_) => {}
        }
    }
    if stale == 0 {
        println!("everything is up to date");
    } else {
        println!("{stale} stage(s) to run: `pipe run` (or `pipe run --dry-run` to preview)");
    }
    Ok(())
}

fn print_reasons(why: &Why) {
    match why {
        Why::Stale(reasons) if reasons.is_empty() => {
            println!("      its artifact for this key is missing or incomplete")
        }
        Why::Stale(reasons) => {
            for r in reasons {
                println!("      {r}");
            }
        }
        other => println!("      {other}"),
    }
}
