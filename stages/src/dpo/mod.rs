//! The `dpo` stage: Direct Preference Optimization as TRL's `DPOTrainer` computes it, on the
//! score stage's pairs, on top of the base model with the sft adapter, with TRL's metrics on
//! a held-out share of the pairs before, during and after training.
//!
//! The reference model is the stage's input model (base + sft, the policy before its first
//! step): its log-probs of every pair are computed once, in batches, before training, and
//! kept in the partial directory, so a resumed run reads them back; training then needs one
//! forward per pair (chosen and rejected in one batch), as orpo does. The step loop, its
//! checkpoints and exact resume are those every trainer shares (`train::driver`).

pub mod artifact;
mod config;
mod reference;
mod report;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

pub use config::DpoStageConfig;

use artifact::{ADAPTER_DIR, METRICS_FILE, SUMMARY_FILE};
use config::{DpoSettings, Init};
use reference::{ReferenceError, ReferenceLogps};
use report::{DpoSummary, ReferenceSummary};

use crate::base::{BaseModel, BaseModelError};
use crate::contract::{ConfigIssue, Stage, StageContext, StageResult};
use crate::llm::loss::DEFAULT_CHUNK;
use crate::llm::{dpo_loss, DpoConfig, LlamaModel, LlmError, Mode, PreferencePair};
use crate::progress::Progress;
use crate::score::artifact::PAIRS_FILE;
use crate::train::driver::{Driver, RunPlace, RunTotals, TrainError, Values, METRICS_PARTIAL};
use crate::train::memory::reset_peak;
use crate::train::output::{copy, save_adapter, write_json, OutputError};
use crate::train::pairs::{self, PairCounts, PairRow, PairsError};
use crate::train::policy::{sft_adapter_dir, start_policy, PolicyError};
use crate::train::preference::{
    before_after, set_headline_metrics, values_of, PairLoss, PairsOf, PreferenceObjective,
};
use crate::train::resume::fingerprint;
use crate::train::settings::TrainSettings;
use crate::train::step::Hooks;
use crate::train::Plan;

/// The `dpo` stage.
pub struct Dpo;

/// Why dpo failed. Messages name the file, line, step or key, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DpoError {
    #[error(transparent)]
    Model(#[from] BaseModelError),
    #[error(transparent)]
    Pairs(#[from] PairsError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("dpo: {context}: {source}")]
    Llm {
        context: String,
        #[source]
        source: Box<LlmError>,
    },
    /// The step loop's errors: non-finite values, checkpoints, the metrics log, a stop.
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Output(#[from] OutputError),
}

impl Stage for Dpo {
    const NAME: &'static str = "dpo";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "DPO preference training (TRL's DPOTrainer) on score's pairs, on top of base + sft, resumable";
    const DEPS: &'static [&'static str] = &["model", "sft", "score"];
    // Commented out as a whole: a pipeline holds [orpo] or [dpo], and the starter has [orpo].
    const STARTER: &'static str = r#"# [dpo]                  # DPO in place of [orpo] (a pipeline holds one of the two; merge
#                          # folds its adapter, eval reports the final model)
# init = "new"             # "new": a new LoRA on base + sft (merged); "continue_sft": train
#                          # the sft adapter further. The reference is base + sft either way
# beta = 0.1               # how far the policy may move from the reference (TRL's beta)
# loss_type = "sigmoid"    # "sigmoid" (the DPO paper) or "ipo" (length-averaged log-probs)
# label_smoothing = 0.0    # cDPO: the assumed share of flipped labels (sigmoid only)
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
#
# [dpo.lora]               # the new adapter (init = "new"), keys as in [sft.lora]
# r = 16
# alpha = 32
# dropout = 0.05
# target_modules = ["all-linear"]
# use_rslora = false
"#;
    type Config = DpoStageConfig;

    fn validate(cfg: &DpoStageConfig) -> Result<(), ConfigIssue> {
        config::validate(cfg)
    }

    fn run(cfg: &DpoStageConfig, cx: &mut StageContext) -> StageResult {
        run_dpo(cfg, cx, Hooks::default())
    }

    fn show(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
        report::show(dir, out)
    }
}

