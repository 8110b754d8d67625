//! The step loop every trainer stage runs (sft, orpo, dpo), generic over its [`Objective`]:
//! resume from the checkpoint of this run or start fresh (the evaluation before training and a
//! new metrics log), then step, log, evaluate every `eval_every` and checkpoint every
//! `save_every` steps, with the progress bar, the stop hook and the non-finite guard, and
//! finally the evaluation after training. A stage keeps only its data, its loss and metrics,
//! and its report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, CheckpointError};
use super::memory::peak_rss_mb;
use super::metrics::{MetricRecord, MetricsError, MetricsLog};
use super::resume::{resume, ResumeError, RunCheckpoint, ThisRun};
use super::settings::TrainSettings;
use super::step::{culprits, kept_checkpoint, Hooks, NonFinite, StepFailure, StepOutcome};
use super::{Plan, Schedule, Trainer};
use crate::llm::{LlamaModel, LlmError};
use crate::progress::{Bar, Progress};

/// Metrics by name (TRL's names for the preference trainers).
pub type Values = BTreeMap<String, f64>;

/// The metrics log's name in the partial directory (copied into the artifact at the end).
pub const METRICS_PARTIAL: &str = "metrics.jsonl";

/// Why the loop stopped. Messages name the stage, the step or the file.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Boxed: the largest variant.
    #[error(transparent)]
    NonFinite(Box<NonFinite>),
    #[error("{stage}: {context}: {source}")]
    Llm {
        stage: &'static str,
        context: String,
        #[source]
        source: Box<LlmError>,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Boxed, as `NonFinite`: every stage returns this error.
    #[error("{stage}: {source}")]
    Resume {
        stage: &'static str,
        #[source]
        source: Box<ResumeError>,
    },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("{stage}: stopped after step {step} as asked (a simulated crash)")]
    Interrupted { stage: &'static str, step: usize },
}

impl TrainError {
    /// An error of the LLM engine in `stage`, while doing `context`.
    pub fn llm(stage: &'static str, context: impl Into<String>) -> impl FnOnce(LlmError) -> Self {
        let context = context.into();
        move |source| TrainError::Llm {
            stage,
            context,
            source: Box::new(source),
        }
    }
}

/// One step's micro-batches, as an objective prepared them.
pub struct Prepared<B> {
    pub batches: Vec<B>,
    /// The weight of each micro-batch in the step's mean loss (its target tokens, or pairs).
    pub weights: Vec<usize>,
    /// Tokens through the model (no padding).
    pub tokens: usize,
}

/// What a trainer stage trains on and how it measures: the part of a run that differs
/// between sft, orpo and dpo.
pub trait Objective {
    /// What an evaluation measures (sft: loss and perplexity; orpo, dpo: TRL's metrics).
    type Eval: Clone + Serialize + DeserializeOwned;
    /// What the stage keeps in its checkpoints besides the common state.
    type Extra: Clone + Serialize + DeserializeOwned;
    /// One prepared micro-batch.
    type Batch;

