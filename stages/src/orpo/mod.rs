//! The `orpo` stage: preference optimisation (ORPO, Hong et al. 2024) on the score stage's
//! pairs, on top of the base model with the sft adapter, with TRL's metrics on a held-out
//! share of the pairs before, during and after training.
//!
//! It trains with the machinery sft uses (stages/src/train): a run is a pure function of its
//! settings and seed, checkpoints in the partial directory hold the LoRA weights, the AdamW
//! moments and the step, and a run killed at any point resumes to the same adapter as an
//! uninterrupted one. The chosen and rejected answers of a pair go through the model in one
//! batch, and the loss is the LLM engine's [`orpo_loss`].

pub mod artifact;
mod config;
mod data;
mod report;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};

pub use config::OrpoStageConfig;

use artifact::{ADAPTER_DIR, METRICS_FILE, SUMMARY_FILE};
use config::{Init, OrpoSettings};
use data::{PairCounts, PairRow};
use report::{OrpoSummary, OrpoValues};

use crate::base::{BaseModel, BaseModelError};
use crate::contract::{ConfigIssue, Stage, StageContext, StageResult};
use crate::llm::loss::DEFAULT_CHUNK;
use crate::llm::{
    merge_adapters_into_model, orpo_loss, LlamaModel, LlmError, Mode, OrpoConfig, OrpoOutput,
    PeftAdapter, PreferencePair,
};
use crate::progress::{Bar, Progress};
use crate::score::artifact::PAIRS_FILE;
use crate::sft::artifact::ADAPTER_DIR as SFT_ADAPTER_DIR;
use crate::train::checkpoint::{self, CheckpointError};
use crate::train::memory::{peak_rss_mb, reset_peak};
use crate::train::metrics::MetricsError;
use crate::train::output::{copy, save_adapter, write_json, OutputError};
use crate::train::resume::{fingerprint, resume, ResumeError, RunCheckpoint, ThisRun};
use crate::train::rng::{derive, Stream};
use crate::train::step::Hooks;
use crate::train::step::{culprits, kept_checkpoint, NonFinite};
use crate::train::{MetricRecord, MetricsLog, Plan, Schedule, StepFailure, StepOutcome, Trainer};

/// The `orpo` stage.
pub struct Orpo;

