//! What a finished orpo run reports: `summary.json` and `pipe show orpo` (the summary and
//! terminal curves of the loss, the reward accuracy and the reward margin over the steps).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::artifact::{APPLIES_TO_BASE, APPLIES_TO_BASE_SFT, METRICS_FILE, SUMMARY_FILE};
use super::config::{Init, OrpoSettings};
use super::data::PairCounts;
use crate::train::chart::write_chart;
use crate::train::metrics::{self, MetricRecord};

/// ORPO metrics by TRL's names (`loss`, `nll_loss`, `rewards/margins`, ...).
pub type OrpoValues = BTreeMap<String, f64>;

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrpoSummary {
    /// PEFT's `base_model_name_or_path` of the adapter.
    pub base_model: String,
    /// What the adapter applies to: `base+sft` (init = "new": fold sft, then this) or `base`
    /// (init = "continue_sft": this adapter is the sft adapter trained further).
    pub adapter_applies_to: String,
    pub steps: usize,
    pub epochs: f64,
    pub pairs: PairCounts,
    /// Held-out pairs evaluated (`max_eval_pairs` may cap them).
    pub eval_pairs: usize,
    pub train_loss_first: f64,
    pub train_loss_last: f64,
    /// Evaluation on the held-out pairs before and after training (TRL's names, no prefix).
    pub eval_before: OrpoValues,
    pub eval_after: OrpoValues,
    /// Tokens through the model in training steps (both sequences of each pair, no padding).
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
    pub settings: OrpoSettings,
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
    for (name, key) in [
        ("loss", "loss"),
        ("accuracy", "rewards/accuracies"),
        ("margin", "rewards/margins"),
    ] {
        writeln!(out)?;
        write_chart(
            name,
            &series(&records, key),
            &series(&records, &format!("eval_{key}")),
            out,
        )?;
    }
    Ok(())
}

/// The values of one metric over the steps (`loss` and `eval_loss` are fields of the record,
/// the others are in its map).
pub fn series(records: &[MetricRecord], key: &str) -> Vec<(usize, f64)> {
    records
        .iter()
        .filter_map(|r| {
            let v = match key {
                "loss" => r.loss,
                "eval_loss" => r.eval_loss,
                _ => r.extra.get(key).copied(),
            };
            v.map(|v| (r.step, v))
        })
        .collect()
}

fn write_summary(s: &OrpoSummary, out: &mut dyn Write) -> std::io::Result<()> {
    let set = &s.settings;
    writeln!(
        out,
        "base        {} (adapter applies to {})",
        s.base_model, s.adapter_applies_to
    )?;
    let l = &set.lora;
    match set.init {
        Init::New => writeln!(
            out,
            "lora        new: r {}, alpha {}, dropout {}, on {} ({} trainable parameters)",
            l.r,
            l.alpha,
            l.dropout,
            l.target_modules.join(" "),
            s.trainable_parameters
        )?,
        Init::ContinueSft => writeln!(
            out,
            "lora        the sft adapter, trained further ({} trainable parameters)",
            s.trainable_parameters
        )?,
    }
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
    let p = &s.pairs;
    writeln!(
        out,
        "pairs       {} in pairs.jsonl: {} train, {} held out ({} evaluated); max_seq_len {}: {} truncated, {} dropped",
        p.pairs,
        p.train.kept,
        p.eval.kept,
        s.eval_pairs,
        set.max_seq_len,
        p.train.truncated + p.eval.truncated,
        p.train.dropped() + p.eval.dropped()
    )?;
    writeln!(
        out,
        "train loss  {:.4} first, {:.4} last",
        s.train_loss_first, s.train_loss_last
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
    writeln!(
        out,
        "speed       {} tokens in {:.1}s of training: {:.0} tok/s; stage wall time {:.1}s",
        s.tokens, s.train_seconds, s.tokens_per_s, s.wall_seconds
    )?;
    if let Some(mb) = s.peak_rss_mb {
        writeln!(out, "memory      peak RSS {mb:.0} MiB")?;
    }
    Ok(())
}
