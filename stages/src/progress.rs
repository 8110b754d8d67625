//! Progress reporting as a trait, so stages never depend on a terminal library
//! (the CLI implements it with indicatif; tests use [`NullProgress`]).

/// Where a stage sends progress and human-readable lines.
pub trait Progress: Send + Sync {
    /// A new progress bar; `total = None` for a spinner. `unit` names what is counted ("rows", "steps").
    fn bar(&self, total: Option<u64>, unit: &str) -> Box<dyn Bar>;
    /// A line the user should see (suppressed by `-q`).
    fn info(&self, msg: &str);
    /// A detail line shown only with `-v`.
    fn debug(&self, msg: &str);
}

/// One progress bar handed out by [`Progress::bar`].
pub trait Bar: Send {
    fn inc(&self, n: u64);
    fn set_position(&self, pos: u64);
    /// A short status after the counter, e.g. `loss 1.23 lr 2e-4 312 tok/s`.
    fn set_message(&self, msg: String);
    fn finish(&self);
}

/// Progress that goes nowhere: for tests and library callers.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullProgress;

struct NullBar;

impl Bar for NullBar {
    fn inc(&self, _n: u64) {}
    fn set_position(&self, _pos: u64) {}
    fn set_message(&self, _msg: String) {}
    fn finish(&self) {}
}

impl Progress for NullProgress {
    fn bar(&self, _total: Option<u64>, _unit: &str) -> Box<dyn Bar> {
        Box::new(NullBar)
    }
    fn info(&self, _msg: &str) {}
    fn debug(&self, _msg: &str) {}
}
