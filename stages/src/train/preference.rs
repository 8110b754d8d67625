//! The objective of the preference trainers (orpo, dpo) for the step loop: pairs in
//! micro-batches of chosen and rejected answers, one forward each, the loss of the stage
//! ([`PairLoss`]) and TRL's metrics on the held-out pairs before, during and after training.

use candle_core::Tensor;
use serde::Serialize;

use super::driver::{logged, weighted_mean, NoExtra, Objective, Prepared, TrainError, Values};
use super::metrics::MetricRecord;
use super::pairs::PairRow;
use super::rng::{derive, Stream};
use crate::contract::StageContext;
use crate::llm::{LlamaModel, LlmError, Mode, PreferencePair};

/// Which pairs a micro-batch holds, for a loss that keeps per-pair data (dpo's reference
/// log-probs).
#[derive(Debug, Clone, Copy)]
pub enum PairsOf<'a> {
    /// Train rows by index.
    Train(&'a [usize]),
    /// The held-out batch of this index.
    Eval(usize),
}

/// A preference loss: the mean over a batch of pairs, and its metrics by TRL's names.
pub trait PairLoss {
    fn loss(
        &self,
        model: &LlamaModel,
        pairs: &[PreferencePair],
        which: PairsOf<'_>,
        pad: u32,
        mode: Mode,
    ) -> Result<(Tensor, Values), LlmError>;
}

/// A preference stage's objective: its loss over its train pairs and held-out batches.
pub struct PreferenceObjective<L> {
    pub stage: &'static str,
    pub loss: L,
    pub seed: u64,
    pub train: Vec<PairRow>,
    /// Held-out pairs in fixed batches ([`super::pairs::eval_batches`]).
    pub eval_batches: Vec<Vec<PreferencePair>>,
    pub pad: u32,
}

/// A metrics struct (serialised with TRL's names) as a map of its numbers.
pub fn values_of(metrics: &impl Serialize) -> Values {
    match serde_json::to_value(metrics) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| v.as_f64().map(|v| (k, v)))
            .collect(),
        _ => Values::new(),
    }
}

pub fn metric(values: &Values, key: &str) -> f64 {
    values.get(key).copied().unwrap_or(f64::NAN)
}

/// Scores the held-out batches with the current weights, in evaluation mode: the metrics of
/// all pairs, each batch weighted by its pairs.
pub fn evaluate_pairs<L: PairLoss>(
    loss: &L,
    model: &LlamaModel,
    batches: &[Vec<PreferencePair>],
    pad: u32,
) -> Result<Values, LlmError> {
    let mut parts = Vec::with_capacity(batches.len());
    for (i, batch) in batches.iter().enumerate() {
        let (_, values) = loss.loss(model, batch, PairsOf::Eval(i), pad, Mode::Eval)?;
        parts.push((values, batch.len()));
    }
    Ok(weighted_mean(&parts))
}

impl<L: PairLoss> Objective for PreferenceObjective<L> {
    type Eval = Values;
    type Extra = NoExtra;
    /// The pairs of a micro-batch and their train row indices.
    type Batch = (Vec<PreferencePair>, Vec<usize>);

