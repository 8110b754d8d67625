//! Which rows go into which micro-batch and optimizer step, computed from (seed, epoch) alone.
//! Rows are grouped by length to cut padding: each epoch is a seeded shuffle, cut into
//! megabatches that are sorted by length and sliced into batches, whose order is shuffled again
//! (the scheme of HF's `group_by_length` sampler). The plan is a pure function of its inputs,
//! generated one epoch at a time when a step asks for it, so a resumed run finds its place by
//! step number and a run of 10¹² steps costs no more memory than a run of ten.

use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::rng::{derive, Stream};

/// Batches per megabatch: large enough to find rows of similar length, small enough to keep
/// the order random.
pub const MEGABATCH_BATCHES: usize = 16;

/// How long a run is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunLength {
    /// Passes over the data; a fraction stops part-way through the last one.
    Epochs(f64),
    /// Optimizer steps, cycling through as many epochs as needed.
    Steps(usize),
}

/// One optimizer step: the micro-batches whose gradients it sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    /// 0-based epoch this step belongs to.
    pub epoch: usize,
    /// Row indices of each micro-batch (never empty).
    pub micro_batches: Vec<Vec<usize>>,
}

/// Every step of a run, generated on demand: step `i` is micro-batches
/// `[j·accumulation, (j+1)·accumulation)` of epoch `i / steps_per_epoch`'s batches, with
/// `j = i % steps_per_epoch` (the last step of an epoch takes what is left).
#[derive(Debug)]
pub struct Plan {
    lengths: Vec<usize>,
    batch_size: usize,
    accumulation: usize,
    seed: u64,
    total: usize,
    /// Optimizer steps per full epoch.
    pub steps_per_epoch: usize,
    /// Micro-batches per full epoch.
    pub batches_per_epoch: usize,
    /// The batches of the epoch asked for last: steps are asked for in order.
    epoch_cache: Mutex<Option<(usize, EpochBatches)>>,
}

/// One epoch's micro-batches (row indices), shared between the cache and a step.
type EpochBatches = Arc<Vec<Vec<usize>>>;

impl Clone for Plan {
    fn clone(&self) -> Self {
        Plan {
            lengths: self.lengths.clone(),
            epoch_cache: Mutex::new(None),
            ..*self
        }
    }
}

impl PartialEq for Plan {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.lengths,
            self.batch_size,
            self.accumulation,
            self.seed,
            self.total,
        ) == (
            &other.lengths,
            other.batch_size,
            other.accumulation,
            other.seed,
            other.total,
        )
    }
}

impl Plan {
    /// Plans a run over rows of token lengths `lengths` (no rows: no steps).
    pub fn new(
        lengths: &[usize],
        batch_size: usize,
        accumulation: usize,
        length: RunLength,
        seed: u64,
    ) -> Self {
        let batch_size = batch_size.max(1);
        let accumulation = accumulation.max(1);
        let batches_per_epoch = lengths.len().div_ceil(batch_size);
        let steps_per_epoch = batches_per_epoch.div_ceil(accumulation).max(1);
        let total = match length {
            _ if lengths.is_empty() => 0,
            RunLength::Steps(n) => n,
            // `as` saturates: an absurd epoch count is a long run, not an overflow.
            RunLength::Epochs(e) => ((e * steps_per_epoch as f64).ceil() as usize).max(1),
        };
        Plan {
            lengths: lengths.to_vec(),
            batch_size,
            accumulation,
            seed,
            total,
            steps_per_epoch,
            batches_per_epoch,
            epoch_cache: Mutex::new(None),
        }
    }

    pub fn total_steps(&self) -> usize {
        self.total
    }

    /// Optimizer step `step` (0-based, below [`Plan::total_steps`]).
    pub fn step(&self, step: usize) -> PlannedStep {
        let epoch = step / self.steps_per_epoch;
        let first = (step % self.steps_per_epoch) * self.accumulation;
        let batches = self.epoch(epoch);
        let last = (first + self.accumulation).min(batches.len());
        PlannedStep {
            epoch,
            micro_batches: batches[first.min(last)..last].to_vec(),
        }
    }

    fn epoch(&self, epoch: usize) -> EpochBatches {
        let mut cache = self
            .epoch_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cached, batches)) = cache.as_ref() {
            if *cached == epoch {
                return batches.clone();
            }
        }
        let batches = Arc::new(epoch_batches(
            &self.lengths,
            self.batch_size,
            self.seed,
            epoch,
        ));
        *cache = Some((epoch, batches.clone()));
        batches
    }

    /// Whether the run evaluates after `completed` steps: every `every` steps and at the end.
    pub fn evaluates_after(&self, completed: usize, every: Option<usize>) -> bool {
        completed == self.total_steps() || every.is_some_and(|k| completed.is_multiple_of(k))
    }

    /// Whether the run checkpoints after `completed` steps: every `every` steps, except at the
    /// end (a finished run commits its outputs instead).
    pub fn saves_after(&self, completed: usize, every: usize) -> bool {
        completed.is_multiple_of(every.max(1)) && completed < self.total_steps()
    }

    /// The fractional epoch reached after `completed` steps, as HF logs it.
    pub fn epoch_at(&self, completed: usize) -> f64 {
        completed as f64 / self.steps_per_epoch as f64
    }
}

