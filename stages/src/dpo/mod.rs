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
use std::path::Path;

use candle_core::Tensor;

pub use config::DpoStageConfig;

use artifact::{ADAPTER_DIR, METRICS_FILE, SUMMARY_FILE};
use config::DpoSettings;
use reference::{ReferenceError, ReferenceLogps};
use report::{DpoSummary, ReferenceSummary};

use crate::contract::{ConfigIssue, Input, Pipeline, Stage, StageContext, StageResult};
use crate::llm::loss::DEFAULT_CHUNK;
use crate::llm::{dpo_loss, DpoConfig, DpoOutput, LlamaModel, LlmError, Mode, PreferencePair};
use crate::progress::Progress;
use crate::train::driver::{Driver, RunPlace, RunTotals, Values};
use crate::train::memory::reset_peak;
use crate::train::output::write_json;
use crate::train::pairs::{self, PairRow};
use crate::train::preference::{
    self, before_after, plan_line, set_headline_metrics, values_of, write_outputs, PairLoss,
    PairsOf, PreferenceObjective, PreferenceSetup, PreferenceStart,
};
use crate::train::settings::TrainSettings;
use crate::train::step::Hooks;

/// The `dpo` stage.
pub struct Dpo;

impl Stage for Dpo {
    const NAME: &'static str = "dpo";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "DPO preference training (TRL's DPOTrainer) on pairs (score's, or a preference ingest's) on its input model, resumable";
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

    fn inputs(cfg: &DpoStageConfig, pipeline: &Pipeline) -> Result<Vec<Input>, ConfigIssue> {
        Ok(crate::train::preference::inputs(
            cfg.model.as_deref(),
            cfg.pairs.as_deref(),
            pipeline,
        ))
    }

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
) -> Result<DpoOutput, LlmError> {
    dpo_loss(model, pairs, reference, pad, config, mode, DEFAULT_CHUNK)
}

pub(crate) fn run_dpo(cfg: &DpoStageConfig, cx: &mut StageContext, hooks: Hooks) -> StageResult {
    reset_peak();
    let settings = cfg.resolve();
    let setup = PreferenceSetup {
        stage: "dpo",
        settings: &settings,
        train: &settings.train,
        init: settings.init,
        eval_fraction: settings.eval_fraction,
        max_eval_pairs: settings.max_eval_pairs,
        format: STATE_FORMAT,
    };
    let PreferenceStart {
        info,
        model,
        train,
        eval,
        counts,
        lengths,
        seed,
        fingerprint,
        partial,
    } = preference::start(cx, &setup)?;
    let pad = info.pad_token_id;
    let all: Vec<&PairRow> = train.iter().chain(&eval).collect();
    let batching = (pad, settings.batch_size);
    let (reference, reused) =
        reference::load_or_compute(&partial, &fingerprint, &model, &all, batching)?;
    report_reference(cx.progress(), &reference, reused);
    let eval_rows = pairs::eval_batch_rows(&eval, settings.batch_size);
    let loss = DpoPairLoss {
        config: settings.loss(),
        train: lookup(&reference, &train.iter().collect::<Vec<_>>())?,
        eval: eval_rows
            .iter()
            .map(|batch| lookup(&reference, batch))
            .collect::<Result<_, _>>()?,
    };
    let objective = PreferenceObjective {
        stage: "dpo",
        loss,
        seed,
        train,
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
    pairs::report_counts(
        cx.progress(),
        "dpo",
        &counts,
        eval.len(),
        settings.max_seq_len,
    );
    let loss = format!(
        "beta {}, loss {}",
        settings.beta,
        report::loss_name(&settings)
    );
    let plan = plan_line(
        "dpo",
        &driver.plan,
        &settings.train,
        (settings.init, loss),
        trainable,
    );
    cx.progress().info(&plan);
    let finished = driver.run(hooks)?;

    let out = cx.out_dir().to_path_buf();
    let base_name = write_outputs(&driver, &info, &out, (ADAPTER_DIR, METRICS_FILE))?;
    let summary = DpoSummary {
        base_model: base_name,
        adapter_applies_to: DpoSummary::applies_to(settings.init).to_string(),
        run: RunTotals::of(&finished, &driver.plan, trainable, seed),
        pairs: counts,
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
fn lookup(
    reference: &ReferenceLogps,
    rows: &[&PairRow],
) -> Result<Vec<(f64, f64)>, ReferenceError> {
    reference.of(rows).ok_or_else(|| {
        ReferenceError::Llm(LlmError::Invalid(
            "a pair has no reference log-prob; delete the stage's directory under artifacts/.partial/dpo".into(),
        ))
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