    fn stage(&self) -> &'static str {
        self.stage
    }

    fn unit(&self) -> &'static str {
        "train pairs"
    }

    fn evaluate(&self, model: &LlamaModel) -> Result<Values, TrainError> {
        let result = evaluate_pairs(&self.loss, model, &self.eval_batches, self.pad).map_err(
            TrainError::llm(self.stage, "cannot evaluate on the held-out pairs"),
        )?;
        let loss = metric(&result, "loss");
        if !loss.is_finite() {
            return Err(TrainError::llm(self.stage, "evaluation")(
                LlmError::Invalid(format!(
                    "the held-out loss is {loss}: the model's outputs are not finite"
                )),
            ));
        }
        Ok(result)
    }

    fn fresh_extra(&self, _model: &LlamaModel) -> Result<NoExtra, TrainError> {
        Ok(NoExtra {})
    }

    fn prepare(
        &self,
        _model: &LlamaModel,
        _step: usize,
        micro_batches: &[Vec<usize>],
    ) -> Result<Prepared<Self::Batch>, TrainError> {
        let batches: Vec<Self::Batch> = micro_batches
            .iter()
            .map(|b| {
                (
                    b.iter().map(|&i| self.train[i].pair.clone()).collect(),
                    b.clone(),
                )
            })
            .collect();
        // The losses are means over pairs: weigh micro-batches by their pairs.
        let weights = micro_batches.iter().map(Vec::len).collect();
        let tokens = micro_batches
            .iter()
            .flatten()
            .map(|&i| self.train[i].tokens())
            .sum();
        Ok(Prepared {
            batches,
            weights,
            tokens,
        })
    }

    fn micro_loss(
        &self,
        model: &LlamaModel,
        (pairs, rows): &Self::Batch,
        step: usize,
        micro: usize,
    ) -> Result<(Tensor, Values), LlmError> {
        let mode = Mode::Train {
            seed: derive(self.seed, Stream::Dropout, step as u64, micro as u64),
        };
        self.loss
            .loss(model, pairs, PairsOf::Train(rows), self.pad, mode)
    }

    fn describe(&self, row: usize) -> String {
        self.train[row].describe()
    }

    fn log_eval(&self, eval: &Values, record: &mut MetricRecord) {
        record.eval_loss = eval.get("loss").copied();
        record.extra.extend(logged(eval, "eval_"));
    }

    fn before_line(&self, before: &Values) -> String {
        format!(
            "{}: before training, held-out accuracy {:.3}, margin {:.4}, loss {:.4}",
            self.stage,
            metric(before, "rewards/accuracies"),
            metric(before, "rewards/margins"),
            metric(before, "loss"),
        )
    }

    fn bar_message(&self, r: &MetricRecord) -> String {
        let get = |k: &str| r.extra.get(k).copied().unwrap_or(f64::NAN);
        format!(
            "loss {:.3} acc {:.2} margin {:.4} {:.0} tok/s{}",
            r.loss.unwrap_or(f64::NAN),
            get("rewards/accuracies"),
            get("rewards/margins"),
            r.tokens_per_s.unwrap_or(0.0),
            r.extra
                .get("eval_rewards/accuracies")
                .map(|a| format!(" eval acc {a:.2}"))
                .unwrap_or_default()
        )
    }
}

/// The numbers `pipe show` and the manifest headline of a preference stage.
pub fn set_headline_metrics(
    cx: &mut StageContext,
    (before, after): (&Values, &Values),
    run: &super::driver::RunTotals,
    train_pairs: usize,
) {
    for (name, key) in [
        ("eval_loss", "loss"),
        ("eval_accuracy", "rewards/accuracies"),
        ("eval_margin", "rewards/margins"),
    ] {
        cx.set_metric(&format!("{name}_before"), metric(before, key));
        cx.set_metric(&format!("{name}_after"), metric(after, key));
    }
    cx.set_metric("tok_s", run.tokens_per_s);
    if let Some(mb) = run.peak_rss_mb {
        cx.set_metric("peak_rss_mb", mb);
    }
    cx.set_metric("steps", run.steps);
    cx.set_metric("train_pairs", train_pairs);
}

/// `a -> b` of one eval metric.
pub fn before_after(before: &Values, after: &Values, key: &str) -> String {
    format!("{:.4} -> {:.4}", metric(before, key), metric(after, key))
}

/// The curves of `pipe show` for a preference stage: loss, reward accuracy and reward margin
/// over the steps, train and held out.
pub fn write_curves(records: &[MetricRecord], out: &mut dyn std::io::Write) -> std::io::Result<()> {
    for (name, key) in [
        ("loss", "loss"),
        ("accuracy", "rewards/accuracies"),
        ("margin", "rewards/margins"),
    ] {
        writeln!(out)?;
        super::chart::write_chart(
            name,
            &super::chart::series(records, key),
            &super::chart::series(records, &format!("eval_{key}")),
            out,
        )?;
    }
    Ok(())
}

