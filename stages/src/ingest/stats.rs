//! `stats.json`: what ingest read, dropped, sampled and wrote, per category and in lengths.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::artifact::Example;

/// Rows removed by cleaning, by reason; a row counts once, under the first reason that applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    pub empty_prompt: usize,
    pub empty_response: usize,
    pub duplicate: usize,
    /// Preference rows without a rejected answer (absent from other layouts' stats).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub empty_rejected: usize,
    /// Preference rows whose two answers are the same text.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub same_answers: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Drops {
    pub fn total(&self) -> usize {
        self.empty_prompt
            + self.empty_response
            + self.duplicate
            + self.empty_rejected
            + self.same_answers
    }

    /// `2 with an empty prompt, 1 duplicate`, or `none`.
    pub(super) fn describe(&self) -> String {
        let parts: Vec<String> = [
            (self.empty_prompt, "with an empty prompt"),
            (self.empty_response, "with an empty response"),
            (self.duplicate, "duplicate"),
            (self.empty_rejected, "without a rejected answer"),
            (
                self.same_answers,
                "whose chosen and rejected answers are the same",
            ),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Rows `categories` and `filter` left out, before cleaning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filtered {
    /// Rows whose category is not one of `categories`.
    pub by_category: usize,
    /// Rows whose `filter.column` holds none of `filter.values`.
    pub by_filter: usize,
    /// Rows kept.
    pub kept: usize,
}

/// Row counts of one category (or of everything).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub train: usize,
    pub val: usize,
}

/// Nearest-rank length percentiles, in characters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: usize,
    pub p90: usize,
    pub p99: usize,
    pub max: usize,
}

/// What `stats.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestStats {
    /// The path as configured.
    pub file: String,
    pub format: String,
    pub layout: String,
    pub encoding: String,
    /// CSV only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
    /// Role (`prompt`, `response`, `system`, `category`, `input`, `prompt_template`) → the
    /// column, field or template used for it.
    pub columns: BTreeMap<String, String>,
    /// Records in the file.
    pub rows_read: usize,
    /// Rows written (train + val).
    pub rows_out: usize,
    pub train: usize,
    pub val: usize,
    pub dropped: Drops,
    /// Clean rows left out by `max_rows`.
    pub sampled_out: usize,
    /// Rows read but left out by `categories` or `filter` (absent without either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtered: Option<Filtered>,
    /// Chats with turns that are not kept: after the last answer that follows a user turn,
    /// system turns inside the dialogue, or roles other than system/user/assistant.
    pub truncated_conversations: usize,
    /// Rows written with earlier turns (multi-turn chats kept whole).
    #[serde(default)]
    pub multi_turn: usize,
    pub seed: u64,
    pub val_fraction: f64,
    /// Whether the split was stratified by category.
    pub stratified: bool,
    /// Per category (`(none)` for rows without one), when a category column is mapped.
    pub categories: BTreeMap<String, SplitCounts>,
    /// `prompt` and `response` length percentiles over the rows written.
    pub lengths: BTreeMap<String, Percentiles>,
}

pub(super) fn percentiles(mut lengths: Vec<usize>) -> Percentiles {
    lengths.sort_unstable();
    let at = |p: f64| -> usize {
        if lengths.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * lengths.len() as f64).ceil() as usize;
        lengths[rank.clamp(1, lengths.len()) - 1]
    };
    Percentiles {
        p50: at(50.0),
        p90: at(90.0),
        p99: at(99.0),
        max: lengths.last().copied().unwrap_or(0),
    }
}

pub(super) fn category_counts(rows: &[Example], is_val: &[bool]) -> BTreeMap<String, SplitCounts> {
    let mut counts: BTreeMap<String, SplitCounts> = BTreeMap::new();
    for (row, &val) in rows.iter().zip(is_val) {
        let name = row.category.clone().unwrap_or_else(|| "(none)".into());
        let entry = counts.entry(name).or_default();
        if val {
            entry.val += 1;
        } else {
            entry.train += 1;
        }
    }
    counts
}