/// Bumped when the checkpoint layout or meaning changes: older checkpoints are ignored.
const STATE_FORMAT: u32 = 1;

/// DPO's loss for the preference objective, with the reference log-probs of every pair.
struct DpoPairLoss {
    config: DpoConfig,
    /// `(chosen, rejected)` of each train row.
    train: Vec<(f64, f64)>,
    /// Those of each held-out batch.
    eval: Vec<Vec<(f64, f64)>>,
}

impl PairLoss for DpoPairLoss {
    fn loss(
        &self,
        model: &LlamaModel,
        pairs: &[PreferencePair],
        which: PairsOf<'_>,
        pad: u32,
        mode: Mode,
    ) -> Result<(Tensor, Values), LlmError> {
        let reference = match which {
            PairsOf::Train(rows) => rows.iter().map(|&i| self.train[i]).collect(),
            PairsOf::Eval(i) => self.eval.get(i).cloned().unwrap_or_default(),
        };
        let out = micro_loss(model, pairs, &reference, pad, &self.config, mode)?;
        Ok((out.loss, values_of(&out.metrics)))
    }
}

/// The DPO loss of one micro-batch of pairs against their reference log-probs: chosen and
/// rejected padded into one batch and run through the model together. Training and
/// evaluation both go through here.
fn micro_loss(
    model: &LlamaModel,
    pairs: &[PreferencePair],
    reference: &[(f64, f64)],
    pad: u32,
    config: &DpoConfig,
    mode: Mode,
) -> Result<crate::llm::DpoOutput, LlmError> {
    dpo_loss(model, pairs, reference, pad, config, mode, DEFAULT_CHUNK)
}