    /// The stage's name in messages.
    fn stage(&self) -> &'static str;
    /// What its train rows are, in messages (`train rows`, `train pairs`).
    fn unit(&self) -> &'static str;
    /// Evaluates `model` on the held-out rows; a non-finite result is an error.
    fn evaluate(&self, model: &LlamaModel) -> Result<Self::Eval, TrainError>;
    /// The stage's state of a fresh run, once the evaluation before training is done.
    fn fresh_extra(&self, model: &LlamaModel) -> Result<Self::Extra, TrainError>;
    /// Batches the train rows of `micro_batches` (indices into the train rows) for `step`.
    fn prepare(
        &self,
        model: &LlamaModel,
        step: usize,
        micro_batches: &[Vec<usize>],
    ) -> Result<Prepared<Self::Batch>, TrainError>;
    /// The mean loss of micro-batch `micro` of `step` in training mode, and its metrics.
    fn micro_loss(
        &self,
        model: &LlamaModel,
        batch: &Self::Batch,
        step: usize,
        micro: usize,
    ) -> Result<(Tensor, Values), LlmError>;
    /// Train row `row`, for error messages.
    fn describe(&self, row: usize) -> String;
    /// Writes an evaluation into a metrics line.
    fn log_eval(&self, eval: &Self::Eval, record: &mut MetricRecord);
    /// The line of progress output about the evaluation before training.
    fn before_line(&self, eval: &Self::Eval) -> String;
    /// The progress bar's message after a step.
    fn bar_message(&self, record: &MetricRecord) -> String;
    /// Adds a step's micro-batch weights to the stage's state.
    fn account(&self, _extra: &mut Self::Extra, _weights: &[usize]) {}
    /// Work after the last step that the stage's wall time includes (sft's samples).
    fn after_training(&mut self, _model: &LlamaModel) -> Result<(), TrainError> {
        Ok(())
    }
}

/// No state besides the common one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NoExtra {}

/// What a checkpoint records besides tensors: where the run is and what it has measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "E: Serialize + DeserializeOwned, X: Serialize + DeserializeOwned")]
pub struct RunState<E, X> {
    pub format: u32,
    /// The run this checkpoint belongs to (settings, seed, data, base model, inputs).
    pub fingerprint: String,
    /// Optimizer steps completed.
    pub step: usize,
    pub tokens: usize,
    pub train_seconds: f64,
    pub wall_seconds: f64,
    /// The loss of every completed step.
    pub losses: Vec<f64>,
    pub eval_before: E,
    /// The latest evaluation and the step it ran after.
    pub last_eval: (usize, E),
    #[serde(flatten)]
    pub extra: X,
}

/// The checkpoint state of a run of objective `O`.
type StateOf<O> = RunState<<O as Objective>::Eval, <O as Objective>::Extra>;

impl<E: DeserializeOwned + Serialize, X: DeserializeOwned + Serialize> RunCheckpoint
    for RunState<E, X>
{
    fn identity(&self) -> (u32, &str) {
        (self.format, &self.fingerprint)
    }

    fn step(&self) -> usize {
        self.step
    }
}

/// Where a run keeps its checkpoints and what identifies it.
pub struct RunPlace<'a> {
    pub partial: PathBuf,
    /// Bumped when the checkpoint layout or meaning changes: older checkpoints are ignored.
    pub format: u32,
    pub fingerprint: String,
    pub progress: &'a dyn Progress,
}

/// A run of an objective: the model it trains, the plan of its steps and the optimizer.
pub struct Driver<'a, O: Objective> {
    pub objective: O,
    pub model: LlamaModel,
    pub plan: Plan,
    pub trainer: Trainer,
    pub eval_every: Option<usize>,
    pub save_every: usize,
    place: RunPlace<'a>,
    started: Instant,
    /// The step of the checkpoint on disk, if any.
    saved_step: Option<usize>,
}

/// A finished run: its state, the evaluation after training, the step it resumed from.
pub struct Finished<E, X> {
    pub state: RunState<E, X>,
    pub after: E,
    pub resumed_from: Option<usize>,
}

impl<'a, O: Objective> Driver<'a, O> {
    /// Plans the steps over train rows of `lengths` tokens and creates the optimizer of the
    /// LoRA attached to `model`; returns the driver and its number of trainable parameters.
    pub fn new(
        objective: O,
        model: LlamaModel,
        lengths: &[usize],
        settings: &TrainSettings,
        seed: u64,
        place: RunPlace<'a>,
    ) -> Result<(Self, u64), TrainError> {
        let plan = Plan::new(
            lengths,
            settings.batch_size,
            settings.gradient_accumulation,
            settings.run_length(),
            seed,
        );
        let schedule = Schedule::new(
            settings.learning_rate,
            settings.lr_scheduler,
            plan.total_steps(),
            settings.warmup_steps,
            settings.warmup_ratio,
        );
        let (trainer, trainable) = Trainer::for_lora(
            &model,
            settings.weight_decay,
            schedule,
            settings.max_grad_norm,
        )
        .map_err(|e| TrainError::llm(objective.stage(), "cannot create the optimizer")(e.into()))?;
        let driver = Self {
            objective,
            model,
            plan,
            trainer,
            eval_every: settings.eval_every,
            save_every: settings.save_every,
            place,
            started: Instant::now(),
            saved_step: None,
        };
        Ok((driver, trainable))
    }

