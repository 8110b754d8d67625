//! The `sft` stage: LoRA supervised fine-tuning of the base model on ingest's train split,
//! with a completion-only loss, evaluated on the val split before, during and after training.
//!
//! A run is a pure function of its settings and seed: the data order, LoRA dropout and
//! NEFTune noise of every step derive from (seed, step), and checkpoints in the partial
//! directory hold the LoRA weights, the AdamW moments and the step. A run killed at any point
//! resumes from its last checkpoint and ends with the same adapter as an uninterrupted one.

pub mod artifact;
mod config;
mod data;
mod report;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use config::SftConfig;

use artifact::{ADAPTER_DIR, METRICS_FILE, SAMPLES_FILE, SUMMARY_FILE};
use config::SftSettings;
use data::TokenRow;
use report::{Sample, SftSummary};

use crate::base::{load_adapters, BaseModel, BaseModelError, ModelStack, MODEL_KINDS};
use crate::contract::{ConfigIssue, Input, Pipeline, Stage, StageContext, StageResult};
use crate::ingest::artifact::{self as ingest, ExamplesError, TRAIN_FILE, VAL_FILE};
use crate::llm::loss::{TargetLogProbs, DEFAULT_CHUNK};
use crate::llm::{
    merge_adapters_into_model, LlamaModel, LlmError, Mode, TargetMask, TextTokenizer, TokenBatch,
};
use crate::progress::Progress;
use crate::train::driver::{
    Driver, Finished, Objective, Prepared, RunPlace, RunTotals, TrainError, Values, METRICS_PARTIAL,
};
use crate::train::eval::completion_loss;
use crate::train::fit::{FitCounts, Overlength};
use crate::train::greedy::greedy;
use crate::train::memory::reset_peak;
use crate::train::output::{copy, save_adapter, write_json, write_jsonl, OutputError};
use crate::train::resume::fingerprint;
#[cfg(test)]
use crate::train::resume::ResumeError;
use crate::train::rng::{derive, Stream};
use crate::train::settings::TrainSettings;
use crate::train::step::Hooks;
use crate::train::{neftune, EvalResult, MetricRecord, Plan};

/// The `sft` stage.
pub struct Sft;