/// Why orpo failed. Messages name the file, line, step or key, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OrpoError {
    #[error(transparent)]
    Model(#[from] BaseModelError),
    #[error("{}:{line}: {message}", path.display())]
    Pairs {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: score kept 0 pairs; lower score.min_margin (or add score.extra_pairs) so that some prompts yield a pair, then `pipe run --from score`", path.display())]
    NoPairs { path: PathBuf },
    #[error("{}: orpo needs at least 2 pairs (one to train on, one to hold out), score kept {count}; lower score.min_margin or generate more candidates", path.display())]
    TooFewPairs { path: PathBuf, count: usize },
    #[error("{PAIRS_FILE} line {line} (pair id {id}): cannot render it with the chat template: {source}")]
    Render {
        line: usize,
        id: String,
        #[source]
        source: Box<LlmError>,
    },
    #[error("[orpo] none of the {rows} {side} pairs fits `max_seq_len` = {max_seq_len} (prompt + the longer answer); raise `max_seq_len`")]
    NoRows {
        side: &'static str,
        rows: usize,
        max_seq_len: usize,
    },
    #[error("cannot read the sft adapter in {}: {source}; re-run `pipe run --from sft`", path.display())]
    SftAdapter {
        path: PathBuf,
        #[source]
        source: Box<LlmError>,
    },
    /// Boxed: the largest variant.
    #[error(transparent)]
    NonFinite(Box<NonFinite>),
    #[error("orpo: {context}: {source}")]
    Llm {
        context: String,
        #[source]
        source: Box<LlmError>,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("orpo: {{0}}")]
    Resume(#[from] ResumeError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("orpo: stopped after step {0} as asked (a simulated crash)")]
    Interrupted(usize),
}

fn llm(context: impl Into<String>) -> impl FnOnce(LlmError) -> OrpoError {
    let context = context.into();
    move |source| OrpoError::Llm {
        context,
        source: Box::new(source),
    }
}

impl Stage for Orpo {
    const NAME: &'static str = "orpo";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "ORPO preference training on score's pairs, on top of base + sft, resumable";
    const DEPS: &'static [&'static str] = &["model", "sft", "score"];
    const STARTER: &'static str = r#"[orpo]
# init = "new"             # "new": a new LoRA on base + sft (merged); "continue_sft": train
#                          # the sft adapter further (the orpo adapter then replaces it)
# beta = 0.1               # weight of the odds-ratio term (λ of the paper)
# nll = "completion"       # NLL over the chosen answer ("completion") or prompt + answer
#                          # ("full", as TRL's ORPOTrainer)
# epochs = 1               # passes over the train pairs (fractions allowed); or:
# max_steps = 100          # optimizer steps (instead of epochs)
# learning_rate = 5e-5     # peak learning rate of AdamW
# lr_scheduler = "cosine"  # "cosine", "linear" or "constant", after a linear warmup from 0
# warmup_ratio = 0.1       # share of the steps spent warming up; or:
# warmup_steps = 10
# batch_size = 4           # pairs per micro-batch (chosen and rejected go in one batch)
# gradient_accumulation = 2  # micro-batches per optimizer step
# max_seq_len = 512        # tokens of prompt + the longer answer (the prompt's start is cut)
# weight_decay = 0.0       # AdamW decoupled weight decay
# max_grad_norm = 1.0      # clip the global gradient norm (0: off)
# seed = 42                # default: [project] seed; fixes the split, LoRA init, order, dropout
# eval_fraction = 0.2      # share of the pairs held out for evaluation (seeded by pair id)
# eval_every = 20          # also evaluate every N steps (always before and after)
# save_every = 50          # checkpoint every N steps; a killed run resumes from the last one
# max_eval_pairs = 100     # evaluate on at most this many held-out pairs (default: all)

[orpo.lora]                # the new adapter (init = "new"), keys as in [sft.lora]
# r = 16
# alpha = 32
# dropout = 0.05
# target_modules = ["all-linear"]
# use_rslora = false
"#;
    type Config = OrpoStageConfig;

    fn validate(cfg: &OrpoStageConfig) -> Result<(), ConfigIssue> {
        config::validate(cfg)
    }

    fn run(cfg: &OrpoStageConfig, cx: &mut StageContext) -> StageResult {
        run_orpo(cfg, cx, Hooks::default())
    }

    fn show(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
        report::show(dir, out)
    }
}

/// Bumped when the checkpoint layout or meaning changes: older checkpoints are ignored.
const STATE_FORMAT: u32 = 1;
const METRICS_PARTIAL: &str = "metrics.jsonl";

/// What a checkpoint records besides tensors: where the run is and what it has measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    format: u32,
    /// The run this checkpoint belongs to (settings, seed, pairs, base, sft adapter).
    fingerprint: String,
    /// Optimizer steps completed.
    step: usize,
    tokens: usize,
    train_seconds: f64,
    wall_seconds: f64,
    /// The loss of every completed step.
    losses: Vec<f64>,
    eval_before: OrpoValues,
    /// The latest evaluation and the step it ran after.
    last_eval: (usize, OrpoValues),
}

impl RunCheckpoint for RunState {
    fn identity(&self) -> (u32, &str) {
        (self.format, &self.fingerprint)
    }

    fn step(&self) -> usize {
        self.step
    }
}