pub(crate) fn run_dpo(cfg: &DpoStageConfig, cx: &mut StageContext, hooks: Hooks) -> StageResult {
    reset_peak();
    let settings = cfg.resolve();
    let seed = settings.seed.unwrap_or(cx.seed());
    let pairs_path = cx.input("score")?.join(PAIRS_FILE);
    let sft_dir = sft_adapter_dir(cx.input("sft")?);
    let (base, device) =
        BaseModel::open(cx.input("model")?, cx.workspace()).map_err(DpoError::from)?;
    let split = (settings.eval_fraction, settings.max_seq_len);
    let pairs = pairs::prepare("dpo", &base, &pairs_path, split, seed).map_err(DpoError::from)?;
    let BaseModel {
        info, mut model, ..
    } = base;
    start_policy(
        &mut model,
        &sft_dir,
        settings.init,
        &settings.lora,
        seed,
        &device,
    )
    .map_err(DpoError::from)?;
    let lengths: Vec<usize> = pairs.train.iter().map(PairRow::len).collect();
    let mut eval = pairs.eval;
    if let Some(max) = settings.max_eval_pairs {
        eval.truncate(max);
    }
    // The sft artifact's directory names its key.
    let sft_key = sft_dir.to_string_lossy();
    let rows = pairs
        .train
        .iter()
        .chain(&eval)
        .map(|r| (r.id.as_str(), r.tokens()));
    let fingerprint = fingerprint(STATE_FORMAT, &settings, seed, &info.name, &[&sft_key], rows);
    let partial = cx
        .partial_dir()
        .map_err(|source| OutputError {
            path: PathBuf::from("the checkpoint directory under artifacts/.partial/dpo"),
            source,
        })?
        .to_path_buf();
    let pad = info.pad_token_id;
    let all: Vec<&PairRow> = pairs.train.iter().chain(&eval).collect();
    let (reference, reused) = reference::load_or_compute(
        &partial,
        &fingerprint,
        &model,
        &all,
        (pad, settings.batch_size),
    )
    .map_err(DpoError::from)?;
    report_reference(cx.progress(), &reference, reused);
    let eval_rows = pairs::eval_batch_rows(&eval, settings.batch_size);
    let loss = DpoPairLoss {
        config: settings.loss(),
        train: lookup(&reference, &pairs.train.iter().collect::<Vec<_>>())?,
        eval: eval_rows
            .iter()
            .map(|batch| lookup(&reference, batch))
            .collect::<Result<_, _>>()?,
    };
    let objective = PreferenceObjective {
        stage: "dpo",
        loss,
        seed,
        train: pairs.train,
        eval_batches: pairs::eval_batches(&eval, settings.batch_size),
        pad,
    };
    let place = RunPlace {
        partial,
        format: STATE_FORMAT,
        fingerprint,
        progress: cx.progress(),
    };
    let (mut driver, trainable) =
        Driver::new(objective, model, &lengths, &settings.train, seed, place)?;
    report_plan(
        cx.progress(),
        &settings,
        &pairs.counts,
        eval.len(),
        &driver.plan,
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
    .map_err(|source| DpoError::Llm {
        context: "cannot write the adapter".into(),
        source: Box::new(source),
    })?;
    copy(
        &driver.partial().join(METRICS_PARTIAL),
        &out.join(METRICS_FILE),
    )?;
    let summary = DpoSummary {
        base_model: base_name,
        adapter_applies_to: DpoSummary::applies_to(settings.init).to_string(),
        run: RunTotals::of(&finished, &driver.plan, trainable, seed),
        pairs: pairs.counts,
        eval_pairs: eval.len(),
        reference: ReferenceSummary {
            pairs: reference.pairs.len(),
            seconds: reference.seconds,
            reused,
        },
        eval_before: finished.state.eval_before,
        eval_after: finished.after,
        settings: DpoSettings {
            train: TrainSettings {
                seed: Some(seed),
                ..settings.train.clone()
            },
            ..settings.clone()
        },
    };
    write_json(&out.join(SUMMARY_FILE), &summary)?;
    cx.progress().info(&format!(
        "dpo: held-out accuracy {}, margin {}, after {} steps, {:.0} tok/s",
        before_after(
            &summary.eval_before,
            &summary.eval_after,
            "rewards/accuracies"
        ),
        before_after(&summary.eval_before, &summary.eval_after, "rewards/margins"),
        summary.steps,
        summary.tokens_per_s
    ));
    cx.set_metric("reference_seconds", summary.reference.seconds);
    set_headline_metrics(
        cx,
        (&summary.eval_before, &summary.eval_after),
        &summary.run,
        summary.pairs.train.kept,
    );
    Ok(())
}

/// The reference log-probs of `rows`, which [`reference::load_or_compute`] scored.
fn lookup(reference: &ReferenceLogps, rows: &[&PairRow]) -> Result<Vec<(f64, f64)>, DpoError> {
    reference.of(rows).ok_or_else(|| DpoError::Llm {
        context: "reference log-probs".into(),
        source: Box::new(LlmError::Invalid(
            "a pair has no reference log-prob; delete the stage's directory under artifacts/.partial/dpo".into(),
        )),
    })
}

fn report_reference(progress: &dyn Progress, reference: &ReferenceLogps, reused: bool) {
    progress.info(&if reused {
        format!(
            "dpo: reference log-probs of {} pairs read back from the checkpoint directory (computed in {:.1}s)",
            reference.pairs.len(),
            reference.seconds
        )
    } else {
        format!(
            "dpo: reference log-probs of {} pairs computed in {:.1}s",
            reference.pairs.len(),
            reference.seconds
        )
    });
}

fn report_plan(
    progress: &dyn Progress,
    s: &DpoSettings,
    counts: &PairCounts,
    eval_pairs: usize,
    plan: &Plan,
    trainable: u64,
) {
    pairs::report_counts(progress, "dpo", counts, eval_pairs, s.max_seq_len);
    progress.info(&format!(
        "dpo: {} steps of {} micro-batch(es) of {} pairs, beta {}, loss {:?}, lr {:e} {}; {} ({trainable} trainable parameters)",
        plan.total_steps(),
        s.gradient_accumulation,
        s.batch_size,
        s.beta,
        s.loss_type,
        s.learning_rate,
        s.lr_scheduler.name(),
        match s.init {
            Init::New => format!("new LoRA r {} on {}", s.lora.r, s.lora.target_modules.join(" ")),
            Init::ContinueSft => "continuing the sft adapter".to_string(),
        }
    ));
}