/// Why sft failed. Messages name the file, row, step or key, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SftError {
    #[error(transparent)]
    Model(#[from] BaseModelError),
    #[error(transparent)]
    Ingest(#[from] ExamplesError),
    #[error("{file}: row id {id} (source row {source_row}): cannot render it with the chat template: {source}")]
    Render {
        file: String,
        id: String,
        source_row: u64,
        #[source]
        source: Box<LlmError>,
    },
    #[error("[sft] none of the {rows} rows of {file} fits `max_seq_len` = {max_seq_len} ({dropped} dropped); raise `max_seq_len`{hint}")]
    NoRows {
        file: String,
        rows: usize,
        max_seq_len: usize,
        dropped: usize,
        hint: &'static str,
    },
    #[error("sft: {context}: {source}")]
    Llm {
        context: String,
        #[source]
        source: Box<LlmError>,
    },
    /// The step loop's errors: non-finite values, checkpoints, the metrics log, a stop.
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn llm(context: impl Into<String>) -> impl FnOnce(LlmError) -> SftError {
    let context = context.into();
    move |source| SftError::Llm {
        context,
        source: Box::new(source),
    }
}

impl From<OutputError> for SftError {
    fn from(e: OutputError) -> Self {
        SftError::Write {
            path: e.path,
            source: e.source,
        }
    }
}

impl Stage for Sft {
    const NAME: &'static str = "sft";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "LoRA supervised fine-tuning on the train split, evaluated on val, resumable";
    const STARTER: &'static str = r#"[sft]
# preset = "balanced"      # defaults for every key below left out:
#                          #   fast:             1 epoch,  lr 3e-4, batch 8,     seq 256,  r 8 on q/v
#                          #   balanced:         2 epochs, lr 2e-4, batch 4x2,   seq 512,  r 16 on all linear
#                          #   quality:          3 epochs, lr 1e-4, batch 4x4,   seq 1024, r 32, neftune 5, wd 0.01
#                          #   memory_efficient: 2 epochs, lr 2e-4, batch 1x8,   seq 256,  r 8 on q/k/v/o
# epochs = 2               # passes over the train split (fractions allowed); or:
# max_steps = 100          # optimizer steps (instead of epochs)
# learning_rate = 2e-4     # peak learning rate of AdamW
# lr_scheduler = "cosine"  # "cosine", "linear" or "constant", after a linear warmup from 0
# warmup_ratio = 0.03      # share of the steps spent warming up; or:
# warmup_steps = 10
# batch_size = 4           # rows per micro-batch (grouped by length to cut padding)
# gradient_accumulation = 2  # micro-batches per optimizer step
# max_seq_len = 512        # tokens per row (prompt + completion)
# overlength = "truncate_prompt"  # longer rows: "truncate_prompt" (cut the prompt's start,
#                          # keep the completion) or "drop"; both are counted in the summary
# weight_decay = 0.0       # AdamW decoupled weight decay
# max_grad_norm = 1.0      # clip the global gradient norm (0: off)
# neftune_alpha = 0.0      # NEFTune embedding noise during training (5 is typical; 0: off)
# seed = 42                # default: [project] seed; fixes LoRA init, data order, dropout, noise
# eval_every = 50          # also evaluate on val every N steps (always before and after)
# save_every = 50          # checkpoint every N steps; a killed run resumes from the last one
# train_on_prompt = false  # false: the loss counts completion tokens only
# max_eval_rows = 200      # evaluate on at most this many val rows (default: all)
# samples = 3              # val prompts answered greedily before and after training
# sample_max_new_tokens = 48

[sft.lora]
# r = 16                   # rank of the update
# alpha = 32               # scale = alpha / r (alpha / sqrt(r) with use_rslora)
# dropout = 0.05           # dropout on the LoRA input during training
# target_modules = ["all-linear"]  # or names: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj
# use_rslora = false
"#;
    type Config = SftConfig;

    fn inputs(cfg: &SftConfig, _pipeline: &Pipeline) -> Result<Vec<Input>, ConfigIssue> {
        Ok(vec![
            Input::one("data", cfg.data.as_deref(), "ingest", &["ingest"]),
            Input::one("model", cfg.model.as_deref(), "model", MODEL_KINDS).following("model"),
        ])
    }

    fn validate(cfg: &SftConfig) -> Result<(), ConfigIssue> {
        config::validate(cfg)
    }

    fn run(cfg: &SftConfig, cx: &mut StageContext) -> StageResult {
        run_sft(cfg, cx, Hooks::default())
    }

    fn show(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
        report::show(dir, out)
    }
}

/// Bumped when the checkpoint layout or meaning changes: older checkpoints are ignored.
const STATE_FORMAT: u32 = 1;

/// What sft's checkpoints keep besides the common state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SftExtra {
    /// Target tokens the loss counted so far.
    target_tokens: usize,
    /// The greedy answers to the sample prompts before training.
    samples_before: Vec<String>,
}

/// Completion-only (or whole-sequence) NLL on ingest's rows, with val loss, perplexity and
/// greedy samples.
struct SftObjective<'a> {
    settings: &'a SftSettings,
    seed: u64,
    train: Vec<TokenRow>,
    eval_batches: Vec<TokenBatch>,
    pad: u32,
    sample_rows: Vec<(&'a TokenRow, &'a ingest::Example)>,
    stop: &'a [u32],
    tokenizer: &'a TextTokenizer,
    samples_after: Vec<String>,
}

