//! The `[ingest]` table: the file, how to parse it, which columns hold what, and how to split;
//! with the checks serde cannot express, each naming its key.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::template::{parse_template, Piece};
use crate::contract::ConfigIssue;
use crate::tabular::TextEncoding;

/// How the input file is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// By extension: .csv/.tsv, .json, .jsonl/.ndjson.
    #[default]
    Auto,
    Csv,
    Json,
    Jsonl,
}

/// Where the prompt and response live in each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// A `messages`/`conversations` field → messages; `instruction` + `output` → alpaca;
    /// anything else → columns.
    #[default]
    Auto,
    /// Named columns (`prompt`, `response`, ...).
    Columns,
    /// `instruction`, optional `input`, `output`, optional `system`; overridable per key.
    Alpaca,
    /// A chat: `messages: [{role, content}]` (or ShareGPT `conversations: [{from, value}]`).
    Messages,
    /// Preference pairs: `prompt`, `chosen`, `rejected` (orca-dpo-pairs: `question` for the
    /// prompt), optional `system` and `category`.
    Preference,
}

impl Layout {
    pub(super) fn name(self) -> &'static str {
        match self {
            Layout::Auto => "auto",
            Layout::Columns => "columns",
            Layout::Alpaca => "alpaca",
            Layout::Messages => "messages",
            Layout::Preference => "preference",
        }
    }
}

/// The `[ingest]` table of pipeline.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// The dataset, relative to the workspace root.
    pub path: PathBuf,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub encoding: TextEncoding,
    /// CSV field separator, one ASCII character; `None`: "," (tab for .tsv).
    #[serde(default)]
    pub delimiter: Option<String>,
    #[serde(default)]
    pub layout: Layout,
    /// Column/field names; `None` takes the layout's default.
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub response: Option<String>,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub input: Option<String>,
    /// The preferred answer's column (layout "preference"; default `chosen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    /// The dispreferred answer's column (layout "preference"; default `rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    /// `{column}` placeholders; `{{`/`}}` are literal braces.
    #[serde(default)]
    pub prompt_template: Option<String>,
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    #[serde(default)]
    pub max_rows: Option<usize>,
    #[serde(default = "default_stratify")]
    pub stratify: bool,
    /// Keep only rows of these categories (needs `category`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
    /// Keep only rows whose `column` holds one of `values`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<RowFilter>,
}

/// `filter = { column = "difficulty", values = ["easy"] }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowFilter {
    pub column: String,
    pub values: Vec<String>,
}

fn default_val_fraction() -> f64 {
    0.2
}

fn default_stratify() -> bool {
    true
}