/// The lines of `pipe show` about the adapter, the pairs and the speed of a preference run.
pub fn write_run_lines(
    (init, lora): (super::policy::Init, &super::lora_settings::LoraSettings),
    (pairs, eval_pairs, max_seq_len): (&super::pairs::PairCounts, usize, usize),
    run: &super::driver::RunTotals,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    match init {
        super::policy::Init::New => writeln!(
            out,
            "lora        new: r {}, alpha {}, dropout {}, on {} ({} trainable parameters)",
            lora.r,
            lora.alpha,
            lora.dropout,
            lora.target_modules.join(" "),
            run.trainable_parameters
        )?,
        super::policy::Init::ContinueSft => writeln!(
            out,
            "lora        the sft adapter, trained further ({} trainable parameters)",
            run.trainable_parameters
        )?,
    }
    let p = pairs;
    writeln!(
        out,
        "pairs       {} in pairs.jsonl: {} train, {} held out ({eval_pairs} evaluated); max_seq_len {max_seq_len}: {} truncated, {} dropped",
        p.pairs,
        p.train.kept,
        p.eval.kept,
        p.train.truncated + p.eval.truncated,
        p.train.dropped() + p.eval.dropped()
    )?;
    writeln!(
        out,
        "train loss  {:.4} first, {:.4} last",
        run.train_loss_first, run.train_loss_last
    )
}

/// The speed and memory lines of `pipe show` of any trainer.
pub fn write_speed(
    run: &super::driver::RunTotals,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    writeln!(
        out,
        "speed       {} tokens in {:.1}s of training: {:.0} tok/s; stage wall time {:.1}s",
        run.tokens, run.train_seconds, run.tokens_per_s, run.wall_seconds
    )?;
    if let Some(mb) = run.peak_rss_mb {
        writeln!(out, "memory      peak RSS {mb:.0} MiB")?;
    }
    Ok(())
}

/// What a preference stage starts from: its pairs split, rendered and fitted, the policy
/// model before training, and where and as what run it keeps its checkpoints.
pub struct PreferenceStart {
    pub info: crate::model::artifact::ModelInfo,
    pub model: LlamaModel,
    pub train: Vec<PairRow>,
    /// The held-out pairs evaluated (`max_eval_pairs` may cap them).
    pub eval: Vec<PairRow>,
    pub counts: super::pairs::PairCounts,
    /// Tokens of each train pair, for the batching plan.
    pub lengths: Vec<usize>,
    pub seed: u64,
    pub fingerprint: String,
    pub partial: std::path::PathBuf,
}

/// The settings of a preference stage that shape its start.
pub struct PreferenceSetup<'a, S> {
    pub stage: &'static str,
    /// The stage's effective settings, in the run's fingerprint.
    pub settings: &'a S,
    pub train: &'a super::settings::TrainSettings,
    pub init: super::policy::Init,
    pub eval_fraction: f64,
    pub max_eval_pairs: Option<usize>,
    /// The checkpoint state format.
    pub format: u32,
}

/// Reads the `model` stack and the `pairs` of `cx`: the pairs (split, rendered, fitted; each
/// side non-empty) and the policy ([`super::policy::start_policy`]).
pub fn start<S: Serialize>(
    cx: &StageContext,
    setup: &PreferenceSetup<'_, S>,
) -> crate::contract::StageResult<PreferenceStart> {
    let t = setup.train;
    let seed = t.seed.unwrap_or(cx.seed());
    let pairs_path = pairs_file(cx)?;
    let stack = crate::base::ModelStack::from_chain(cx.chain("model")?)?;
    let (base, device) = crate::base::BaseModel::open(&stack.base, cx.workspace())?;
    let split = (setup.eval_fraction, t.max_seq_len);
    let pairs = super::pairs::prepare(setup.stage, &base, &pairs_path, split, seed)?;
    let crate::base::BaseModel {
        info, mut model, ..
    } = base;
    super::policy::start_policy(&mut model, &stack, setup.init, &t.lora, seed, &device)?;
    let lengths: Vec<usize> = pairs.train.iter().map(PairRow::len).collect();
    let mut eval = pairs.eval;
    if let Some(max) = setup.max_eval_pairs {
        eval.truncate(max);
    }
    // The adapters' directories name their artifacts' keys.
    let below: Vec<String> = stack
        .adapters
        .iter()
        .map(|a| a.dir.to_string_lossy().into_owned())
        .collect();
    let below: Vec<&str> = below.iter().map(String::as_str).collect();
    let rows = pairs
        .train
        .iter()
        .chain(&eval)
        .map(|r| (r.id.as_str(), r.tokens()));
    let fingerprint =
        super::resume::fingerprint(setup.format, setup.settings, seed, &info.name, &below, rows);
    let partial = cx
        .partial_dir()
        .map_err(|source| super::output::OutputError {
            path: std::path::PathBuf::from(format!(
                "the checkpoint directory under artifacts/.partial/{}",
                setup.stage
            )),
            source,
        })?
        .to_path_buf();
    Ok(PreferenceStart {
        info,
        model,
        train: pairs.train,
        eval,
        counts: pairs.counts,
        lengths,
        seed,
        fingerprint,
        partial,
    })
}