/// The batches of one epoch, grouped by length, in a seeded random order.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(derive(seed, Stream::DataOrder, epoch as u64, 0));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    let mut batches = Vec::new();
    for mega in order.chunks(batch_size * MEGABATCH_BATCHES) {
        let mut mega = mega.to_vec();
        // Longest first, ties by index so the order does not depend on the sort algorithm.
        mega.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
        batches.extend(mega.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(n: usize) -> Vec<usize> {
        (0..n).map(|i| 10 + (i * 37) % 90).collect()
    }

    #[test]
    fn every_row_once_per_epoch_in_nonempty_batches() {
        let lens = lengths(103);
        let batches = epoch_batches(&lens, 4, 7, 0);
        assert_eq!(batches.len(), 26);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..103).collect::<Vec<_>>());
        assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 4));
        assert_ne!(batches, epoch_batches(&lens, 4, 7, 1), "epochs reshuffle");
        assert_eq!(batches, epoch_batches(&lens, 4, 7, 0), "seeded");
    }

    #[test]
    fn grouping_by_length_cuts_padding() {
        let lens = lengths(512);
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|b| {
                    let max = b.iter().map(|&i| lens[i]).max().unwrap();
                    b.iter().map(|&i| max - lens[i]).sum::<usize>()
                })
                .sum()
        };
        let grouped = padded(&epoch_batches(&lens, 8, 1, 0));
        let random: Vec<Vec<usize>> = (0..512)
            .collect::<Vec<_>>()
            .chunks(8)
            .map(<[usize]>::to_vec)
            .collect();
        assert!(
            grouped * 4 < padded(&random),
            "{grouped} vs {}",
            padded(&random)
        );
    }

    fn steps(plan: &Plan) -> Vec<PlannedStep> {
        (0..plan.total_steps()).map(|i| plan.step(i)).collect()
    }

    #[test]
    fn plans_epochs_steps_and_accumulation() {
        let lens = lengths(10);
        let plan = Plan::new(&lens, 2, 2, RunLength::Epochs(2.0), 3);
        assert_eq!((plan.batches_per_epoch, plan.steps_per_epoch), (5, 3));
        assert_eq!(plan.total_steps(), 6);
        // The last step of an epoch takes the odd micro-batch left over.
        assert_eq!(plan.step(2).micro_batches.len(), 1);
        assert_eq!(plan.step(3).epoch, 1);
        let by_steps = Plan::new(&lens, 2, 2, RunLength::Steps(7), 3);
        assert_eq!(by_steps.total_steps(), 7);
        assert_eq!(steps(&by_steps)[..6], steps(&plan)[..]);
        assert_eq!(by_steps.step(6).epoch, 2);
        let half = Plan::new(&lens, 2, 1, RunLength::Epochs(0.5), 3);
        assert_eq!(half.total_steps(), 3);
        assert!((half.epoch_at(3) - 0.6).abs() < 1e-12);
        assert_eq!(
            Plan::new(&[], 2, 2, RunLength::Steps(5), 3).total_steps(),
            0
        );
    }

    /// The plan as it was computed up front before it became lazy: every epoch's batches cut
    /// into steps of `accumulation` micro-batches, until `total` steps.
    fn eager(
        lens: &[usize],
        batch: usize,
        acc: usize,
        total: usize,
        seed: u64,
    ) -> Vec<PlannedStep> {
        let mut out = Vec::new();
        let mut epoch = 0;
        while out.len() < total {
            for group in epoch_batches(lens, batch, seed, epoch).chunks(acc) {
                if out.len() == total {
                    break;
                }
                out.push(PlannedStep {
                    epoch,
                    micro_batches: group.to_vec(),
                });
            }
            epoch += 1;
        }
        out
    }

    /// The lazy plan yields exactly the sequence the eager one did (resumed runs and the demo's
    /// numbers depend on it), in order and when steps are asked for out of order.
    #[test]
    fn the_lazy_plan_is_the_eager_plan() {
        for (n, batch, acc) in [(10, 2, 2), (103, 4, 3), (64, 8, 1), (7, 16, 4), (531, 4, 2)] {
            let lens = lengths(n);
            let plan = Plan::new(&lens, batch, acc, RunLength::Steps(57), 11);
            let expected = eager(&lens, batch, acc, 57, 11);
            assert_eq!(steps(&plan), expected, "n={n} batch={batch} acc={acc}");
            for i in [40, 3, 56, 0, 12] {
                assert_eq!(plan.step(i), expected[i]);
            }
        }
    }

    /// Issue 16: `-s sft.max_steps=1000000000000` aborted with "memory allocation of
    /// 32000000000000 bytes failed" before training started. A step of such a plan is cheap.
    #[test]
    fn an_enormous_run_is_planned_without_memory() {
        let lens = lengths(531);
        let plan = Plan::new(&lens, 4, 2, RunLength::Steps(1_000_000_000_000), 42);
        assert_eq!(plan.total_steps(), 1_000_000_000_000);
        let last = plan.step(plan.total_steps() - 1);
        assert_eq!(last.epoch, (1_000_000_000_000 - 1) / plan.steps_per_epoch);
        assert!(!last.micro_batches.is_empty());
        let epochs = Plan::new(&lens, 4, 2, RunLength::Epochs(1e300), 42);
        assert_eq!(epochs.total_steps(), usize::MAX);
        assert!(!epochs.step(usize::MAX - 1).micro_batches.is_empty());
    }
}
