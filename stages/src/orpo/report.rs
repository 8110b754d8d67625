//! What a finished orpo run reports: `summary.json` and `pipe show orpo` (the summary and
//! terminal curves of the loss, the reward accuracy and the reward margin over the steps).

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Deref;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::artifact::{APPLIES_TO_BASE, APPLIES_TO_BASE_SFT, METRICS_FILE, SUMMARY_FILE};
use super::config::{Init, OrpoSettings};
use crate::train::driver::RunTotals;
use crate::train::metrics;
use crate::train::pairs::PairCounts;
use crate::train::preference::{write_curves, write_run_lines, write_speed};

/// ORPO metrics by TRL's names (`loss`, `nll_loss`, `rewards/margins`, ...).
pub type OrpoValues = BTreeMap<String, f64>;

/// `summary.json`: the fields every trainer writes (`run`, flattened, and reached through
/// the summary: `summary.steps`) and orpo's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrpoSummary {
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
    /// Evaluation on the held-out pairs before and after training (TRL's names, no prefix).
    pub eval_before: OrpoValues,
    pub eval_after: OrpoValues,
    pub settings: OrpoSettings,
}

impl Deref for OrpoSummary {
    type Target = RunTotals;
    fn deref(&self) -> &RunTotals {
        &self.run
    }
}

impl OrpoSummary {
    pub fn applies_to(init: Init) -> &'static str {
        match init {
            Init::New => APPLIES_TO_BASE_SFT,
            Init::ContinueSft => APPLIES_TO_BASE,
        }
    }
}

/// `a -> b` of one eval metric.
pub fn before_after(s: &OrpoSummary, key: &str) -> String {
    let get = |m: &OrpoValues| m.get(key).copied().unwrap_or(f64::NAN);
    format!("{:.4} -> {:.4}", get(&s.eval_before), get(&s.eval_after))
}

/// `pipe show orpo`.
pub fn show(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
    let text = std::fs::read_to_string(dir.join(SUMMARY_FILE))?;
    let s: OrpoSummary = serde_json::from_str(&text).map_err(std::io::Error::other)?;
    write_summary(&s, out)?;
    let records = metrics::read(&dir.join(METRICS_FILE)).map_err(std::io::Error::other)?;
    write_curves(&records, out)
}

fn write_summary(s: &OrpoSummary, out: &mut dyn Write) -> std::io::Result<()> {
    let set = &s.settings;
    writeln!(
        out,
        "base        {} (adapter applies to {})",
        s.base_model, s.adapter_applies_to
    )?;
    writeln!(
        out,
        "run         {} steps ({:.2} epochs), beta {}, nll {}, lr {:e} {}, batch {} x {} accumulation, seed {}{}",
        s.steps,
        s.epochs,
        set.beta,
        set.nll.name(),
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
    for (label, key) in [
        ("eval loss", "loss"),
        ("accuracy", "rewards/accuracies"),
        ("margin", "rewards/margins"),
        ("chosen", "rewards/chosen"),
        ("rejected", "rewards/rejected"),
        ("nll", "nll_loss"),
        ("log odds", "log_odds_chosen"),
    ] {
        writeln!(out, "{label:<11} {} (held out)", before_after(s, key))?;
    }
    write_speed(&s.run, out)
}