    pub fn partial(&self) -> &Path {
        &self.place.partial
    }

    /// Resumes or starts, trains the remaining steps and evaluates after training.
    pub fn run(&mut self, hooks: Hooks) -> Result<Finished<O::Eval, O::Extra>, TrainError> {
        let log_path = self.place.partial.join(METRICS_PARTIAL);
        let (mut state, mut log, resumed_from) = match self.resume()? {
            Some(state) => {
                let log = MetricsLog::open(&log_path, Some(state.step))?;
                let step = state.step;
                (state, log, Some(step))
            }
            None => {
                let (state, log) = self.fresh_start()?;
                (state, log, None)
            }
        };
        self.train_steps(&mut state, &mut log, hooks)?;
        let after = match &state.last_eval {
            (step, result) if *step == state.step => result.clone(),
            _ => self.objective.evaluate(&self.model)?,
        };
        self.objective.after_training(&self.model)?;
        state.wall_seconds += self.started.elapsed().as_secs_f64();
        Ok(Finished {
            state,
            after,
            resumed_from,
        })
    }

    /// Restores the checkpoint of this run, if there is one.
    fn resume(&mut self) -> Result<Option<StateOf<O>>, TrainError> {
        let stage = self.objective.stage();
        let this = ThisRun {
            stage,
            partial: &self.place.partial,
            format: self.place.format,
            fingerprint: &self.place.fingerprint,
            total_steps: self.plan.total_steps(),
            progress: self.place.progress,
        };
        let state =
            resume(&this, &self.model, &mut self.trainer).map_err(|source| TrainError::Resume {
                stage,
                source: Box::new(source),
            })?;
        self.saved_step = state.as_ref().map(|s: &RunState<_, _>| s.step);
        Ok(state)
    }

    /// A run from step 0: the evaluation before training and a new log.
    fn fresh_start(&mut self) -> Result<(StateOf<O>, MetricsLog), TrainError> {
        let before = self.objective.evaluate(&self.model)?;
        self.place
            .progress
            .info(&self.objective.before_line(&before));
        let extra = self.objective.fresh_extra(&self.model)?;
        let mut log = MetricsLog::open(&self.place.partial.join(METRICS_PARTIAL), None)?;
        let mut record = MetricRecord {
            step: 0,
            epoch: 0.0,
            ..MetricRecord::default()
        };
        self.objective.log_eval(&before, &mut record);
        log.append(&record)?;
        let state = RunState {
            format: self.place.format,
            fingerprint: self.place.fingerprint.clone(),
            step: 0,
            tokens: 0,
            train_seconds: 0.0,
            wall_seconds: 0.0,
            losses: Vec::new(),
            last_eval: (0, before.clone()),
            eval_before: before,
            extra,
        };
        Ok((state, log))
    }

