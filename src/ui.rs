//! The terminal: run events as lines on stdout, progress bars (indicatif, the only file that
//! uses it) on stderr, and only when both streams are a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipe_stages::{Bar, Progress};

use crate::fingerprint::Reason;
use crate::report::{Counts, Reporter, Why};

/// How much the user wants to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// Reporter and progress sink for a terminal (or a pipe, minus the bars).
pub struct TerminalUi {
    multi: MultiProgress,
    verbosity: Verbosity,
    bars: bool,
}

impl TerminalUi {
    pub fn new(verbosity: Verbosity) -> Self {
        // Bars only for a person watching: not when either stream is redirected (logs, CI, pipes).
        let bars = std::io::stdout().is_terminal()
            && std::io::stderr().is_terminal()
            && verbosity != Verbosity::Quiet;
        let target = if bars {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            verbosity,
            bars,
        }
    }

    /// A line on stdout that does not tear an active progress bar.
    fn line(&self, min: Verbosity, text: &str) {
        if self.verbosity >= min {
            self.multi.suspend(|| println!("{text}"));
        }
    }
}

struct IndicatifBar(ProgressBar);

impl Bar for IndicatifBar {
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }
    fn set_position(&self, pos: u64) {
        self.0.set_position(pos);
    }
    fn set_message(&self, msg: String) {
        self.0.set_message(msg);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for TerminalUi {
    fn bar(&self, total: Option<u64>, unit: &str) -> Box<dyn Bar> {
        if !self.bars {
            return Box::new(IndicatifBar(ProgressBar::hidden()));
        }
        let bar = match total {
            Some(n) => {
                let style = ProgressStyle::with_template(&format!(
                    "  {{bar:30.cyan/blue}} {{pos}}/{{len}} {unit} {{msg}} [{{elapsed_precise}} < {{eta_precise}}]"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                ProgressBar::new(n).with_style(style)
            }
            None => {
                let style = ProgressStyle::with_template(&format!(
                    "  {{spinner}} {{pos}} {unit} {{msg}} [{{elapsed_precise}}]"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
                ProgressBar::new_spinner().with_style(style)
            }
        };
        let bar = self.multi.add(bar);
        bar.enable_steady_tick(Duration::from_millis(200));
        Box::new(IndicatifBar(bar))
    }

    fn info(&self, msg: &str) {
        self.line(Verbosity::Normal, &format!("  {msg}"));
    }

    fn debug(&self, msg: &str) {
        self.line(Verbosity::Verbose, &format!("  {msg}"));
    }
}

impl Reporter for TerminalUi {
    fn progress(&self) -> &dyn Progress {
        self
    }

    fn cached(&self, stage: &str, key: &str) {
        self.line(Verbosity::Normal, &format!("{stage:<10} cached   {key}"));
    }

    fn reused(&self, stage: &str, key: &str, stale: &[Reason]) {
        if stale.is_empty() {
            self.line(Verbosity::Normal, &format!("{stage:<10} reused   {key}"));
            return;
        }
        let why: Vec<String> = stale.iter().map(|r| r.to_string()).collect();
        self.line(
            Verbosity::Normal,
            &format!(
                "{stage:<10} reused   {key} (its latest artifact, although stale: {})",
                why.join("; ")
            ),
        );
    }

    fn would_run(&self, stage: &str, key: &str, why: &Why) {
        self.line(
            Verbosity::Quiet,
            &format!("{stage:<10} would run {key} ({why})"),
        );
    }

    fn started(&self, stage: &str, key: &str, why: &Why) {
        self.line(
            Verbosity::Normal,
            &format!("{stage:<10} running  {key} ({why})"),
        );
    }

    fn finished(&self, stage: &str, key: &str, seconds: f64) {
        self.line(
            Verbosity::Normal,
            &format!("{stage:<10} done     {key} in {}", human_duration(seconds)),
        );
    }

    fn failed(&self, stage: &str, message: &str) {
        self.multi
            .suspend(|| eprintln!("{stage:<10} FAILED   {message}"));
    }

    fn skipped(&self, stage: &str, because: &str) {
        self.line(
            Verbosity::Normal,
            &format!("{stage:<10} skipped  (upstream `{because}` failed)"),
        );
    }

    fn summary(&self, counts: &Counts, seconds: f64) {
        let mut parts = vec![format!("{} ran", counts.ran)];
        if counts.pulled > 0 {
            parts.push(format!("{} pulled", counts.pulled));
        }
        parts.push(format!("{} cached", counts.cached));
        if counts.reused > 0 {
            parts.push(format!("{} reused", counts.reused));
        }
        self.line(
            Verbosity::Normal,
            &format!("{} in {}", parts.join(", "), human_duration(seconds)),
        );
    }

    fn pulled(&self, stage: &str, key: &str, detail: &str) {
        self.line(
            Verbosity::Normal,
            &format!("{stage:<10} pulled   {key} ({detail})"),
        );
    }

    fn job(&self, stage: &str, key: &str, job: &str, state: &str) {
        self.line(
            Verbosity::Normal,
            &format!("{stage:<10} job {job:<8} {state} [{key}]"),
        );
    }

    fn note(&self, stage: &str, text: &str) {
        self.line(Verbosity::Normal, &format!("{stage:<10}   {text}"));
    }

    fn warning(&self, message: &str) {
        self.multi.suspend(|| eprintln!("warning: {message}"));
    }
}

/// `0.42s`, `12.3s`, `4m05s`, `1h02m`.
pub fn human_duration(seconds: f64) -> String {
    if seconds < 10.0 {
        format!("{seconds:.2}s")
    } else if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else if seconds < 3600.0 {
        format!(
            "{}m{:02}s",
            (seconds / 60.0) as u64,
            (seconds % 60.0) as u64
        )
    } else {
        format!(
            "{}h{:02}m",
            (seconds / 3600.0) as u64,
            ((seconds % 3600.0) / 60.0) as u64
        )
    }
}

/// `512 B`, `3.4 KiB`, `1.2 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
