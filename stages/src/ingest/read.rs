//! Reading the user's file into candidate rows: the format and delimiter resolved, the
//! layout chosen from the header or first record, and each record mapped to its roles.

use std::collections::BTreeMap;

use super::config::{delimiter_byte, Format, IngestConfig, Layout};
use super::error::IngestError;
use super::mapping::{missing_column, Mapping};
use super::messages::load_messages;
use crate::tabular::{self, CsvTable, JsonKind};

/// A record reduced to trimmed text, before cleaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Candidate {
    pub(super) source_row: u64,
    pub(super) prompt: String,
    pub(super) response: String,
    /// Empty when absent.
    pub(super) system: String,
    /// Empty when absent.
    pub(super) category: String,
    /// A chat with turns that are not kept (after the last answer, or of other roles).
    pub(super) truncated: bool,
    /// The dispreferred answer of a preference row (`response` is the chosen one); empty
    /// in other layouts.
    pub(super) rejected: String,
    /// The value of the `filter` column (empty without a filter).
    pub(super) filter: String,
    /// The turns before `prompt` of a multi-turn chat (empty for a single exchange).
    pub(super) history: Vec<crate::llm::ChatMessage>,
}

/// Everything read from the file, before cleaning.
pub(super) struct Loaded {
    pub(super) rows: Vec<Candidate>,
    pub(super) layout: Layout,
    pub(super) columns: BTreeMap<String, String>,
    pub(super) has_category: bool,
}

pub(super) fn resolve_format(cfg: &IngestConfig, file: &str) -> Result<Format, IngestError> {
    if cfg.format != Format::Auto {
        return Ok(cfg.format);
    }
    match tabular::extension(&cfg.path).as_deref() {
        Some("csv" | "tsv") => Ok(Format::Csv),
        Some("json") => Ok(Format::Json),
        Some("jsonl" | "ndjson") => Ok(Format::Jsonl),
        other => Err(IngestError::UnknownFormat {
            file: file.to_string(),
            ext: other.map_or_else(|| "(none)".to_string(), |e| format!(".{e}")),
        }),
    }
}

/// The delimiter as configured, else tab for .tsv files, else comma.
pub(super) fn resolve_delimiter(cfg: &IngestConfig) -> u8 {
    let configured = cfg
        .delimiter
        .as_deref()
        .and_then(|d| delimiter_byte(d).ok());
    configured.unwrap_or(match tabular::extension(&cfg.path).as_deref() {
        Some("tsv") => b'\t',
        _ => b',',
    })
}

/// The layout to use given the names present in the header or first record.
pub(super) fn choose_layout(cfg: &IngestConfig, names: &[String]) -> Layout {
    if cfg.layout != Layout::Auto {
        return cfg.layout;
    }
    let has = |n: &str| names.iter().any(|c| c == n);
    // Two answer columns make a preference file, unless `response` names the one to train on.
    let answers = has("chosen") && has("rejected") && cfg.response.is_none();
    if cfg.chosen.is_some() || cfg.rejected.is_some() || answers {
        return Layout::Preference;
    }
    let columns_set = cfg.prompt.is_some() || cfg.response.is_some();
    // Keys that only make sense for columns or alpaca also rule out a chat.
    let chat_ruled_out =
        columns_set || cfg.input.is_some() || cfg.system.is_some() || cfg.prompt_template.is_some();
    if columns_set {
        Layout::Columns
    } else if !chat_ruled_out && (has("messages") || has("conversations")) {
        Layout::Messages
    } else if has("instruction") && has("output") {
        Layout::Alpaca
    } else {
        Layout::Columns
    }
}

pub(super) fn load_csv(
    cfg: &IngestConfig,
    text: &str,
    file: &str,
    delimiter: u8,
) -> Result<Loaded, IngestError> {
    let table = CsvTable::open(text, file, delimiter)?;
    let layout = choose_layout(cfg, table.columns());
    if layout == Layout::Messages {
        return Err(IngestError::MessagesInCsv {
            file: file.to_string(),
        });
    }
    let mapping = Mapping::new(cfg, layout, table.columns())
        .map_err(|m| config_in_run("prompt_template", m))?;
    let mut picks = Vec::with_capacity(mapping.needs.len());
    for need in &mapping.needs {
        let found = table.positions(&need.name);
        match found.as_slice() {
            [] if need.required => {
                return Err(missing_column(file, None, need, table.columns(), layout))
            }
            [] => picks.push(None),
            [i] => picks.push(Some(*i)),
            many => {
                return Err(IngestError::AmbiguousColumn {
                    file: file.to_string(),
                    name: need.name.clone(),
                    origin: need.origin.clone(),
                    count: many.len(),
                })
            }
        }
    }
    let rows = table.rows(&picks)?;
    let rows = rows
        .into_iter()
        .map(|row| {
            // Unreachable: every required column was found in the header.
            mapping
                .assemble(&row.cells, row.row)
                .map_err(|i| IngestError::BadRecord {
                    file: file.to_string(),
                    location: row.location,
                    message: format!("no value for column `{}`", mapping.needs[i].name),
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Loaded {
        rows,
        layout,
        columns: mapping.describe(),
        has_category: mapping.category.is_some(),
    })
}

pub(super) fn load_json(
    cfg: &IngestConfig,
    text: &str,
    file: &str,
    kind: JsonKind,
) -> Result<Loaded, IngestError> {
    let records = tabular::read_json(text, file, kind)?;
    let first_names: Vec<String> = records
        .first()
        .map(|r| r.fields.keys().cloned().collect())
        .unwrap_or_default();
    let layout = choose_layout(cfg, &first_names);
    if layout == Layout::Messages {
        return load_messages(cfg, &records, file);
    }
    if layout == Layout::Preference && is_conversational(&records) {
        return super::preference::load_conversational(cfg, &records, file);
    }
    let mapping =
        Mapping::new(cfg, layout, &first_names).map_err(|m| config_in_run("prompt_template", m))?;
    let mut rows = Vec::with_capacity(records.len());
    for record in &records {
        let cells = mapping
            .needs
            .iter()
            .map(|need| tabular::text_field(record, &need.name, file))
            .collect::<Result<Vec<_>, _>>()?;
        let row = mapping.assemble(&cells, record.row).map_err(|i| {
            let available: Vec<String> = record.fields.keys().cloned().collect();
            missing_column(
                file,
                Some(record.location),
                &mapping.needs[i],
                &available,
                layout,
            )
        })?;
        rows.push(row);
    }
    Ok(Loaded {
        rows,
        layout,
        columns: mapping.describe(),
        has_category: mapping.category.is_some(),
    })
}

/// TRL's conversational preference form: `chosen` holds a list of messages, not text.
fn is_conversational(records: &[tabular::JsonRecord]) -> bool {
    records
        .first()
        .and_then(|r| r.fields.get("chosen"))
        .is_some_and(|v| v.is_array())
}

/// A config problem the engine's validation already refuses; kept as an error, not a panic.
pub(super) fn config_in_run(key: &'static str, message: String) -> IngestError {
    IngestError::Config { key, message }
}