pub(crate) fn run_sft(cfg: &SftConfig, cx: &mut StageContext, hooks: Hooks) -> StageResult {
    reset_peak();
    let settings = cfg.resolve();
    let seed = settings.seed.unwrap_or(cx.seed());
    let stack = ModelStack::from_chain(cx.chain("model")?)?;
    let (base, device) = BaseModel::open(&stack.base, cx.workspace()).map_err(SftError::from)?;
    let ingest_dir = cx.input("data")?.to_path_buf();
    let train_rows = ingest::read_examples(&ingest_dir.join(TRAIN_FILE)).map_err(SftError::from)?;
    let val_rows = ingest::read_examples(&ingest_dir.join(VAL_FILE)).map_err(SftError::from)?;
    let (train, train_counts) = encode(&base, &train_rows, &settings, TRAIN_FILE)?;
    let (mut val, val_counts) = encode(&base, &val_rows, &settings, VAL_FILE)?;
    if let Some(max) = settings.max_eval_rows {
        val.truncate(max);
    }
    let BaseModel {
        info,
        mut model,
        tokenizer,
        ..
    } = base;
    // On a stack (sft after another adapter stage) the new LoRA trains on its merged weights.
    let below =
        load_adapters(&stack, &device).map_err(llm("cannot load the input model's adapters"))?;
    if !below.is_empty() {
        merge_adapters_into_model(&mut model, &below)
            .map_err(llm("cannot merge the input model's adapters"))?;
    }
    model
        .attach_lora(&settings.lora.engine_config(seed))
        .map_err(llm("cannot attach LoRA"))?;
    let lengths: Vec<usize> = train.iter().map(TokenRow::len).collect();
    let pad = info.pad_token_id;
    let eval_batches = eval_batches(&val, settings.batch_size, pad, &device)?;
    let rows = train.iter().chain(&val).map(|r| (r.id.as_str(), r.len()));
    let below_dirs: Vec<String> = stack
        .adapters
        .iter()
        .map(|a| a.dir.to_string_lossy().into_owned())
        .collect();
    let below_refs: Vec<&str> = below_dirs.iter().map(String::as_str).collect();
    let fingerprint = fingerprint(STATE_FORMAT, &settings, seed, &info.name, &below_refs, rows);
    let partial = cx.partial_dir().map_err(|source| SftError::Write {
        path: PathBuf::from("the checkpoint directory under artifacts/.partial/sft"),
        source,
    })?;
    let objective = SftObjective {
        settings: &settings,
        seed,
        train,
        eval_batches,
        pad,
        sample_rows: sample_rows(&val, &val_rows, settings.samples),
        stop: &info.eos_token_ids,
        tokenizer: &tokenizer,
        samples_after: Vec::new(),
    };
    let place = RunPlace {
        partial: partial.to_path_buf(),
        format: STATE_FORMAT,
        fingerprint,
        progress: cx.progress(),
    };
    let (mut driver, trainable) =
        Driver::new(objective, model, &lengths, &settings.train, seed, place)?;
    report_data(
        cx.progress(),
        &settings,
        (&train_counts, &val_counts),
        val.len(),
        &driver.plan,
        driver.trainer.schedule().warmup,
        trainable,
    );
    let finished = driver.run(hooks)?;

    let out = cx.out_dir().to_path_buf();
    let base_name = save_adapter(
        &driver.model,
        &info.name,
        &info.path,
        &out.join(ADAPTER_DIR),
    )
    .map_err(llm("cannot write the adapter"))?;
    copy(
        &driver.partial().join(METRICS_PARTIAL),
        &out.join(METRICS_FILE),
    )?;
    let objective = &driver.objective;
    let samples = samples_file(
        &objective.sample_rows,
        &finished.state.extra.samples_before,
        &objective.samples_after,
    );
    write_jsonl(&out.join(SAMPLES_FILE), &samples)?;
    let run = RunTotals::of(&finished, &driver.plan, trainable, seed);
    let summary = summarize(
        objective,
        &finished,
        (train_counts, val_counts),
        (run, base_name),
    );
    write_json(&out.join(SUMMARY_FILE), &summary)?;
    cx.progress().info(&format!(
        "sft: eval loss {} after {} steps, {:.0} tok/s",
        report::eval_pair(&finished.state.eval_before, &finished.after),
        summary.steps,
        summary.tokens_per_s
    ));
    set_headline_metrics(cx, &summary);
    Ok(())
}