    /// Runs the remaining steps, logging, evaluating and checkpointing as configured.
    fn train_steps(
        &mut self,
        state: &mut StateOf<O>,
        log: &mut MetricsLog,
        hooks: Hooks,
    ) -> Result<(), TrainError> {
        let total = self.plan.total_steps();
        let bar = self.place.progress.bar(Some(total as u64), "steps");
        bar.set_position(state.step as u64);
        let wall_at_start = state.wall_seconds;
        for step in state.step..total {
            let clock = Instant::now();
            let (outcome, metrics, tokens, weights) = self.step(step)?;
            let seconds = clock.elapsed().as_secs_f64();
            state.step = step + 1;
            state.tokens += tokens;
            self.objective.account(&mut state.extra, &weights);
            state.train_seconds += seconds;
            state.losses.push(outcome.loss);
            let mut record = MetricRecord {
                extra: logged(&metrics, ""),
                ..MetricRecord::for_step(&self.plan, step, &outcome, tokens, seconds)
            };
            if self.plan.evaluates_after(step + 1, self.eval_every) {
                let result = self.objective.evaluate(&self.model)?;
                self.objective.log_eval(&result, &mut record);
                state.last_eval = (step + 1, result);
            }
            log.append(&record)?;
            update_bar(bar.as_ref(), &record, &self.objective);
            if self.plan.saves_after(step + 1, self.save_every) {
                state.wall_seconds = wall_at_start + self.started.elapsed().as_secs_f64();
                self.save(state)?;
            }
            if hooks.stop_after == Some(step + 1) {
                return Err(TrainError::Interrupted {
                    stage: self.objective.stage(),
                    step: step + 1,
                });
            }
        }
        state.wall_seconds = wall_at_start;
        bar.finish();
        Ok(())
    }

    /// One optimizer step: its outcome, the train metrics of its micro-batches (weighted),
    /// its tokens and the weights of its micro-batches.
    fn step(
        &mut self,
        step: usize,
    ) -> Result<(StepOutcome, Values, usize, Vec<usize>), TrainError> {
        let micro_batches = self.plan.step(step).micro_batches;
        let prepared = self.objective.prepare(&self.model, step, &micro_batches)?;
        let (objective, model) = (&self.objective, &self.model);
        let mut parts = Vec::with_capacity(prepared.batches.len());
        let result = self.trainer.step(step, &prepared.weights, |i| {
            let (loss, values) = objective.micro_loss(model, &prepared.batches[i], step, i)?;
            parts.push((values, prepared.weights[i]));
            Ok(loss)
        });
        let stage = self.objective.stage();
        match result {
            Ok(outcome) => Ok((
                outcome,
                weighted_mean(&parts),
                prepared.tokens,
                prepared.weights,
            )),
            Err(StepFailure::NonFinite { what, value, micro }) => {
                Err(TrainError::NonFinite(Box::new(NonFinite {
                    stage,
                    what,
                    value,
                    step: step + 1,
                    total: self.plan.total_steps(),
                    unit: self.objective.unit(),
                    rows: culprits(&micro_batches, micro, |&r| self.objective.describe(r)),
                    kept: kept_checkpoint(self.saved_step, &self.place.partial, self.save_every),
                    lr: self.trainer.schedule().lr(step),
                })))
            }
            Err(StepFailure::Llm(source)) => Err(TrainError::Llm {
                stage,
                context: format!("step {}", step + 1),
                source: Box::new(source),
            }),
        }
    }

    fn save(&mut self, state: &StateOf<O>) -> Result<(), TrainError> {
        let tensors = self.trainer.checkpoint_tensors(&self.model);
        checkpoint::save(&self.place.partial, state, &tensors)?;
        self.saved_step = Some(state.step);
        Ok(())
    }
}

fn update_bar<O: Objective>(bar: &dyn Bar, record: &MetricRecord, objective: &O) {
    bar.set_position(record.step as u64);
    bar.set_message(objective.bar_message(record));
}

/// The mean of batch metrics weighted by their counts: the metrics of all rows at once.
pub fn weighted_mean(parts: &[(Values, usize)]) -> Values {
    let total: usize = parts.iter().map(|(_, n)| n).sum();
    let mut out = Values::new();
    for (values, n) in parts {
        for (k, v) in values {
            *out.entry(k.clone()).or_insert(0.0) += v * *n as f64 / total.max(1) as f64;
        }
    }
    out
}

