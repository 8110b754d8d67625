//! What a finished sft run reports: `summary.json`, `samples.jsonl`, and `pipe show sft`
//! (the summary, a terminal chart of train and eval loss over the steps, the samples).

use std::io::Write;
use std::ops::Deref;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::artifact::{METRICS_FILE, SAMPLES_FILE, SUMMARY_FILE};
use super::config::SftSettings;
use crate::train::chart;
use crate::train::driver::RunTotals;
use crate::train::fit::FitCounts;
use crate::train::metrics::{self, MetricRecord};
use crate::train::EvalResult;

/// `summary.json`: the fields every trainer writes (`run`, flattened, and reached through
/// the summary: `summary.steps`) and sft's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftSummary {
    /// PEFT's `base_model_name_or_path` of the adapter.
    pub base_model: String,
    #[serde(flatten)]
    pub run: RunTotals,
    pub train: FitCounts,
    pub val: FitCounts,
    /// Val rows evaluated (`max_eval_rows` may cap them).
    pub eval_rows: usize,
    /// Mean train loss of the last 10 steps (or fewer): less noisy than the last one.
    pub train_loss_final_mean: f64,
    pub eval_loss_before: f64,
    pub eval_loss_after: f64,
    pub perplexity_before: f64,
    pub perplexity_after: f64,
    /// Completion tokens each evaluation scores.
    pub eval_tokens: usize,
    /// Tokens the loss counted.
    pub target_tokens: usize,
    pub settings: SftSettings,
}

impl Deref for SftSummary {
    type Target = RunTotals;
    fn deref(&self) -> &RunTotals {
        &self.run
    }
}

/// One line of `samples.jsonl`: a val prompt answered greedily before and after training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub id: String,
    pub source_row: u64,
    pub prompt: String,
    pub reference: String,
    pub before: String,
    pub after: String,
}

/// Eval results at a step, for the summary and the chart.
pub fn eval_points(records: &[MetricRecord]) -> Vec<(usize, f64)> {
    records
        .iter()
        .filter_map(|r| r.eval_loss.map(|l| (r.step, l)))
        .collect()
}

/// The before/after pair of one evaluation.
pub fn eval_pair(before: &EvalResult, after: &EvalResult) -> String {
    format!(
        "{:.4} -> {:.4} (perplexity {:.2} -> {:.2})",
        before.loss, after.loss, before.perplexity, after.perplexity
    )
}

/// `pipe show sft`.
pub fn show(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
    let text = std::fs::read_to_string(dir.join(SUMMARY_FILE))?;
    let s: SftSummary = serde_json::from_str(&text).map_err(std::io::Error::other)?;
    write_summary(&s, out)?;
    let records = metrics::read(&dir.join(METRICS_FILE)).map_err(std::io::Error::other)?;
    writeln!(out)?;
    write_chart(&records, out)?;
    let samples = read_samples(&dir.join(SAMPLES_FILE))?;
    if !samples.is_empty() {
        writeln!(out)?;
        write_samples(&samples, out)?;
    }
    Ok(())
}

fn write_summary(s: &SftSummary, out: &mut dyn Write) -> std::io::Result<()> {
    let l = &s.settings.lora;
    writeln!(out, "base        {}", s.base_model)?;
    writeln!(
        out,
        "lora        r {}, alpha {}, dropout {}, on {} ({} trainable parameters)",
        l.r,
        l.alpha,
        l.dropout,
        l.target_modules.join(" "),
        s.trainable_parameters
    )?;
    writeln!(
        out,
        "run         {} steps ({:.2} epochs), lr {:e} {}, batch {} x {} accumulation, seed {}{}",
        s.steps,
        s.epochs,
        s.settings.learning_rate,
        s.settings.lr_scheduler.name(),
        s.settings.batch_size,
        s.settings.gradient_accumulation,
        s.seed,
        s.resumed_from_step
            .map(|k| format!(", resumed from step {k}"))
            .unwrap_or_default()
    )?;
    for (name, c) in [("train rows", &s.train), ("val rows", &s.val)] {
        writeln!(
            out,
            "{name:<11} {} of {} (max_seq_len {}: {} truncated, {} dropped over length, {} dropped with a completion too long)",
            c.kept,
            c.rows,
            s.settings.max_seq_len,
            c.truncated,
            c.dropped_overlength,
            c.dropped_completion_too_long
        )?;
    }
    writeln!(
        out,
        "train loss  {:.4} first, {:.4} last, {:.4} mean of the last steps",
        s.train_loss_first, s.train_loss_last, s.train_loss_final_mean
    )?;
    writeln!(
        out,
        "eval loss   {:.4} -> {:.4} on {} val rows ({} tokens)",
        s.eval_loss_before, s.eval_loss_after, s.eval_rows, s.eval_tokens
    )?;
    writeln!(
        out,
        "perplexity  {:.2} -> {:.2}",
        s.perplexity_before, s.perplexity_after
    )?;
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

/// A terminal chart of the train loss per step (`·`) and the eval loss where evaluated (`o`).
pub fn write_chart(records: &[MetricRecord], out: &mut dyn Write) -> std::io::Result<()> {
    let train: Vec<(usize, f64)> = records
        .iter()
        .filter_map(|r| r.loss.map(|l| (r.step, l)))
        .collect();
    chart::write_chart("loss", &train, &eval_points(records), out)
}

fn read_samples(path: &Path) -> std::io::Result<Vec<Sample>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}

fn write_samples(samples: &[Sample], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "samples (greedy, val rows)")?;
    for s in samples {
        writeln!(out, "  [{}] {}", s.source_row, one_line(&s.prompt, 200))?;
        writeln!(out, "    reference  {}", one_line(&s.reference, 200))?;
        writeln!(out, "    before     {}", one_line(&s.before, 200))?;
        writeln!(out, "    after      {}", one_line(&s.after, 200))?;
    }
    Ok(())
}

/// Newlines shown as `⏎`, cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat = text.trim().replace('\n', " ⏎ ");
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_and_sparkline_draw_the_curve() {
        let mut records: Vec<MetricRecord> = (1..=100)
            .map(|s| MetricRecord {
                step: s,
                loss: Some(3.0 / s as f64),
                ..MetricRecord::default()
            })
            .collect();
        records.insert(
            0,
            MetricRecord {
                step: 0,
                eval_loss: Some(3.2),
                ..MetricRecord::default()
            },
        );
        records[100].eval_loss = Some(0.5);
        let mut out = Vec::new();
        write_chart(&records, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains('o') && text.contains('·'), "{text}");
        assert!(text.contains("3.200") && text.contains("0.030"), "{text}");
        let spark = text.lines().last().unwrap();
        assert!(spark.contains('█') && spark.contains('▁'), "{text}");
        let mut empty = Vec::new();
        write_chart(&[], &mut empty).unwrap();
        assert!(String::from_utf8(empty).unwrap().contains("no steps"));
    }

    #[test]
    fn one_line_flattens_and_cuts() {
        assert_eq!(one_line(" a\nb ", 10), "a ⏎ b");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }
}