/// Everything a run needs, prepared from the settings and the inputs.
struct Run<'a> {
    settings: OrpoSettings,
    loss: OrpoConfig,
    seed: u64,
    model: LlamaModel,
    train: Vec<PairRow>,
    plan: Plan,
    trainer: Trainer,
    eval_batches: Vec<Vec<PreferencePair>>,
    pad: u32,
    partial: PathBuf,
    fingerprint: String,
    progress: &'a dyn Progress,
    started: Instant,
    /// The step of the checkpoint on disk, if any.
    saved_step: Option<usize>,
}

/// The pairs of a run, split, rendered and fitted.
struct Pairs {
    train: Vec<PairRow>,
    eval: Vec<PairRow>,
    counts: PairCounts,
}

pub(crate) fn run_orpo(cfg: &OrpoStageConfig, cx: &mut StageContext, hooks: Hooks) -> StageResult {
    reset_peak();
    let settings = cfg.resolve();
    let seed = settings.seed.unwrap_or(cx.seed());
    let pairs_path = cx.input("score")?.join(PAIRS_FILE);
    let sft_dir = cx.input("sft")?.join(SFT_ADAPTER_DIR);
    let (base, device) =
        BaseModel::open(cx.input("model")?, cx.workspace()).map_err(OrpoError::from)?;
    let pairs = prepare_pairs(&base, &pairs_path, &settings, seed)?;
    let BaseModel {
        info, mut model, ..
    } = base;
    prepare_model(&mut model, &sft_dir, &settings, seed, &device)?;
    let lengths: Vec<usize> = pairs.train.iter().map(PairRow::len).collect();
    let plan = Plan::new(
        &lengths,
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
    .map_err(|e| llm("cannot create the optimizer")(e.into()))?;
    let mut eval = pairs.eval;
    if let Some(max) = settings.max_eval_pairs {
        eval.truncate(max);
    }
    let eval_batches = eval_batches(&eval, settings.batch_size);
    report_plan(
        cx.progress(),
        &settings,
        &pairs.counts,
        eval.len(),
        &plan,
        trainable,
    );
    // The sft artifact's directory names its key.
    let sft_key = sft_dir.to_string_lossy();
    let rows = pairs
        .train
        .iter()
        .chain(&eval)
        .map(|r| (r.id.as_str(), r.tokens()));
    let fingerprint = fingerprint(STATE_FORMAT, &settings, seed, &info.name, &[&sft_key], rows);
    let partial = cx.partial_dir().map_err(|source| OutputError {
        path: PathBuf::from("the checkpoint directory under artifacts/.partial/orpo"),
        source,
    })?;
    let mut run = Run {
        loss: settings.loss(),
        settings,
        seed,
        model,
        train: pairs.train,
        plan,
        trainer,
        eval_batches,
        pad: info.pad_token_id,
        partial: partial.to_path_buf(),
        fingerprint,
        progress: cx.progress(),
        started: Instant::now(),
        saved_step: None,
    };
    let (mut state, mut log, resumed_from) = match run.resume()? {
        Some(state) => {
            let log = MetricsLog::open(&run.partial.join(METRICS_PARTIAL), Some(state.step))?;
            let step = state.step;
            (state, log, Some(step))
        }
        None => {
            let (state, log) = run.fresh_start()?;
            (state, log, None)
        }
    };
    run.train_steps(&mut state, &mut log, hooks)?;
    let after = match &state.last_eval {
        (step, result) if *step == state.step => result.clone(),
        _ => run.evaluate()?,
    };
    state.wall_seconds += run.started.elapsed().as_secs_f64();

    let out = cx.out_dir().to_path_buf();
    let base_name = save_adapter(&run.model, &info.name, &info.path, &out.join(ADAPTER_DIR))
        .map_err(llm("cannot write the adapter"))?;
    copy(&run.partial.join(METRICS_PARTIAL), &out.join(METRICS_FILE))?;
    let summary = summarize(
        &run,
        &state,
        after,
        pairs.counts,
        resumed_from,
        trainable,
        base_name,
    );
    write_json(&out.join(SUMMARY_FILE), &summary)?;
    cx.progress().info(&format!(
        "orpo: held-out accuracy {}, margin {}, after {} steps, {:.0} tok/s",
        report::before_after(&summary, "rewards/accuracies"),
        report::before_after(&summary, "rewards/margins"),
        summary.steps,
        summary.tokens_per_s
    ));
    set_headline_metrics(cx, &summary);
    Ok(())
}

/// Reads, splits, renders and fits the pairs; each side must keep at least one.
fn prepare_pairs(
    base: &BaseModel,
    path: &Path,
    settings: &OrpoSettings,
    seed: u64,
) -> Result<Pairs, OrpoError> {
    let all = data::read_pairs(path)?;
    if all.len() < 2 {
        return Err(OrpoError::TooFewPairs {
            path: path.to_path_buf(),
            count: all.len(),
        });
    }
    let total = all.len();
    let split = data::split(all, settings.eval_fraction, seed);
    let (train, train_counts) = data::encode(base, &split.train, settings.max_seq_len)?;
    let (eval, eval_counts) = data::encode(base, &split.eval, settings.max_seq_len)?;
    for (side, rows, counts) in [
        ("train", &train, &train_counts),
        ("held-out", &eval, &eval_counts),
    ] {
        if rows.is_empty() {
            return Err(OrpoError::NoRows {
                side,
                rows: counts.rows,
                max_seq_len: settings.max_seq_len,
            });
        }
    }
    Ok(Pairs {
        train,
        eval,
        counts: PairCounts {
            pairs: total,
            train: train_counts,
            eval: eval_counts,
        },
    })
}

/// The model ORPO trains: base with the sft adapter merged and a new LoRA, or base with the
/// sft adapter attached as the trainable one.
fn prepare_model(
    model: &mut LlamaModel,
    sft_dir: &Path,
    settings: &OrpoSettings,
    seed: u64,
    device: &Device,
) -> Result<(), OrpoError> {
    let sft = PeftAdapter::load(sft_dir, device).map_err(|source| OrpoError::SftAdapter {
        path: sft_dir.to_path_buf(),
        source: Box::new(source),
    })?;
    match settings.init {
        Init::New => {
            merge_adapters_into_model(model, &[sft])
                .map_err(llm("cannot merge the sft adapter into the base model"))?;
            model
                .attach_lora(&settings.lora.engine_config(seed))
                .map_err(llm("cannot attach LoRA"))
        }
        Init::ContinueSft => sft
            .attach_to(model)
            .map_err(llm("cannot attach the sft adapter")),
    }
}

/// Held-out pairs sorted by length in batches: fixed, so every evaluation scores the same
/// batches.
fn eval_batches(eval: &[PairRow], batch_size: usize) -> Vec<Vec<PreferencePair>> {
    let mut order: Vec<&PairRow> = eval.iter().collect();
    order.sort_by_key(|r| r.len());
    order
        .chunks(batch_size.max(1))
        .map(|rows| rows.iter().map(|r| r.pair.clone()).collect())
        .collect()
}

/// The ORPO loss of one micro-batch of pairs: chosen and rejected padded into one batch and
/// run through the model together. Training and evaluation both go through here.
fn micro_loss(
    model: &LlamaModel,
    pairs: &[PreferencePair],
    pad: u32,
    loss: &OrpoConfig,
    mode: Mode,
) -> Result<OrpoOutput, LlmError> {
    orpo_loss(model, pairs, pad, loss, mode, DEFAULT_CHUNK)
}

/// The metrics of a batch by TRL's names.
fn values(output: &OrpoOutput) -> OrpoValues {
    match serde_json::to_value(&output.metrics) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| v.as_f64().map(|v| (k, v)))
            .collect(),
        _ => OrpoValues::new(),
    }
}

