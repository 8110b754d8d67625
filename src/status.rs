//! `pipe status`: every stage cached, stale (and why) or never run, from the same key inputs
//! that `pipe run` hashes.

use crate::digest::DigestCache;
use crate::error::Result;
use crate::report::Why;
use crate::runner::{plan, Action, RunOptions, Workspace};
use crate::store::format_time;
use crate::ui::human_duration;

/// Prints the status table.
pub fn print(ws: &Workspace) -> Result<()> {
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
            Action::Reuse { .. } => {}
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