/// The lines of `samples.jsonl`.
fn samples_file(
    rows: &[(&TokenRow, &ingest::Example)],
    before: &[String],
    after: &[String],
) -> Vec<Sample> {
    rows.iter()
        .zip(before)
        .zip(after)
        .map(|(((_, row), before), after)| Sample {
            id: row.id.clone(),
            source_row: row.source_row,
            prompt: row.prompt.clone(),
            reference: row.response.clone(),
            before: before.clone(),
            after: after.clone(),
        })
        .collect()
}

/// The numbers `pipe show` and the manifest headline.
fn set_headline_metrics(cx: &mut StageContext, summary: &SftSummary) {
    cx.set_metric("eval_loss_before", summary.eval_loss_before);
    cx.set_metric("eval_loss_after", summary.eval_loss_after);
    cx.set_metric("train_loss", summary.train_loss_final_mean);
    cx.set_metric("tok_s", summary.tokens_per_s);
    if let Some(mb) = summary.peak_rss_mb {
        cx.set_metric("peak_rss_mb", mb);
    }
    cx.set_metric("steps", summary.steps);
}

/// Renders one split and insists that at least one row fits.
fn encode(
    base: &BaseModel,
    rows: &[ingest::Example],
    settings: &SftSettings,
    file: &str,
) -> Result<(Vec<TokenRow>, FitCounts), SftError> {
    let (encoded, counts) =
        data::encode_split(base, rows, settings.max_seq_len, settings.overlength, file)?;
    if encoded.is_empty() {
        return Err(SftError::NoRows {
            file: file.to_string(),
            rows: counts.rows,
            max_seq_len: settings.max_seq_len,
            dropped: counts.dropped(),
            hint: match settings.overlength {
                Overlength::Drop => " or set overlength = \"truncate_prompt\"",
                Overlength::TruncatePrompt => "",
            },
        });
    }
    Ok((encoded, counts))
}

/// Val rows sorted by length in batches: fixed, so every evaluation scores the same batches.
fn eval_batches(
    val: &[TokenRow],
    batch_size: usize,
    pad: u32,
    device: &Device,
) -> Result<Vec<TokenBatch>, SftError> {
    let mut order: Vec<&TokenRow> = val.iter().collect();
    order.sort_by_key(|r| r.len());
    order
        .chunks(batch_size)
        .map(|rows| {
            let examples: Vec<_> = rows.iter().map(|r| r.example.clone()).collect();
            TokenBatch::new(&examples, pad, device).map_err(llm("cannot batch the val rows"))
        })
        .collect()
}