/// The mean of batch metrics weighted by their pair counts: the metrics of all pairs at once.
fn weighted_mean(parts: &[(OrpoValues, usize)]) -> OrpoValues {
    let total: usize = parts.iter().map(|(_, n)| n).sum();
    let mut out = OrpoValues::new();
    for (values, n) in parts {
        for (k, v) in values {
            *out.entry(k.clone()).or_insert(0.0) += v * *n as f64 / total.max(1) as f64;
        }
    }
    out
}

/// Scores the held-out batches with the current weights, in evaluation mode.
fn evaluate_batches(
    model: &LlamaModel,
    batches: &[Vec<PreferencePair>],
    pad: u32,
    loss: &OrpoConfig,
) -> Result<OrpoValues, LlmError> {
    let mut parts = Vec::with_capacity(batches.len());
    for batch in batches {
        let out = micro_loss(model, batch, pad, loss, Mode::Eval)?;
        parts.push((values(&out), batch.len()));
    }
    Ok(weighted_mean(&parts))
}

/// `metrics` as a metrics-log map with `prefix` (`""` or `"eval_"`), without `loss`, which
/// has its own field.
fn logged(metrics: &OrpoValues, prefix: &str) -> BTreeMap<String, f64> {
    metrics
        .iter()
        .filter(|(k, _)| k.as_str() != "loss")
        .map(|(k, v)| (format!("{prefix}{k}"), *v))
        .collect()
}

