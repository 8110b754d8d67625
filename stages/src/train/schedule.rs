//! Learning-rate schedules as Hugging Face's `get_scheduler` computes them (linear warmup from
//! 0, then cosine or linear decay to 0, or constant), so settings carry over from TRL and
//! LLaMA-Factory unchanged.

use serde::{Deserialize, Serialize};

/// The decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScheduler {
    /// Half a cosine period from the peak down to 0.
    Cosine,
    /// A straight line from the peak down to 0.
    Linear,
    /// The peak rate after warmup.
    Constant,
}

impl LrScheduler {
    pub fn name(self) -> &'static str {
        match self {
            LrScheduler::Cosine => "cosine",
            LrScheduler::Linear => "linear",
            LrScheduler::Constant => "constant",
        }
    }
}

/// The learning rate of every optimizer step of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: usize,
    pub total: usize,
    pub kind: LrScheduler,
}

impl Schedule {
    /// The schedule of a run of `total` steps that warms up over `warmup_steps`, else over
    /// `warmup_ratio` of the steps, else not at all.
    pub fn new(
        peak: f64,
        kind: LrScheduler,
        total: usize,
        warmup_steps: Option<usize>,
        warmup_ratio: Option<f64>,
    ) -> Self {
        let warmup = match (warmup_steps, warmup_ratio) {
            (Some(w), _) => w,
            (None, Some(r)) => warmup_steps_from_ratio(r, total),
            (None, None) => 0,
        };
        Schedule {
            peak,
            warmup,
            total,
            kind,
        }
    }

    /// The rate used by optimizer step `step` (0-based), as HF's `LambdaLR` gives it: during
    /// warmup `peak·step/warmup` (so a run with warmup starts at 0, exactly like HF).
    pub fn lr(&self, step: usize) -> f64 {
        self.peak * self.factor(step)
    }

    fn factor(&self, step: usize) -> f64 {
        let (s, w, t) = (step as f64, self.warmup as f64, self.total as f64);
        if step < self.warmup {
            return s / w.max(1.0);
        }
        match self.kind {
            LrScheduler::Constant => 1.0,
            LrScheduler::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            LrScheduler::Cosine => {
                let progress = (s - w) / (t - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}

/// Warmup steps from a ratio of the total, rounded up as HF's `get_warmup_steps` does.
pub fn warmup_steps_from_ratio(ratio: f64, total: usize) -> usize {
    (ratio * total as f64).ceil() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_then_decay_like_hf() {
        let s = Schedule {
            peak: 1.0,
            warmup: 2,
            total: 10,
            kind: LrScheduler::Cosine,
        };
        assert!(close(s.lr(0), 0.0));
        assert!(close(s.lr(1), 0.5));
        assert!(close(s.lr(2), 1.0));
        assert!(close(s.lr(6), 0.5));
        assert!(s.lr(9) > 0.0 && s.lr(9) < 0.05);
        let l = Schedule {
            kind: LrScheduler::Linear,
            ..s
        };
        assert!(close(l.lr(6), 0.5));
        assert!(close(l.lr(10), 0.0));
        let c = Schedule {
            kind: LrScheduler::Constant,
            ..s
        };
        assert!(close(c.lr(9), 1.0));
        assert_eq!(warmup_steps_from_ratio(0.03, 100), 3);
        assert_eq!(warmup_steps_from_ratio(0.03, 10), 1);
        assert_eq!(warmup_steps_from_ratio(0.0, 10), 0);
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let s = Schedule {
            peak: 2e-4,
            warmup: 0,
            total: 4,
            kind: LrScheduler::Linear,
        };
        assert!(close(s.lr(0), 2e-4));
        assert!(close(s.lr(2), 1e-4));
    }
}
