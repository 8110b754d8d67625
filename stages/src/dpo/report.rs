//! What a finished dpo run reports: `summary.json` and `pipe show dpo` (the summary and
//! terminal curves of the loss, the reward accuracy and the reward margin over the steps).

use std::io::Write;
use std::ops::Deref;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::artifact::{APPLIES_TO_BASE, APPLIES_TO_BASE_SFT, METRICS_FILE, SUMMARY_FILE};
use super::config::{DpoSettings, Init};
use crate::llm::DpoLossType;
use crate::train::driver::{RunTotals, Values};
use crate::train::metrics;
use crate::train::pairs::PairCounts;
use crate::train::preference::{before_after, write_curves, write_run_lines, write_speed};

/// The reference log-probs of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceSummary {
    /// Pairs scored (train and held out).
    pub pairs: usize,
    /// Seconds computing them (once, before the first step).
    pub seconds: f64,
    /// Whether this attempt read them from the partial directory (a resumed run).
    pub reused: bool,
}

/// `summary.json`: the fields every trainer writes (`run`, flattened, and reached through
/// the summary: `summary.steps`) and dpo's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoSummary {
    /// PEFT's `base_model_name_or_path` of the adapter.
    pub base_model: String,
    /// What the adapter applies to: `base+sft` (init = "new": fold sft, then this) or `base`
    /// (init = "continue_sft": this adapter is the sft adapter trained further).
    pub adapter_applies_to: String,
    #[serde(flatten)]
    pub run: RunTotals,
    pub pairs: PairCounts,
    /// Held-out pairs evaluated (`max_eval_pairs` may cap them).
    pub eval_pairs: usize,
    pub reference: ReferenceSummary,
    /// Evaluation on the held-out pairs before and after training (TRL's names, no prefix).
    pub eval_before: Values,
    pub eval_after: Values,
    pub settings: DpoSettings,
}

impl Deref for DpoSummary {
    type Target = RunTotals;
    fn deref(&self) -> &RunTotals {
        &self.run
    }
}

impl DpoSummary {
    pub fn applies_to(init: Init) -> &'static str {
        match init {
            Init::New => APPLIES_TO_BASE_SFT,
            Init::ContinueSft => APPLIES_TO_BASE,
        }
    }
}

/// `pipe show dpo`.
pub fn show(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
    let text = std::fs::read_to_string(dir.join(SUMMARY_FILE))?;
    let s: DpoSummary = serde_json::from_str(&text).map_err(std::io::Error::other)?;
    write_summary(&s, out)?;
    let records = metrics::read(&dir.join(METRICS_FILE)).map_err(std::io::Error::other)?;
    write_curves(&records, out)
}

/// `sigmoid`, `sigmoid (cDPO, label_smoothing 0.1)` or `ipo`.
pub fn loss_name(s: &DpoSettings) -> String {
    match s.loss_type {
        DpoLossType::Sigmoid if s.label_smoothing > 0.0 => {
            format!("sigmoid (cDPO, label_smoothing {})", s.label_smoothing)
        }
        DpoLossType::Sigmoid => "sigmoid".to_string(),
        DpoLossType::Ipo => "ipo".to_string(),
    }
}

fn write_summary(s: &DpoSummary, out: &mut dyn Write) -> std::io::Result<()> {
    let set = &s.settings;
    writeln!(
        out,
        "base        {} (adapter applies to {}; the reference is the model before training)",
        s.base_model, s.adapter_applies_to
    )?;
    writeln!(
        out,
        "run         {} steps ({:.2} epochs), beta {}, loss {}, lr {:e} {}, batch {} x {} accumulation, seed {}{}",
        s.steps,
        s.epochs,
        set.beta,
        loss_name(set),
        set.learning_rate,
        set.lr_scheduler.name(),
        set.batch_size,
        set.gradient_accumulation,
        s.seed,
        s.resumed_from_step
            .map(|k| format!(", resumed from step {k}"))
            .unwrap_or_default()
    )?;
    write_run_lines(
        (set.init, &set.lora),
        (&s.pairs, s.eval_pairs, set.max_seq_len),
        &s.run,
        out,
    )?;
    writeln!(
        out,
        "reference   log-probs of {} pairs in {:.1}s{}",
        s.reference.pairs,
        s.reference.seconds,
        if s.reference.reused {
            " (read back by the resumed run)"
        } else {
            ""
        }
    )?;
    for (label, key) in [
        ("eval loss", "loss"),
        ("accuracy", "rewards/accuracies"),
        ("margin", "rewards/margins"),
        ("chosen", "rewards/chosen"),
        ("rejected", "rewards/rejected"),
        ("logps ch.", "logps/chosen"),
        ("logps rej.", "logps/rejected"),
    ] {
        let line = before_after(&s.eval_before, &s.eval_after, key);
        writeln!(out, "{label:<11} {line} (held out)")?;
    }
    write_speed(&s.run, out)
}