fn metric(values: &OrpoValues, key: &str) -> f64 {
    values.get(key).copied().unwrap_or(f64::NAN)
}

impl Run<'_> {
    /// Restores the checkpoint of this run, if there is one.
    fn resume(&mut self) -> Result<Option<RunState>, OrpoError> {
        let this = ThisRun {
            stage: "orpo",
            partial: &self.partial,
            format: STATE_FORMAT,
            fingerprint: &self.fingerprint,
            total_steps: self.plan.total_steps(),
            progress: self.progress,
        };
        let state: Option<RunState> = resume(&this, &self.model, &mut self.trainer)?;
        self.saved_step = state.as_ref().map(|s| s.step);
        Ok(state)
    }

    /// A run from step 0: the evaluation before training and a new log.
    fn fresh_start(&mut self) -> Result<(RunState, MetricsLog), OrpoError> {
        let before = self.evaluate()?;
        self.progress.info(&format!(
            "orpo: before training, held-out accuracy {:.3}, margin {:.4}, loss {:.4}",
            metric(&before, "rewards/accuracies"),
            metric(&before, "rewards/margins"),
            metric(&before, "loss"),
        ));
        let mut log = MetricsLog::open(&self.partial.join(METRICS_PARTIAL), None)?;
        log.append(&MetricRecord {
            step: 0,
            epoch: 0.0,
            eval_loss: before.get("loss").copied(),
            extra: logged(&before, "eval_"),
            ..MetricRecord::default()
        })?;
        let state = RunState {
            format: STATE_FORMAT,
            fingerprint: self.fingerprint.clone(),
            step: 0,
            tokens: 0,
            train_seconds: 0.0,
            wall_seconds: 0.0,
            losses: Vec::new(),
            last_eval: (0, before.clone()),
            eval_before: before,
        };
        Ok((state, log))
    }

    /// Runs the remaining steps, logging, evaluating and checkpointing as configured.
    fn train_steps(
        &mut self,
        state: &mut RunState,
        log: &mut MetricsLog,
        hooks: Hooks,
    ) -> Result<(), OrpoError> {
        let total = self.plan.total_steps();
        let bar = self.progress.bar(Some(total as u64), "steps");
        bar.set_position(state.step as u64);
        let wall_at_start = state.wall_seconds;
        for step in state.step..total {
            let clock = Instant::now();
            let (outcome, metrics, tokens) = self.step(step)?;
            let seconds = clock.elapsed().as_secs_f64();
            state.step = step + 1;
            state.tokens += tokens;
            state.train_seconds += seconds;
            state.losses.push(outcome.loss);
            let mut record = MetricRecord {
                extra: logged(&metrics, ""),
                ..MetricRecord::for_step(&self.plan, step, &outcome, tokens, seconds)
            };
            if self
                .plan
                .evaluates_after(step + 1, self.settings.eval_every)
            {
                let result = self.evaluate()?;
                record.eval_loss = result.get("loss").copied();
                record.extra.extend(logged(&result, "eval_"));
                state.last_eval = (step + 1, result);
            }
            log.append(&record)?;
            update_bar(bar.as_ref(), &record);
            if self.plan.saves_after(step + 1, self.settings.save_every) {
                state.wall_seconds = wall_at_start + self.started.elapsed().as_secs_f64();
                self.save(state)?;
            }
            if hooks.stop_after == Some(step + 1) {
                return Err(OrpoError::Interrupted(step + 1));
            }
        }
        state.wall_seconds = wall_at_start;
        bar.finish();
        Ok(())
    }

    /// One optimizer step: its outcome, the train metrics of its pairs, and its tokens.
    fn step(&mut self, step: usize) -> Result<(StepOutcome, OrpoValues, usize), OrpoError> {
        let rows: Vec<Vec<&PairRow>> = self
            .plan
            .step(step)
            .micro_batches
            .iter()
            .map(|b| b.iter().map(|&i| &self.train[i]).collect())
            .collect();
        let batches: Vec<Vec<PreferencePair>> = rows
            .iter()
            .map(|b| b.iter().map(|r| r.pair.clone()).collect())
            .collect();
        // ORPO's loss is a mean over pairs: weigh micro-batches by their pairs.
        let weights: Vec<usize> = batches.iter().map(Vec::len).collect();
        let tokens: usize = rows.iter().flatten().map(|r| r.tokens()).sum();
        let (seed, model, pad, loss) = (self.seed, &self.model, self.pad, self.loss);
        let mut parts = Vec::with_capacity(batches.len());
        let result = self.trainer.step(step, &weights, |i| {
            let mode = Mode::Train {
                seed: derive(seed, Stream::Dropout, step as u64, i as u64),
            };
            let out = micro_loss(model, &batches[i], pad, &loss, mode)?;
            parts.push((values(&out), batches[i].len()));
            Ok(out.loss)
        });
        match result {
            Ok(outcome) => Ok((outcome, weighted_mean(&parts), tokens)),
            Err(StepFailure::NonFinite { what, value, micro }) => {
                Err(OrpoError::NonFinite(Box::new(NonFinite {
                    stage: "orpo",
                    what,
                    value,
                    step: step + 1,
                    total: self.plan.total_steps(),
                    unit: "train pairs",
                    rows: culprits(&rows, micro, |r| r.describe()),
                    kept: kept_checkpoint(self.saved_step, &self.partial, self.settings.save_every),
                    lr: self.trainer.schedule().lr(step),
                })))
            }
            Err(StepFailure::Llm(source)) => Err(OrpoError::Llm {
                context: format!("step {}", step + 1),
                source: Box::new(source),
            }),
        }
    }

    fn save(&mut self, state: &RunState) -> Result<(), OrpoError> {
        let tensors = self.trainer.checkpoint_tensors(&self.model);
        checkpoint::save(&self.partial, state, &tensors)?;
        self.saved_step = Some(state.step);
        Ok(())
    }

    fn evaluate(&self) -> Result<OrpoValues, OrpoError> {
        let result = evaluate_batches(&self.model, &self.eval_batches, self.pad, &self.loss)
            .map_err(llm("cannot evaluate on the held-out pairs"))?;
        let loss = metric(&result, "loss");
        if !loss.is_finite() {
            return Err(OrpoError::Llm {
                context: "evaluation".into(),
                source: Box::new(LlmError::Invalid(format!(
                    "the held-out loss is {loss}: the model's outputs are not finite"
                ))),
            });
        }
        Ok(result)
    }
}

