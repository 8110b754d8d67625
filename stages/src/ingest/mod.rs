//! The `ingest` stage: turns a user's CSV, JSON or JSONL file into clean, deduplicated
//! prompt/response examples with a seeded (optionally stratified) train/val split.
//!
//! Nothing is dropped silently: every removed row is counted by reason in `stats.json` and
//! reported as it happens, and every unreadable input is an error naming the file and row.
//! Other stages read only [`artifact`]: the split files, their rows and the reader.

pub mod artifact;
mod clean;
mod config;
mod error;
mod mapping;
mod messages;
mod preference;
mod read;
mod report;
mod split;
mod stats;
mod template;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub use config::IngestConfig;

use artifact::{Example, STATS_FILE, TRAIN_FILE, VAL_FILE};
use clean::clean;
use config::{validate_config, Format};
use error::IngestError;
use read::{load_csv, load_json, resolve_delimiter, resolve_format};
use split::{sample, split};
use stats::{category_counts, percentiles, IngestStats, SplitCounts};

use crate::contract::{ConfigIssue, Stage, StageContext, StageResult};
use crate::tabular::{self, JsonKind, Source};

/// The `ingest` stage.
pub struct Ingest;

impl Stage for Ingest {
    const NAME: &'static str = "ingest";
    // 2: multi-turn chats are kept whole (`history`), no longer cut to their first exchange.
    const VERSION: u32 = 2;
    const ABOUT: &'static str =
        "read a CSV/JSON/JSONL dataset, clean and deduplicate it, split it into train and val";
    const STARTER: &'static str = r#"[ingest]
# The dataset, relative to this file: CSV, JSON (an array of objects) or JSONL (an object a line).
path = "data/unix_manual_qa.csv"
# format = "auto"        # "auto" (by extension: .csv .tsv .json .jsonl .ndjson), "csv", "json",
#                        # "jsonl"
# encoding = "auto"      # "auto" (BOM, else UTF-8, else CP949/EUC-KR), "utf-8", "cp949", "euc-kr"
# delimiter = ","        # CSV field separator, one character (default "," or "\t" for .tsv)
# layout = "auto"        # "auto", "columns", "alpaca" (instruction/input/output/system fields),
#                        # "messages" (JSON/JSONL chats: messages = [{role, content}], or
#                        # ShareGPT conversations = [{from, value}], kept whole: the last
#                        # answer is the response, the user turn before it the prompt, earlier
#                        # turns its history; sft trains on every assistant turn)
# Column (CSV) or field (JSON) names. Defaults: "prompt" and "response" for layout "columns";
# "instruction", "output", "input", "system" for layout "alpaca".
prompt = "question"
response = "answer"
# system = "system"      # optional: a per-row system prompt
category = "category"    # optional: per-category stats and a stratified split
# input = "input"        # optional: extra context joined into the prompt by prompt_template
# prompt_template = "{question}\n\n{input}"  # {column} placeholders, {{ }} for literal braces;
#                        # default "{<prompt>}\n\n{<input>}"; with `input` set it is used only on
#                        # rows whose input is non-empty (the prompt alone otherwise)
# val_fraction = 0.2     # share of rows held out for validation, 0 < f < 1
# max_rows = 1000        # optional: keep a seeded sample of this many clean rows (quick runs)
# stratify = true        # split each category in the same proportion (needs `category`)
"#;
    type Config = IngestConfig;

    fn external_inputs(cfg: &IngestConfig) -> Vec<PathBuf> {
        vec![cfg.path.clone()]
    }

    fn validate(cfg: &IngestConfig) -> Result<(), ConfigIssue> {
        validate_config(cfg)
    }

    fn run(cfg: &IngestConfig, cx: &mut StageContext) -> StageResult {
        run_ingest(cfg, cx)
    }

    fn show(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
        let text = std::fs::read_to_string(dir.join(STATS_FILE))?;
        let stats: IngestStats = serde_json::from_str(&text).map_err(std::io::Error::other)?;
        report::write_stats(&stats, out)
    }
}