/// The inputs of a preference stage: `model` (default: the instance `sft` when the pipeline
/// has one, else the base `model`) and `pairs` (default `score`).
pub fn inputs(
    model: Option<&str>,
    pairs: Option<&str>,
    pipeline: &crate::contract::Pipeline,
) -> Vec<crate::contract::Input> {
    use crate::contract::Input;
    let default_model = if pipeline.kind_of("sft") == Some("sft") {
        "sft"
    } else {
        "model"
    };
    vec![
        Input::one("model", model, default_model, crate::base::MODEL_KINDS).following("model"),
        Input::one("pairs", pairs, "score", &["score", "ingest"]),
    ]
}

/// The pairs of the instance the input `pairs` names: a score instance's `pairs.jsonl`, or
/// the splits of an ingest instance with layout "preference".
fn pairs_file(cx: &StageContext) -> crate::contract::StageResult<super::pairs::PairsSource> {
    use super::pairs::PairsSource;
    let link = cx.top("pairs")?;
    match link.kind.as_str() {
        "score" => Ok(PairsSource::Score(
            link.dir.join(crate::score::artifact::PAIRS_FILE),
        )),
        "ingest" => Ok(PairsSource::Ingest(link.dir.clone())),
        other => Err(format!(
            "`pairs` reads `{}`, an instance of kind {other}, whose rows are not preference pairs",
            link.instance
        )
        .into()),
    }
}

/// Writes what a finished trainer leaves in `out`: the adapter (PEFT) in `adapter_dir` and the
/// metrics log as `metrics_file`; returns the adapter's portable base name.
pub fn write_outputs<O: Objective>(
    driver: &super::driver::Driver<'_, O>,
    info: &crate::model::artifact::ModelInfo,
    out: &std::path::Path,
    (adapter_dir, metrics_file): (&str, &str),
) -> crate::contract::StageResult<String> {
    let stage = driver.objective.stage();
    let base_name = super::output::save_adapter(
        &driver.model,
        &info.name,
        &info.path,
        &out.join(adapter_dir),
    )
    .map_err(TrainError::llm(stage, "cannot write the adapter"))?;
    super::output::copy(
        &driver.partial().join(super::driver::METRICS_PARTIAL),
        &out.join(metrics_file),
    )?;
    Ok(base_name)
}

/// The plan line of a preference stage's progress output.
pub fn plan_line(
    stage: &str,
    plan: &super::Plan,
    train: &super::settings::TrainSettings,
    (init, loss): (super::policy::Init, String),
    trainable: u64,
) -> String {
    format!(
        "{stage}: {} steps of {} micro-batch(es) of {} pairs, {loss}, lr {:e} {}; {} ({trainable} trainable parameters)",
        plan.total_steps(),
        train.gradient_accumulation,
        train.batch_size,
        train.learning_rate,
        train.lr_scheduler.name(),
        match init {
            super::policy::Init::New => format!(
                "new LoRA r {} on {}",
                train.lora.r,
                train.lora.target_modules.join(" ")
            ),
            super::policy::Init::ContinueSft => "continuing the sft adapter".to_string(),
        }
    )
}