pub(super) fn validate_config(cfg: &IngestConfig) -> Result<(), ConfigIssue> {
    if cfg.path.as_os_str().is_empty() {
        return Err(ConfigIssue::new(
            "path",
            "must name the dataset file, e.g. \"data/qa.csv\"",
        ));
    }
    let f = cfg.val_fraction;
    if !(f > 0.0 && f < 1.0) {
        return Err(ConfigIssue::new(
            "val_fraction",
            format!("must be between 0 and 1 (exclusive), got {f}; 0.2 holds out 20% of the rows"),
        ));
    }
    if let Some(d) = &cfg.delimiter {
        delimiter_byte(d).map_err(|m| ConfigIssue::new("delimiter", m))?;
        if matches!(cfg.format, Format::Json | Format::Jsonl) {
            return Err(ConfigIssue::new(
                "delimiter",
                "applies to CSV only; remove it for JSON input",
            ));
        }
    }
    if cfg.max_rows.is_some_and(|n| n < 2) {
        return Err(ConfigIssue::new(
            "max_rows",
            "must be at least 2 (one train and one val row); remove it to keep every row",
        ));
    }
    for (key, value) in column_keys(cfg) {
        if value.is_some_and(|v| v.trim().is_empty()) {
            return Err(ConfigIssue::new(
                key,
                "must name a column; remove the key to use the default",
            ));
        }
    }
    if cfg.layout == Layout::Messages {
        let mut chat_keys = column_keys(cfg)
            .into_iter()
            .filter(|(key, value)| *key != "category" && value.is_some())
            .map(|(key, _)| key)
            .chain(cfg.prompt_template.is_some().then_some("prompt_template"));
        if let Some(key) = chat_keys.next() {
            return Err(ConfigIssue::new(
                key,
                "does not apply to layout \"messages\", which takes the prompt, response and \
                 system from the chat; remove it, or use layout = \"columns\"",
            ));
        }
    }
    validate_preference_keys(cfg)?;
    validate_filters(cfg)?;
    if let Some(template) = &cfg.prompt_template {
        let pieces =
            parse_template(template).map_err(|m| ConfigIssue::new("prompt_template", m))?;
        if let Some(input) = &cfg.input {
            if !pieces
                .iter()
                .any(|p| matches!(p, Piece::Field(f) if f == input))
            {
                return Err(ConfigIssue::new(
                    "prompt_template",
                    format!(
                        "does not use `{{{input}}}`, the `input` column, so the input would be \
                         lost; add it to the template"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `categories` needs a category column; a filter names a column and at least one value.
fn validate_filters(cfg: &IngestConfig) -> Result<(), ConfigIssue> {
    if let Some(categories) = &cfg.categories {
        if cfg.category.is_none() {
            return Err(ConfigIssue::new(
                "categories",
                "needs `category`, the column holding each row's category",
            ));
        }
        if categories.is_empty() {
            return Err(ConfigIssue::new(
                "categories",
                "lists no category: every row would be dropped; remove the key to keep all",
            ));
        }
    }
    if let Some(filter) = &cfg.filter {
        if filter.column.trim().is_empty() {
            return Err(ConfigIssue::new("filter.column", "must name a column"));
        }
        if filter.values.is_empty() {
            return Err(ConfigIssue::new(
                "filter.values",
                "lists no value: every row would be dropped",
            ));
        }
        if cfg.layout == Layout::Messages {
            return Err(ConfigIssue::new(
                "filter",
                "does not apply to layout \"messages\" (a chat's fields are its turns)",
            ));
        }
    }
    Ok(())
}

/// `chosen`/`rejected` name the answers of a preference layout, which has no `response`.
fn validate_preference_keys(cfg: &IngestConfig) -> Result<(), ConfigIssue> {
    let preference = matches!(cfg.layout, Layout::Preference | Layout::Auto);
    for (key, value) in [("chosen", &cfg.chosen), ("rejected", &cfg.rejected)] {
        if value.is_some() && !preference {
            return Err(ConfigIssue::new(
                key,
                "applies to layout = \"preference\" only; remove it or set the layout",
            ));
        }
        if value.as_ref().is_some_and(|v| v.trim().is_empty()) {
            return Err(ConfigIssue::new(key, "must name a column"));
        }
    }
    let names_answers = cfg.chosen.is_some() || cfg.rejected.is_some();
    if cfg.response.is_some() && (cfg.layout == Layout::Preference || names_answers) {
        return Err(ConfigIssue::new(
            "response",
            "a preference layout has two answers: name them with `chosen` and `rejected`",
        ));
    }
    Ok(())
}

fn column_keys(cfg: &IngestConfig) -> [(&'static str, Option<&String>); 5] {
    [
        ("prompt", cfg.prompt.as_ref()),
        ("response", cfg.response.as_ref()),
        ("system", cfg.system.as_ref()),
        ("category", cfg.category.as_ref()),
        ("input", cfg.input.as_ref()),
    ]
}

pub(super) fn delimiter_byte(d: &str) -> Result<u8, String> {
    match d.as_bytes() {
        [b] if b.is_ascii() && !matches!(b, b'"' | b'\n' | b'\r') => Ok(*b),
        _ => Err(format!(
            "must be one ASCII character other than a quote or newline \
             (\",\", \";\", \"\\t\", \"|\"), got {d:?}"
        )),
    }
}
