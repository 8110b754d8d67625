//! One optimizer step shared by the trainers (sft, orpo): forward and backward over each
//! micro-batch, gradients summed with token weights, the global norm measured and clipped,
//! the AdamW update at the schedule's rate, and a guard that stops on a non-finite loss or
//! gradient before it reaches the weights.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};

use super::grads::{clip, global_norm, GradAccumulator};
use super::lora_state::{lora_tensors, restore_lora};
use super::optim::{AdamW, AdamWParams};
use super::schedule::Schedule;
use crate::llm::{LlamaModel, LlmError};

/// What went wrong inside a step; the caller adds the step number and the rows at fault.
#[derive(Debug, thiserror::Error)]
pub enum StepFailure {
    /// A NaN or infinite value; `micro` is the micro-batch (None: the whole step's gradient).
    #[error("non-finite {what} ({value})")]
    NonFinite {
        what: &'static str,
        value: f64,
        micro: Option<usize>,
    },
    #[error(transparent)]
    Llm(#[from] LlmError),
}

impl From<candle_core::Error> for StepFailure {
    fn from(e: candle_core::Error) -> Self {
        StepFailure::Llm(e.into())
    }
}

/// A NaN or infinite loss or gradient, as a trainer stage reports it: where, on which rows,
/// and what is left to resume from.
#[derive(Debug, thiserror::Error)]
#[error("{stage}: non-finite {what} ({value}) at step {step} of {total}, in the batch of {unit} {rows}; {kept}; lower `learning_rate` (now {lr:e}), keep `max_grad_norm` on, or check those rows")]
pub struct NonFinite {
    pub stage: &'static str,
    pub what: &'static str,
    pub value: f64,
    /// 1-based.
    pub step: usize,
    pub total: usize,
    /// What the rows are (`train rows`, `train pairs`).
    pub unit: &'static str,
    pub rows: String,
    /// What is left to resume from ([`kept_checkpoint`]).
    pub kept: String,
    pub lr: f64,
}

/// The rows at fault in a step's micro-batches `batches`: those of micro-batch `micro`, or
/// all of them when the fault is in the summed gradient.
pub fn culprits<T>(
    batches: &[Vec<T>],
    micro: Option<usize>,
    describe: impl Fn(&T) -> String,
) -> String {
    let rows: Vec<String> = match micro {
        Some(i) => batches[i].iter().map(&describe).collect(),
        None => batches.iter().flatten().map(&describe).collect(),
    };
    rows.join(", ")
}

/// What a failed run leaves to resume from, for its error message.
pub fn kept_checkpoint(
    saved_step: Option<usize>,
    partial: &std::path::Path,
    save_every: usize,
) -> String {
    match saved_step {
        Some(k) => format!(
            "the last good checkpoint (step {k}) stays in {} (a re-run with the same settings resumes from it)",
            partial.display()
        ),
        None => format!("no checkpoint was written yet (save_every = {save_every})"),
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// The token-weighted mean loss over all its micro-batches.
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
}

/// The trainable variables, their optimizer and schedule, and the clipping threshold.
#[derive(Debug)]
pub struct Trainer {
    vars: Vec<Var>,
    optimizer: AdamW,
    schedule: Schedule,
    max_grad_norm: f64,
}

impl Trainer {
    pub fn new(
        vars: Vec<Var>,
        params: AdamWParams,
        schedule: Schedule,
        max_grad_norm: f64,
    ) -> candle_core::Result<Self> {
        let optimizer = AdamW::new(&vars, params)?;
        Ok(Self {
            vars,
            optimizer,
            schedule,
            max_grad_norm,
        })
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Optimizer steps taken (restored ones included).
    pub fn steps_taken(&self) -> usize {
        self.optimizer.steps()
    }

    /// Runs step `step` (0-based) over micro-batches whose losses `loss_of(i)` returns as
    /// means over `targets[i]` tokens. Each is weighted by its share of the step's tokens, so
    /// the step minimises the mean over all of them (HF's `num_items_in_batch`) whatever the
    /// split into micro-batches. Nothing is updated when a loss or the gradient is not finite.
    pub fn step(
        &mut self,
        step: usize,
        targets: &[usize],
        mut loss_of: impl FnMut(usize) -> Result<Tensor, LlmError>,
    ) -> Result<StepOutcome, StepFailure> {
        let total: usize = targets.iter().sum();
        let mut grads = GradAccumulator::new(self.vars.len());
        let mut loss = 0.0;
        for (i, &tokens) in targets.iter().enumerate() {
            let weight = tokens as f64 / total.max(1) as f64;
            let micro = loss_of(i)?;
            let value = micro.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                return Err(StepFailure::NonFinite {
                    what: "loss",
                    value,
                    micro: Some(i),
                });
            }
            loss += weight * value;
            grads.add(&self.vars, &(micro * weight)?.backward()?)?;
        }
        let grads = grads.finish(&self.vars)?;
        let grad_norm = global_norm(&grads)?;
        if !grad_norm.is_finite() {
            return Err(StepFailure::NonFinite {
                what: "gradient norm",
                value: grad_norm,
                micro: None,
            });
        }
        let grads = clip(grads, grad_norm, self.max_grad_norm)?;
        let lr = self.schedule.lr(step);
        self.optimizer.step(&self.vars, &grads, lr)?;
        Ok(StepOutcome {
            loss,
            grad_norm,
            lr,
        })
    }

    /// What a checkpoint of a LoRA run holds: the LoRA matrices of `model` and the optimizer's
    /// moments.
    pub fn checkpoint_tensors(&self, model: &LlamaModel) -> Vec<(String, Tensor)> {
        let mut tensors = lora_tensors(model);
        tensors.extend(self.optimizer_tensors());
        tensors
    }

    /// Sets the LoRA of `model` and the optimizer back to a checkpoint taken after `steps`.
    pub fn restore_checkpoint(
        &mut self,
        model: &LlamaModel,
        tensors: &HashMap<String, Tensor>,
        steps: usize,
    ) -> Result<(), LlmError> {
        restore_lora(model, tensors)?;
        Ok(self.restore_optimizer(tensors, steps)?)
    }

    /// The optimizer's moments, for a checkpoint.
    pub fn optimizer_tensors(&self) -> Vec<(String, Tensor)> {
        self.optimizer.state_tensors()
    }

    /// Restores the optimizer of a checkpoint taken after `steps` steps.
    pub fn restore_optimizer(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: usize,
    ) -> candle_core::Result<()> {
        self.optimizer.restore(tensors, steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::schedule::LrScheduler;
    use candle_core::Device;

    fn trainer(var: &Var) -> Trainer {
        let schedule = Schedule {
            peak: 0.1,
            warmup: 0,
            total: 10,
            kind: LrScheduler::Constant,
        };
        Trainer::new(vec![var.clone()], AdamWParams::default(), schedule, 1.0).unwrap()
    }

    #[test]
    fn token_weighting_makes_the_split_irrelevant() {
        let dev = Device::Cpu;
        // Per-token losses (w·x)² of 3 "tokens", split 1 + 2 or all together.
        let xs = [1.0f64, 2.0, -1.5];
        let run = |split: bool| -> (f64, Vec<f64>) {
            let var = Var::new(&[0.5f64], &dev).unwrap();
            let mut t = trainer(&var);
            let mean = |ids: &[usize]| -> Result<Tensor, LlmError> {
                let x = Tensor::new(ids.iter().map(|&i| xs[i]).collect::<Vec<_>>(), &dev)?;
                Ok(x.broadcast_mul(var.as_tensor())?.sqr()?.mean_all()?)
            };
            let out = if split {
                let groups: [&[usize]; 2] = [&[0], &[1, 2]];
                t.step(0, &[1, 2], |i| mean(groups[i])).unwrap()
            } else {
                t.step(0, &[3], |_| mean(&[0, 1, 2])).unwrap()
            };
            (out.grad_norm, var.as_tensor().to_vec1::<f64>().unwrap())
        };
        let (a, b) = (run(true), run(false));
        assert!((a.0 - b.0).abs() < 1e-12, "{a:?} {b:?}");
        assert!((a.1[0] - b.1[0]).abs() < 1e-12);
    }

    #[test]
    fn non_finite_loss_leaves_the_weights_alone() {
        let dev = Device::Cpu;
        let var = Var::new(&[0.5f32], &dev).unwrap();
        let mut t = trainer(&var);
        let err = t
            .step(0, &[1, 1], |i| {
                let v = if i == 1 { f32::NAN } else { 1.0 };
                Ok((var.as_tensor() * 0.0)?.sum_all()?.affine(1.0, v as f64)?)
            })
            .unwrap_err();
        assert!(
            matches!(err, StepFailure::NonFinite { micro: Some(1), .. }),
            "{err}"
        );
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), vec![0.5]);
        assert_eq!(t.steps_taken(), 0);
    }
}