/// The first `n` val rows with their ingest text (the reference answer).
fn sample_rows<'r>(
    val: &'r [TokenRow],
    rows: &'r [ingest::Example],
    n: usize,
) -> Vec<(&'r TokenRow, &'r ingest::Example)> {
    let by_id: HashMap<&str, &ingest::Example> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
    val.iter()
        .filter_map(|t| by_id.get(t.id.as_str()).map(|r| (t, *r)))
        .take(n)
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn report_data(
    progress: &dyn Progress,
    s: &SftSettings,
    (train, val): (&FitCounts, &FitCounts),
    eval_rows: usize,
    plan: &Plan,
    warmup: usize,
    trainable: u64,
) {
    let fit = |c: &FitCounts| {
        if c.truncated + c.dropped() == 0 {
            String::new()
        } else {
            format!(
                " ({} truncated, {} dropped over max_seq_len {})",
                c.truncated,
                c.dropped(),
                s.max_seq_len
            )
        }
    };
    progress.info(&format!(
        "sft: {} of {} train rows{}, {eval_rows} val rows for evaluation{}",
        train.kept,
        train.rows,
        fit(train),
        fit(val)
    ));
    progress.info(&format!(
        "sft: {} steps ({} per epoch) of {} micro-batch(es) of {}, lr {:e} {} with {warmup} warmup steps; LoRA r {} on {} ({trainable} trainable parameters)",
        plan.total_steps(),
        plan.steps_per_epoch,
        s.gradient_accumulation,
        s.batch_size,
        s.learning_rate,
        s.lr_scheduler.name(),
        s.lora.r,
        s.lora.target_modules.join(" "),
    ));
}

impl Objective for SftObjective<'_> {
    type Eval = EvalResult;
    type Extra = SftExtra;
    type Batch = TokenBatch;

    fn stage(&self) -> &'static str {
        "sft"
    }

    fn unit(&self) -> &'static str {
        "train rows"
    }

    fn evaluate(&self, model: &LlamaModel) -> Result<EvalResult, TrainError> {
        let result = completion_loss(model, &self.eval_batches)
            .map_err(TrainError::llm("sft", "cannot evaluate on the val rows"))?;
        if !result.loss.is_finite() {
            return Err(TrainError::llm("sft", "evaluation")(LlmError::Invalid(
                format!(
                    "the val loss is {} over {} tokens: the model's outputs are not finite",
                    result.loss, result.tokens
                ),
            )));
        }
        Ok(result)
    }

    fn fresh_extra(&self, model: &LlamaModel) -> Result<SftExtra, TrainError> {
        Ok(SftExtra {
            target_tokens: 0,
            samples_before: self.samples(model)?,
        })
    }

    fn prepare(
        &self,
        model: &LlamaModel,
        step: usize,
        micro_batches: &[Vec<usize>],
    ) -> Result<Prepared<TokenBatch>, TrainError> {
        let train_on_prompt = self.settings.train_on_prompt;
        let rows: Vec<Vec<&TokenRow>> = micro_batches
            .iter()
            .map(|b| b.iter().map(|&i| &self.train[i]).collect())
            .collect();
        let batches: Vec<TokenBatch> = rows
            .iter()
            .map(|b| {
                let examples: Vec<_> = b.iter().map(|r| r.example.clone()).collect();
                TokenBatch::new(&examples, self.pad, model.device())
            })
            .collect::<Result<_, _>>()
            .map_err(TrainError::llm(
                "sft",
                format!("step {}: cannot build the batch", step + 1),
            ))?;
        let weights: Vec<usize> = rows
            .iter()
            .map(|b| b.iter().map(|r| r.targets(train_on_prompt)).sum())
            .collect();
        let tokens: usize = rows.iter().flatten().map(|r| r.len()).sum();
        Ok(Prepared {
            batches,
            weights,
            tokens,
        })
    }

    fn micro_loss(
        &self,
        model: &LlamaModel,
        batch: &TokenBatch,
        step: usize,
        micro: usize,
    ) -> Result<(Tensor, Values), LlmError> {
        let which = if self.settings.train_on_prompt {
            TargetMask::Sequence
        } else {
            TargetMask::Completion
        };
        let dropout_seed = derive(self.seed, Stream::Dropout, step as u64, micro as u64);
        let noise_seed = derive(self.seed, Stream::Neftune, step as u64, micro as u64);
        let alpha = self.settings.neftune_alpha;
        let loss = micro_loss(model, batch, dropout_seed, alpha, noise_seed, which)?;
        Ok((loss, Values::new()))
    }

    fn describe(&self, row: usize) -> String {
        self.train[row].describe()
    }

    fn log_eval(&self, eval: &EvalResult, record: &mut MetricRecord) {
        record.eval_loss = Some(eval.loss);
        record.eval_perplexity = Some(eval.perplexity);
    }

    fn before_line(&self, before: &EvalResult) -> String {
        format!(
            "sft: eval loss before training {:.4} (perplexity {:.2}) over {} tokens",
            before.loss, before.perplexity, before.tokens
        )
    }

    fn bar_message(&self, r: &MetricRecord) -> String {
        format!(
            "loss {:.3} lr {:.1e} {:.0} tok/s{}",
            r.loss.unwrap_or(f64::NAN),
            r.lr.unwrap_or(0.0),
            r.tokens_per_s.unwrap_or(0.0),
            r.eval_loss
                .map(|l| format!(" eval {l:.3}"))
                .unwrap_or_default()
        )
    }

    fn account(&self, extra: &mut SftExtra, weights: &[usize]) {
        extra.target_tokens += weights.iter().sum::<usize>();
    }

    fn after_training(&mut self, model: &LlamaModel) -> Result<(), TrainError> {
        self.samples_after = self.samples(model)?;
        Ok(())
    }
}

