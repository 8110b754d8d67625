//! Which rows go into which micro-batch and optimizer step, for the whole run, computed up
//! front from (seed, epoch) alone. Rows are grouped by length to cut padding: each epoch is a
//! seeded shuffle, cut into megabatches that are sorted by length and sliced into batches,
//! whose order is shuffled again (the scheme of HF's `group_by_length` sampler). Since the
//! plan is a pure function of its inputs, a resumed run finds its place by step number.

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

/// Every step of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub steps: Vec<PlannedStep>,
    /// Optimizer steps per full epoch.
    pub steps_per_epoch: usize,
    /// Micro-batches per full epoch.
    pub batches_per_epoch: usize,
}

impl Plan {
    /// Plans a run over rows of token lengths `lengths` (must not be empty).
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
            RunLength::Steps(n) => n,
            RunLength::Epochs(e) => ((e * steps_per_epoch as f64).ceil() as usize).max(1),
        };
        let mut steps = Vec::with_capacity(total);
        let mut epoch = 0;
        while steps.len() < total && !lengths.is_empty() {
            let batches = epoch_batches(lengths, batch_size, seed, epoch);
            for group in batches.chunks(accumulation) {
                if steps.len() == total {
                    break;
                }
                steps.push(PlannedStep {
                    epoch,
                    micro_batches: group.to_vec(),
                });
            }
            epoch += 1;
        }
        Plan {
            steps,
            steps_per_epoch,
            batches_per_epoch,
        }
    }

    pub fn total_steps(&self) -> usize {
        self.steps.len()
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

    #[test]
    fn plans_epochs_steps_and_accumulation() {
        let lens = lengths(10);
        let plan = Plan::new(&lens, 2, 2, RunLength::Epochs(2.0), 3);
        assert_eq!((plan.batches_per_epoch, plan.steps_per_epoch), (5, 3));
        assert_eq!(plan.total_steps(), 6);
        // The last step of an epoch takes the odd micro-batch left over.
        assert_eq!(plan.steps[2].micro_batches.len(), 1);
        assert_eq!(plan.steps[3].epoch, 1);
        let by_steps = Plan::new(&lens, 2, 2, RunLength::Steps(7), 3);
        assert_eq!(by_steps.total_steps(), 7);
        assert_eq!(by_steps.steps[..6], plan.steps[..]);
        assert_eq!(by_steps.steps[6].epoch, 2);
        let half = Plan::new(&lens, 2, 1, RunLength::Epochs(0.5), 3);
        assert_eq!(half.total_steps(), 3);
        assert!((half.epoch_at(3) - 0.6).abs() < 1e-12);
    }
}