/// `metrics` as a metrics-log map with `prefix` (`""` or `"eval_"`), without `loss`, which
/// has its own field.
pub fn logged(metrics: &Values, prefix: &str) -> BTreeMap<String, f64> {
    metrics
        .iter()
        .filter(|(k, _)| k.as_str() != "loss")
        .map(|(k, v)| (format!("{prefix}{k}"), *v))
        .collect()
}

/// The fields of `summary.json` every trainer writes, flattened into each stage's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunTotals {
    pub steps: usize,
    pub epochs: f64,
    pub train_loss_first: f64,
    pub train_loss_last: f64,
    /// Tokens through the model in training steps (no padding).
    pub tokens: usize,
    /// Seconds in training steps (evaluations excluded).
    pub train_seconds: f64,
    /// Seconds of the whole stage, over every resumed attempt.
    pub wall_seconds: f64,
    pub tokens_per_s: f64,
    pub peak_rss_mb: Option<f64>,
    /// The checkpoint step this run resumed from, if it did.
    pub resumed_from_step: Option<usize>,
    pub trainable_parameters: u64,
    pub seed: u64,
}

impl RunTotals {
    /// The totals of a finished run of `plan`.
    pub fn of<E, X>(
        finished: &Finished<E, X>,
        plan: &Plan,
        trainable_parameters: u64,
        seed: u64,
    ) -> Self {
        let state = &finished.state;
        RunTotals {
            steps: state.step,
            epochs: plan.epoch_at(state.step),
            train_loss_first: state.losses.first().copied().unwrap_or(f64::NAN),
            train_loss_last: state.losses.last().copied().unwrap_or(f64::NAN),
            tokens: state.tokens,
            train_seconds: state.train_seconds,
            wall_seconds: state.wall_seconds,
            tokens_per_s: state.tokens as f64 / state.train_seconds.max(1e-9),
            peak_rss_mb: peak_rss_mb(),
            resumed_from_step: finished.resumed_from,
            trainable_parameters,
            seed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error's message shows its cause (a `{{0}}` once printed a literal `{0}`).
    #[test]
    fn every_error_message_shows_its_cause() {
        let cause = "the disk is on fire";
        let errors = [
            TrainError::Resume {
                stage: "dpo",
                source: Box::new(ResumeError::Restore {
                    dir: PathBuf::from("ckpt"),
                    source: LlmError::Invalid(cause.into()),
                }),
            },
            TrainError::Checkpoint(CheckpointError::Io {
                path: PathBuf::from("ckpt"),
                source: std::io::Error::other(cause),
            }),
            TrainError::llm("sft", "step 3")(LlmError::Invalid(cause.into())),
            TrainError::Metrics(MetricsError {
                path: PathBuf::from("metrics.jsonl"),
                message: cause.into(),
            }),
        ];
        for e in errors {
            let text = e.to_string();
            assert!(text.contains(cause) && !text.contains("{0}"), "{text}");
        }
        let stop = TrainError::Interrupted {
            stage: "orpo",
            step: 4,
        };
        assert_eq!(
            stop.to_string(),
            "orpo: stopped after step 4 as asked (a simulated crash)"
        );
    }

    #[test]
    fn weighted_means_count_every_row_once() {
        let part = |v: f64, n: usize| (Values::from([("m".to_string(), v)]), n);
        let mean = weighted_mean(&[part(1.0, 1), part(4.0, 3)]);
        assert!((mean["m"] - 3.25).abs() < 1e-12);
        assert!(weighted_mean(&[]).is_empty());
        let log = logged(
            &Values::from([("loss".into(), 1.0), ("rewards/margins".into(), 2.0)]),
            "eval_",
        );
        assert_eq!(log.keys().collect::<Vec<_>>(), ["eval_rewards/margins"]);
    }
}
