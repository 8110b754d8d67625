//! The `orpo` stage: preference optimisation (ORPO, Hong et al. 2024) on the score stage's
//! pairs, on top of the base model with the sft adapter, with TRL's metrics on a held-out
//! share of the pairs before, during and after training.
//!
//! It trains with the step loop every trainer shares (`train::driver`, through the preference
//! objective of `train::preference`): a run is a pure function of its settings and seed,
//! checkpoints in the partial directory hold the LoRA weights, the AdamW moments and the step,
//! and a run killed at any point resumes to the same adapter as an uninterrupted one. The
//! chosen and rejected answers of a pair go through the model in one batch, and the loss is
//! the LLM engine's [`orpo_loss`].

pub mod artifact;
mod config;
mod report;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::Path;

use candle_core::Tensor;

pub use config::OrpoStageConfig;

use artifact::{ADAPTER_DIR, METRICS_FILE, SUMMARY_FILE};
use config::OrpoSettings;
use report::OrpoSummary;

use crate::contract::{ConfigIssue, Input, Pipeline, Stage, StageContext, StageResult};
use crate::llm::loss::DEFAULT_CHUNK;
#[cfg(test)]
use crate::llm::PeftAdapter;
use crate::llm::{orpo_loss, LlamaModel, LlmError, Mode, OrpoConfig, OrpoOutput, PreferencePair};
use crate::train::driver::{Driver, RunPlace, RunTotals, Values};
use crate::train::memory::reset_peak;
use crate::train::output::write_json;
use crate::train::pairs;
use crate::train::preference::{
    self, plan_line, set_headline_metrics, values_of, write_outputs, PairLoss, PairsOf,
    PreferenceObjective, PreferenceSetup, PreferenceStart,
};
use crate::train::settings::TrainSettings;
use crate::train::step::Hooks;
#[cfg(test)]
use crate::train::{
    checkpoint::CheckpointError, driver::TrainError, metrics::MetricsError, output::OutputError,
    pairs::eval_batches, pairs::PairRow, pairs::PairsError, policy::PolicyError,
    preference::evaluate_pairs, resume::ResumeError, MetricRecord,
};
#[cfg(test)]
use candle_core::Device;

/// The `orpo` stage.
pub struct Orpo;

impl Stage for Orpo {
    const NAME: &'static str = "orpo";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "ORPO preference training on pairs (score's, or a preference ingest's) on its input model, resumable";
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

    fn inputs(cfg: &OrpoStageConfig, pipeline: &Pipeline) -> Result<Vec<Input>, ConfigIssue> {
        Ok(crate::train::preference::inputs(
            cfg.model.as_deref(),
            cfg.pairs.as_deref(),
            pipeline,
        ))
    }

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

/// ORPO's loss for the preference objective.
struct OrpoPairLoss(OrpoConfig);

impl PairLoss for OrpoPairLoss {
    fn loss(
        &self,
        model: &LlamaModel,
        pairs: &[PreferencePair],
        _which: PairsOf<'_>,
        pad: u32,
        mode: Mode,
    ) -> Result<(Tensor, Values), LlmError> {
        let out = micro_loss(model, pairs, pad, &self.0, mode)?;
        Ok((out.loss.clone(), values_of(&out.metrics)))
    }
}

pub(crate) fn run_orpo(cfg: &OrpoStageConfig, cx: &mut StageContext, hooks: Hooks) -> StageResult {
    reset_peak();
    let settings = cfg.resolve();
    let setup = PreferenceSetup {
        stage: "orpo",
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
    let objective = PreferenceObjective {
        stage: "orpo",
        loss: OrpoPairLoss(settings.loss()),
        seed,
        train,
        eval_batches: pairs::eval_batches(&eval, settings.batch_size),
        pad: info.pad_token_id,
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
        "orpo",
        &counts,
        eval.len(),
        settings.max_seq_len,
    );
    let loss = format!("beta {}", settings.beta);
    let plan = plan_line(
        "orpo",
        &driver.plan,
        &settings.train,
        (settings.init, loss),
        trainable,
    );
    cx.progress().info(&plan);
    let finished = driver.run(hooks)?;

    let out = cx.out_dir().to_path_buf();
    let base_name = write_outputs(&driver, &info, &out, (ADAPTER_DIR, METRICS_FILE))?;
    let summary = OrpoSummary {
        base_model: base_name,
        adapter_applies_to: OrpoSummary::applies_to(settings.init).to_string(),
        run: RunTotals::of(&finished, &driver.plan, trainable, seed),
        pairs: counts,
        eval_pairs: eval.len(),
        eval_before: finished.state.eval_before,
        eval_after: finished.after,
        settings: OrpoSettings {
            train: TrainSettings {
                seed: Some(seed),
                ..settings.train.clone()
            },
            ..settings.clone()
        },
    };
    write_json(&out.join(SUMMARY_FILE), &summary)?;
    cx.progress().info(&format!(
        "orpo: held-out accuracy {}, margin {}, after {} steps, {:.0} tok/s",
        report::before_after(&summary, "rewards/accuracies"),
        report::before_after(&summary, "rewards/margins"),
        summary.steps,
        summary.tokens_per_s
    ));
    set_headline_metrics(
        cx,
        (&summary.eval_before, &summary.eval_after),
        &summary.run,
        summary.pairs.train.kept,
    );
    Ok(())
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

/// Scores held-out batches as the stage does (its tests compare this with the reference).
#[cfg(test)]
fn evaluate_batches(
    model: &LlamaModel,
    batches: &[Vec<PreferencePair>],
    pad: u32,
    loss: &OrpoConfig,
) -> Result<Values, LlmError> {
    evaluate_pairs(&OrpoPairLoss(*loss), model, batches, pad)
}