fn write_jsonl<'a>(
    path: &Path,
    rows: impl Iterator<Item = &'a Example>,
) -> Result<(), IngestError> {
    let wrap = |source: std::io::Error| IngestError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut out = BufWriter::new(File::create(path).map_err(wrap)?);
    for row in rows {
        serde_json::to_writer(&mut out, row).map_err(|e| wrap(std::io::Error::other(e)))?;
        out.write_all(b"\n").map_err(wrap)?;
    }
    out.flush().map_err(wrap)
}

fn write_stats_file(path: &Path, stats: &IngestStats) -> Result<(), IngestError> {
    let wrap = |source: std::io::Error| IngestError::Write {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_string_pretty(stats).map_err(|e| wrap(std::io::Error::other(e)))?;
    std::fs::write(path, text + "\n").map_err(wrap)
}

/// The stage body: read, clean, sample, split, write.
fn run_ingest(cfg: &IngestConfig, cx: &mut StageContext) -> StageResult {
    let file = cfg.path.display().to_string();
    let source = Source::labelled(cx.resolve(&cfg.path), file.clone());
    let format = resolve_format(cfg, &file)?;
    let decoded = tabular::read_text(&source, cfg.encoding)?;
    let delimiter = resolve_delimiter(cfg);
    let loaded = match format {
        Format::Json => load_json(cfg, &decoded.text, &file, JsonKind::Array)?,
        Format::Jsonl => load_json(cfg, &decoded.text, &file, JsonKind::Lines)?,
        Format::Csv | Format::Auto => load_csv(cfg, &decoded.text, &file, delimiter)?,
    };
    drop(decoded.text);
    let format_name = match format {
        Format::Json => "json",
        Format::Jsonl => "jsonl",
        Format::Csv | Format::Auto => "csv",
    };
    if format != Format::Csv && cfg.delimiter.is_some() {
        cx.progress().info(&format!(
            "ingest: `delimiter` is ignored: {file} is {format_name}"
        ));
    }
    let rows_read = loaded.rows.len();
    let columns_line: Vec<String> = loaded
        .columns
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    cx.progress().info(&format!(
        "ingest: read {rows_read} records from {file} ({format_name}, {}, layout {}: {})",
        decoded.encoding,
        loaded.layout.name(),
        columns_line.join(", ")
    ));
    let truncated = loaded.rows.iter().filter(|r| r.truncated).count();
    if truncated > 0 {
        cx.progress().info(&format!(
            "ingest: {truncated} chats have turns that are not kept (after the last answer \
             that follows a user turn, system turns inside the dialogue, or other roles)"
        ));
    }

    let (rows_in, filtered) = filter_rows(cfg, loaded.rows);
    if let Some(f) = &filtered {
        cx.progress().info(&format!(
            "ingest: kept {} of {rows_read} rows ({} outside `categories`, {} outside `filter`)",
            f.kept, f.by_category, f.by_filter
        ));
    }
    let (kept, dropped) = clean(rows_in, loaded.layout == config::Layout::Preference);
    cx.progress().info(&if dropped.total() == 0 {
        format!("ingest: dropped none of {rows_read} rows (no empty or duplicate rows)")
    } else {
        format!(
            "ingest: dropped {} of {rows_read} rows: {}",
            dropped.total(),
            dropped.describe()
        )
    });
    if kept.len() < 2 {
        return Err(IngestError::TooFewRows {
            file,
            kept: kept.len(),
            read: rows_read,
            dropped: dropped.describe(),
        }
        .into());
    }
    let clean_rows = kept.len();
    let rows = match cfg.max_rows {
        Some(max) => sample(kept, max, cx.seed()),
        None => kept,
    };
    let sampled_out = clean_rows - rows.len();
    if sampled_out > 0 {
        cx.progress().info(&format!(
            "ingest: max_rows = {}: kept a seeded sample of {} of {clean_rows} clean rows",
            rows.len(),
            rows.len()
        ));
    }

    let stratified = cfg.stratify && loaded.has_category;
    let is_val = split(&rows, cfg.val_fraction, stratified, cx.seed());
    let val = is_val.iter().filter(|&&v| v).count();
    let train = rows.len() - val;
    let categories = if loaded.has_category {
        category_counts(&rows, &is_val)
    } else {
        BTreeMap::new()
    };
    report_split(cx, train, val, stratified, &categories);

    let out = cx.out_dir().to_path_buf();
    write_jsonl(
        &out.join(TRAIN_FILE),
        rows.iter()
            .zip(&is_val)
            .filter(|(_, &v)| !v)
            .map(|(r, _)| r),
    )?;
    write_jsonl(
        &out.join(VAL_FILE),
        rows.iter().zip(&is_val).filter(|(_, &v)| v).map(|(r, _)| r),
    )?;

    let mut lengths = BTreeMap::new();
    lengths.insert(
        "prompt".to_string(),
        percentiles(rows.iter().map(|r| r.prompt.chars().count()).collect()),
    );
    lengths.insert(
        "response".to_string(),
        percentiles(rows.iter().map(|r| r.response.chars().count()).collect()),
    );
    let stats = IngestStats {
        file,
        format: format_name.into(),
        layout: loaded.layout.name().into(),
        encoding: decoded.encoding.into(),
        delimiter: (format == Format::Csv).then(|| char::from(delimiter).to_string()),
        columns: loaded.columns,
        rows_read,
        rows_out: rows.len(),
        train,
        val,
        dropped,
        sampled_out,
        filtered,
        truncated_conversations: truncated,
        multi_turn: rows.iter().filter(|r| !r.history.is_empty()).count(),
        seed: cx.seed(),
        val_fraction: cfg.val_fraction,
        stratified,
        categories,
        lengths,
    };
    write_stats_file(&out.join(STATS_FILE), &stats)?;
    cx.set_metric("rows_in", rows_read);
    cx.set_metric("train", train);
    cx.set_metric("val", val);
    cx.set_metric("dropped", dropped.total());
    Ok(())
}

/// The rows `categories` and `filter` keep, and the counts of those they leave out (`None`
/// when neither is set).
fn filter_rows(
    cfg: &IngestConfig,
    rows: Vec<read::Candidate>,
) -> (Vec<read::Candidate>, Option<stats::Filtered>) {
    if cfg.categories.is_none() && cfg.filter.is_none() {
        return (rows, None);
    }
    let mut counts = stats::Filtered::default();
    let kept: Vec<read::Candidate> = rows
        .into_iter()
        .filter(|row| {
            if let Some(categories) = &cfg.categories {
                if !categories.iter().any(|c| c == &row.category) {
                    counts.by_category += 1;
                    return false;
                }
            }
            if let Some(f) = &cfg.filter {
                if !f.values.iter().any(|v| v == &row.filter) {
                    counts.by_filter += 1;
                    return false;
                }
            }
            true
        })
        .collect();
    counts.kept = kept.len();
    (kept, Some(counts))
}

fn report_split(
    cx: &StageContext,
    train: usize,
    val: usize,
    stratified: bool,
    categories: &BTreeMap<String, SplitCounts>,
) {
    let how = if stratified {
        format!(", stratified over {} categories", categories.len())
    } else {
        String::new()
    };
    cx.progress()
        .info(&format!("ingest: split {train} train / {val} val{how}"));
    let singles: Vec<&str> = categories
        .iter()
        .filter(|(_, c)| c.train + c.val == 1)
        .map(|(k, _)| k.as_str())
        .collect();
    if stratified && !singles.is_empty() {
        cx.progress().info(&format!(
            "ingest: {} categories have a single row and appear in one split only: {}",
            singles.len(),
            singles.join(", ")
        ));
    }
}