impl SftObjective<'_> {
    /// Greedy answers to the sample prompts with the current weights.
    fn samples(&self, model: &LlamaModel) -> Result<Vec<String>, TrainError> {
        self.sample_rows
            .iter()
            .map(|(t, _)| {
                let ids = greedy(
                    model,
                    &t.example.prompt,
                    self.settings.sample_max_new_tokens,
                    self.stop,
                )
                .and_then(|ids| self.tokenizer.decode(&ids, true))
                .map_err(TrainError::llm(
                    "sft",
                    format!("cannot sample row {}", t.describe()),
                ))?;
                Ok(ids.trim().to_string())
            })
            .collect()
    }
}

/// The mean loss of one micro-batch in training mode: LoRA dropout seeded by `dropout_seed`,
/// NEFTune noise (when `alpha > 0`) seeded by `noise_seed`.
fn micro_loss(
    model: &LlamaModel,
    batch: &TokenBatch,
    dropout_seed: u64,
    alpha: f64,
    noise_seed: u64,
    which: TargetMask,
) -> Result<Tensor, LlmError> {
    let mode = Mode::Train { seed: dropout_seed };
    let hidden = if alpha > 0.0 {
        let (rows, seq) = batch.input_ids.dims2()?;
        let shape = (rows, seq, model.config().hidden_size);
        let noise = neftune::noise(shape, alpha, noise_seed, model.dtype(), model.device())?;
        model.hidden_states_with_embedding_noise(
            &batch.input_ids,
            Some(&batch.attention_mask),
            mode,
            &noise,
        )?
    } else {
        model.hidden_states(&batch.input_ids, Some(&batch.attention_mask), mode)?
    };
    let select = vec![which; batch.batch_size()];
    let lp = TargetLogProbs::from_hidden(model, &hidden, batch, &select, DEFAULT_CHUNK)?;
    Ok(lp.token_mean_nll(which)?.0)
}

fn summarize(
    objective: &SftObjective<'_>,
    finished: &Finished<EvalResult, SftExtra>,
    (train, val): (FitCounts, FitCounts),
    (run, base_model): (RunTotals, String),
) -> SftSummary {
    let (state, after) = (&finished.state, finished.after);
    let losses = &state.losses;
    let tail = &losses[losses.len().saturating_sub(10)..];
    let tail_mean = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
    SftSummary {
        base_model,
        settings: SftSettings {
            train: TrainSettings {
                seed: Some(run.seed),
                ..objective.settings.train.clone()
            },
            ..objective.settings.clone()
        },
        run,
        train,
        val,
        eval_rows: objective.eval_batches.iter().map(|b| b.batch_size()).sum(),
        train_loss_final_mean: tail_mean,
        eval_loss_before: state.eval_before.loss,
        eval_loss_after: after.loss,
        perplexity_before: state.eval_before.perplexity,
        perplexity_after: after.perplexity,
        eval_tokens: after.tokens,
        target_tokens: state.extra.target_tokens,
    }
}
