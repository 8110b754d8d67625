//! What the runner tells the user, as a trait: the terminal implementation lives in `ui.rs`,
//! tests record events instead.

use pipe_stages::Progress;

use crate::fingerprint::Reason;

/// Run events, in the order they happen.
pub trait Reporter {
    /// Progress sink handed to running stages.
    fn progress(&self) -> &dyn Progress;
    /// The stage's artifact for the current key exists: nothing to do.
    fn cached(&self, stage: &str, key: &str);
    /// An ancestor of a --from/--only selection: its latest artifact is used as it is.
    /// `stale` lists what changed since it was made (empty when it is current).
    fn reused(&self, stage: &str, key: &str, stale: &[Reason]);
    /// `--dry-run`: the stage would run, for these reasons.
    fn would_run(&self, stage: &str, key: &str, why: &Why);
    fn started(&self, stage: &str, key: &str, why: &Why);
    fn finished(&self, stage: &str, key: &str, seconds: f64);
    fn failed(&self, stage: &str, message: &str);
    /// Downstream of a failure: not attempted.
    fn skipped(&self, stage: &str, because: &str);
    /// The end of a run: counts by outcome.
    fn summary(&self, counts: &Counts, seconds: f64);
    /// Its artifact was downloaded from the shared cache instead of running it.
    fn pulled(&self, _stage: &str, _key: &str, _detail: &str) {}
    /// A batch job of a stage changed state (`PENDING (Dependency)`, `RUNNING on node3`).
    fn job(&self, _stage: &str, _key: &str, _job: &str, _state: &str) {}
    /// A line about a stage that is neither an event nor progress (the sbatch line of a job).
    fn note(&self, _stage: &str, _text: &str) {}
    /// Something went wrong that does not stop the run (an unreachable shared cache).
    fn warning(&self, _message: &str) {}
}

/// How many stages ended which way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub ran: usize,
    pub pulled: usize,
    pub cached: usize,
    pub reused: usize,
}

/// Why a stage runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Why {
    NeverRun,
    Forced,
    /// Selected by `--from` (re-runs it and everything downstream).
    From(String),
    Stale(Vec<Reason>),
    /// Its artifact exists but failed verification (the reason).
    Corrupt(String),
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::NeverRun => write!(f, "never run"),
            Why::Forced => write!(f, "--force"),
            Why::From(s) => write!(f, "--from {s}"),
            Why::Corrupt(reason) => write!(f, "its artifact is corrupt: {reason}; rebuilding it"),
            Why::Stale(reasons) => {
                let parts: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
                write!(f, "{}", parts.join("; "))
            }
        }
    }
}