fn update_bar(bar: &dyn Bar, r: &MetricRecord) {
    bar.set_position(r.step as u64);
    let get = |k: &str| r.extra.get(k).copied().unwrap_or(f64::NAN);
    bar.set_message(format!(
        "loss {:.3} acc {:.2} margin {:.4} {:.0} tok/s{}",
        r.loss.unwrap_or(f64::NAN),
        get("rewards/accuracies"),
        get("rewards/margins"),
        r.tokens_per_s.unwrap_or(0.0),
        r.extra
            .get("eval_rewards/accuracies")
            .map(|a| format!(" eval acc {a:.2}"))
            .unwrap_or_default()
    ));
}

fn report_plan(
    progress: &dyn Progress,
    s: &OrpoSettings,
    counts: &PairCounts,
    eval_pairs: usize,
    plan: &Plan,
    trainable: u64,
) {
    let dropped = counts.train.dropped() + counts.eval.dropped();
    progress.info(&format!(
        "orpo: {} pairs: {} to train on, {eval_pairs} held out{}",
        counts.pairs,
        counts.train.kept,
        if dropped + counts.train.truncated + counts.eval.truncated > 0 {
            format!(
                " ({} truncated, {dropped} dropped over max_seq_len {})",
                counts.train.truncated + counts.eval.truncated,
                s.max_seq_len
            )
        } else {
            String::new()
        }
    ));
    progress.info(&format!(
        "orpo: {} steps of {} micro-batch(es) of {} pairs, beta {}, lr {:e} {}; {} ({trainable} trainable parameters)",
        plan.total_steps(),
        s.gradient_accumulation,
        s.batch_size,
        s.beta,
        s.learning_rate,
        s.lr_scheduler.name(),
        match s.init {
            Init::New => format!("new LoRA r {} on {}", s.lora.r, s.lora.target_modules.join(" ")),
            Init::ContinueSft => "continuing the sft adapter".to_string(),
        }
    ));
}

fn summarize(
    run: &Run<'_>,
    state: &RunState,
    after: OrpoValues,
    pairs: PairCounts,
    resumed_from_step: Option<usize>,
    trainable_parameters: u64,
    base_model: String,
) -> OrpoSummary {
    OrpoSummary {
        base_model,
        adapter_applies_to: OrpoSummary::applies_to(run.settings.init).to_string(),
        steps: state.step,
        epochs: run.plan.epoch_at(state.step),
        pairs,
        eval_pairs: run.eval_batches.iter().map(Vec::len).sum(),
        train_loss_first: state.losses.first().copied().unwrap_or(f64::NAN),
        train_loss_last: state.losses.last().copied().unwrap_or(f64::NAN),
        eval_before: state.eval_before.clone(),
        eval_after: after,
        tokens: state.tokens,
        train_seconds: state.train_seconds,
        wall_seconds: state.wall_seconds,
        tokens_per_s: state.tokens as f64 / state.train_seconds.max(1e-9),
        peak_rss_mb: peak_rss_mb(),
        resumed_from_step,
        trainable_parameters,
        seed: run.seed,
        settings: OrpoSettings {
            seed: Some(run.seed),
            ..run.settings.clone()
        },
    }
}

/// The numbers `pipe show` and the manifest headline.
fn set_headline_metrics(cx: &mut StageContext, s: &OrpoSummary) {
    for (name, key) in [
        ("eval_loss", "loss"),
        ("eval_accuracy", "rewards/accuracies"),
        ("eval_margin", "rewards/margins"),
    ] {
        cx.set_metric(&format!("{name}_before"), metric(&s.eval_before, key));
        cx.set_metric(&format!("{name}_after"), metric(&s.eval_after, key));
    }
    cx.set_metric("tok_s", s.tokens_per_s);
    if let Some(mb) = s.peak_rss_mb {
        cx.set_metric("peak_rss_mb", mb);
    }
    cx.set_metric("steps", s.steps);
    cx.set_metric("train_pairs", s.pairs.train.kept);
}
