//! The `ingest` stage: turns a user's CSV, JSON or JSONL file into clean, deduplicated
//! prompt/response examples with a seeded (optionally stratified) train/val split.
//!
//! Nothing is dropped silently: every removed row is counted by reason in `stats.json` and
//! reported as it happens, and every unreadable input is an error naming the file and row.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::{ConfigIssue, Stage, StageContext, StageResult};
use crate::tabular::{
    self, CsvTable, JsonKind, JsonRecord, Location, Source, TableError, TextEncoding,
};

/// The training split, one [`Example`] per line.
pub const TRAIN_FILE: &str = "train.jsonl";
/// The validation split, one [`Example`] per line.
pub const VAL_FILE: &str = "val.jsonl";
/// [`IngestStats`] as JSON.
pub const STATS_FILE: &str = "stats.json";

/// The `ingest` stage.
pub struct Ingest;

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
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Auto => "auto",
            Layout::Columns => "columns",
            Layout::Alpaca => "alpaca",
            Layout::Messages => "messages",
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
    /// `{column}` placeholders; `{{`/`}}` are literal braces.
    #[serde(default)]
    pub prompt_template: Option<String>,
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    #[serde(default)]
    pub max_rows: Option<usize>,
    #[serde(default = "default_stratify")]
    pub stratify: bool,
}

fn default_val_fraction() -> f64 {
    0.2
}

fn default_stratify() -> bool {
    true
}

/// One output row of `train.jsonl` / `val.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// First 16 hex digits of blake3(system \0 prompt \0 response): stable across runs and files.
    pub id: String,
    pub prompt: String,
    pub response: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// 1-based: CSV record after the header, JSON array position, or JSONL line.
    pub source_row: u64,
}

/// Rows removed by cleaning, by reason; a row counts once, under the first reason that applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    pub empty_prompt: usize,
    pub empty_response: usize,
    pub duplicate: usize,
}

impl Drops {
    pub fn total(&self) -> usize {
        self.empty_prompt + self.empty_response + self.duplicate
    }

    /// `2 with an empty prompt, 1 duplicate`, or `none`.
    fn describe(&self) -> String {
        let parts: Vec<String> = [
            (self.empty_prompt, "with an empty prompt"),
            (self.empty_response, "with an empty response"),
            (self.duplicate, "duplicate"),
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
    /// Chats with turns beyond the first user/assistant exchange (only that exchange is kept).
    pub truncated_conversations: usize,
    pub seed: u64,
    pub val_fraction: f64,
    /// Whether the split was stratified by category.
    pub stratified: bool,
    /// Per category (`(none)` for rows without one), when a category column is mapped.
    pub categories: BTreeMap<String, SplitCounts>,
    /// `prompt` and `response` length percentiles over the rows written.
    pub lengths: BTreeMap<String, Percentiles>,
}

/// Why ingest failed. Messages name the file, the row or key, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("{file}: cannot tell the format from the extension `{ext}`; set `format` in [ingest] to \"csv\", \"json\" or \"jsonl\"")]
    UnknownFormat { file: String, ext: String },
    #[error("{file}: layout \"messages\" needs JSON or JSONL input, but this is CSV; use layout = \"columns\" and map `prompt` and `response`")]
    MessagesInCsv { file: String },
    /// Boxed: the largest variant, and `Result<_, IngestError>` is returned everywhere.
    #[error(transparent)]
    MissingColumn(Box<MissingColumn>),
    #[error("{file}: column `{name}` ({origin}) appears {count} times in the header; rename the duplicates so the mapping is unambiguous")]
    AmbiguousColumn {
        file: String,
        name: String,
        origin: String,
        count: usize,
    },
    #[error("[ingest] `{key}` {message}")]
    Config { key: &'static str, message: String },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {location}: {message}")]
    BadRecord {
        file: String,
        location: Location,
        message: String,
    },
    #[error("{file}: only {kept} usable row(s) of {read} (dropped: {dropped}); need at least 2 to make a train and a val split")]
    TooFewRows {
        file: String,
        kept: usize,
        read: usize,
        dropped: String,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: line {line}: {message}", path.display())]
    BadExample {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// A mapped column (CSV) or field (JSON record) that is not there.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {at}no {noun} `{name}` ({origin}); the {holder} has: {available}; {advice}")]
pub struct MissingColumn {
    pub file: String,
    /// `line 3: ` for a JSON record, empty for a CSV header.
    pub at: String,
    /// `column` or `field`.
    pub noun: &'static str,
    pub name: String,
    pub origin: String,
    /// `header` or `record`.
    pub holder: &'static str,
    pub available: String,
    pub advice: String,
}

impl Stage for Ingest {
    const NAME: &'static str = "ingest";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "read a CSV/JSON/JSONL dataset, clean and deduplicate it, split it into train and val";
    const DEPS: &'static [&'static str] = &[];
    const STARTER: &'static str = r#"[ingest]
# The dataset, relative to this file: CSV, JSON (an array of objects) or JSONL (an object a line).
path = "data/unix_manual_qa.csv"
# format = "auto"        # "auto" (by extension: .csv .tsv .json .jsonl .ndjson), "csv", "json",
#                        # "jsonl"
# encoding = "auto"      # "auto" (BOM, else UTF-8, else CP949/EUC-KR), "utf-8", "cp949", "euc-kr"
# delimiter = ","        # CSV field separator, one character (default "," or "\t" for .tsv)
# layout = "auto"        # "auto", "columns", "alpaca" (instruction/input/output/system fields),
#                        # "messages" (JSON/JSONL chats: messages = [{role, content}], or
#                        # ShareGPT conversations = [{from, value}]; the first user turn and the
#                        # assistant turn after it are kept, later turns are counted and dropped)
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
        write_stats(&stats, out)
    }
}

fn validate_config(cfg: &IngestConfig) -> Result<(), ConfigIssue> {
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

fn column_keys(cfg: &IngestConfig) -> [(&'static str, Option<&String>); 5] {
    [
        ("prompt", cfg.prompt.as_ref()),
        ("response", cfg.response.as_ref()),
        ("system", cfg.system.as_ref()),
        ("category", cfg.category.as_ref()),
        ("input", cfg.input.as_ref()),
    ]
}

fn delimiter_byte(d: &str) -> Result<u8, String> {
    match d.as_bytes() {
        [b] if b.is_ascii() && !matches!(b, b'"' | b'\n' | b'\r') => Ok(*b),
        _ => Err(format!(
            "must be one ASCII character other than a quote or newline \
             (\",\", \";\", \"\\t\", \"|\"), got {d:?}"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Prompt templates

/// A piece of a parsed `prompt_template`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

/// Parses `{column}` placeholders; `{{` and `}}` stand for literal braces.
fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let name = placeholder(&mut chars).ok_or_else(|| {
                    format!(
                        "has an empty or unclosed placeholder in {template:?}; \
                         write {{column}}, or {{{{ for a literal brace"
                    )
                })?;
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Field(name));
            }
            '}' => {
                return Err(format!(
                    "has a lone `}}` in {template:?}; write }}}} for a literal brace"
                ));
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// The name after a `{`, up to and consuming its `}`; `None` if empty or never closed.
fn placeholder(chars: &mut impl Iterator<Item = char>) -> Option<String> {
    let mut name = String::new();
    for c in chars {
        match c {
            '}' if !name.trim().is_empty() => return Some(name.trim().to_string()),
            '}' | '{' => return None,
            c => name.push(c),
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Mapping columns/fields to roles

/// A column or field the stage reads, and why (for messages).
#[derive(Debug, Clone)]
struct Need {
    name: String,
    /// Absent optional columns read as empty; absent required ones are an error.
    required: bool,
    /// `set by `prompt``, `the default for `prompt``, ...
    origin: String,
    /// The config key that would fix a wrong name.
    key: &'static str,
}

/// How a record becomes a prompt/response pair: indices into [`Mapping::needs`].
#[derive(Debug, Clone)]
struct Mapping {
    needs: Vec<Need>,
    prompt: usize,
    response: usize,
    system: Option<usize>,
    category: Option<usize>,
    input: Option<usize>,
    template: Option<Vec<TemplatePiece>>,
    template_text: Option<String>,
}

#[derive(Debug, Clone)]
enum TemplatePiece {
    Text(String),
    Field(usize),
}

impl Mapping {
    fn new(cfg: &IngestConfig, layout: Layout) -> Result<Self, String> {
        let alpaca = layout == Layout::Alpaca;
        let (prompt_default, response_default) = if alpaca {
            ("instruction", "output")
        } else {
            ("prompt", "response")
        };
        let mut needs = Vec::new();
        let prompt = role_need("prompt", cfg.prompt.as_ref(), prompt_default, layout, true);
        let prompt = push_need(&mut needs, prompt);
        let response = role_need(
            "response",
            cfg.response.as_ref(),
            response_default,
            layout,
            true,
        );
        let response = push_need(&mut needs, response);
        // Optional roles: alpaca's `system` and `input` fields may be absent from a record.
        let mut optional = |key: &'static str, explicit: Option<&String>, alpaca_name: &str| {
            let default = alpaca.then_some(alpaca_name);
            (explicit.is_some() || default.is_some()).then(|| {
                let need = role_need(key, explicit, default.unwrap_or(key), layout, false);
                push_need(&mut needs, need)
            })
        };
        let system = optional("system", cfg.system.as_ref(), "system");
        let input = optional("input", cfg.input.as_ref(), "input");
        let category = cfg.category.as_ref().map(|name| {
            push_need(
                &mut needs,
                role_need("category", Some(name), "", layout, true),
            )
        });

        let pieces = match (&cfg.prompt_template, input) {
            (Some(template), _) => Some(parse_template(template)?),
            (None, Some(input)) => Some(vec![
                Piece::Field(needs[prompt].name.clone()),
                Piece::Text("\n\n".into()),
                Piece::Field(needs[input].name.clone()),
            ]),
            (None, None) => None,
        };
        let template_text = pieces.as_ref().map(|p| template_source(p));
        let template = pieces.map(|pieces| {
            pieces
                .into_iter()
                .map(|piece| match piece {
                    Piece::Text(t) => TemplatePiece::Text(t),
                    Piece::Field(name) => TemplatePiece::Field(push_need(
                        &mut needs,
                        Need {
                            name,
                            required: true,
                            origin: "used in `prompt_template`".into(),
                            key: "prompt_template",
                        },
                    )),
                })
                .collect()
        });
        Ok(Self {
            needs,
            prompt,
            response,
            system,
            category,
            input,
            template,
            template_text,
        })
    }

    /// Role → column, for stats and the first info line.
    fn describe(&self) -> BTreeMap<String, String> {
        let mut roles = BTreeMap::new();
        let named = [
            ("prompt", Some(self.prompt)),
            ("response", Some(self.response)),
            ("system", self.system),
            ("category", self.category),
            ("input", self.input),
        ];
        for (role, index) in named {
            if let Some(i) = index {
                roles.insert(role.to_string(), self.needs[i].name.clone());
            }
        }
        if let Some(t) = &self.template_text {
            roles.insert("prompt_template".into(), t.clone());
        }
        roles
    }

    /// Builds a row from cells aligned with `needs` (`None` = absent). `Err(i)`: need `i` is
    /// required but absent.
    fn assemble(&self, cells: &[Option<String>], source_row: u64) -> Result<Candidate, usize> {
        let get = |i: usize| -> Result<String, usize> {
            match &cells[i] {
                Some(text) => Ok(clean_text(text)),
                None if self.needs[i].required => Err(i),
                None => Ok(String::new()),
            }
        };
        let input = self.input.map(get).transpose()?.unwrap_or_default();
        // With an input column the template applies only where there is input (as alpaca does);
        // a template without one applies to every row.
        let use_template = self.input.is_none() || !input.is_empty();
        let prompt = match (&self.template, use_template) {
            (Some(pieces), true) => render(pieces, &get)?,
            _ => get(self.prompt)?,
        };
        Ok(Candidate {
            source_row,
            prompt,
            response: get(self.response)?,
            system: self.system.map(get).transpose()?.unwrap_or_default(),
            category: self.category.map(get).transpose()?.unwrap_or_default(),
            truncated: false,
        })
    }
}

/// The column for a role: the configured name (required), else the layout's default, which is
/// required only if `default_required`.
fn role_need(
    key: &'static str,
    explicit: Option<&String>,
    default: &str,
    layout: Layout,
    default_required: bool,
) -> Need {
    let (name, origin, required) = match explicit {
        Some(name) => (name.trim().to_string(), format!("set by `{key}`"), true),
        None if layout == Layout::Alpaca => (
            default.to_string(),
            format!("the alpaca field for `{key}`"),
            default_required,
        ),
        None => (
            default.to_string(),
            format!("the default for `{key}`"),
            default_required,
        ),
    };
    Need {
        name,
        required,
        origin,
        key,
    }
}

/// Adds a need unless one of the same name exists; returns its index.
fn push_need(needs: &mut Vec<Need>, need: Need) -> usize {
    if let Some(i) = needs.iter().position(|n| n.name == need.name) {
        return i;
    }
    needs.push(need);
    needs.len() - 1
}

fn template_source(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Text(t) => t.replace('{', "{{").replace('}', "}}"),
            Piece::Field(f) => format!("{{{f}}}"),
        })
        .collect()
}

fn render(
    pieces: &[TemplatePiece],
    get: &dyn Fn(usize) -> Result<String, usize>,
) -> Result<String, usize> {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            TemplatePiece::Text(t) => out.push_str(t),
            TemplatePiece::Field(i) => out.push_str(&get(*i)?),
        }
    }
    Ok(out.trim().to_string())
}

/// Trims and turns CRLF into LF: Windows line endings inside fields are not training signal.
fn clean_text(text: &str) -> String {
    let trimmed = text.trim();
    if trimmed.contains('\r') {
        trimmed.replace("\r\n", "\n")
    } else {
        trimmed.to_string()
    }
}

/// Common alternative names, tried when the configured/default name is not close to any column.
fn aliases(key: &str) -> &'static [&'static str] {
    match key {
        "prompt" => &[
            "question",
            "instruction",
            "prompt",
            "query",
            "input",
            "text",
        ],
        "response" => &[
            "answer",
            "output",
            "response",
            "completion",
            "chosen",
            "target",
        ],
        "system" => &["system", "system_prompt"],
        "category" => &["category", "label", "type", "topic"],
        _ => &[],
    }
}

/// The best replacement for a missing `name`: the nearest by edit distance, else a known alias.
fn suggest<'a>(name: &str, key: &str, available: &'a [String]) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let nearest = available
        .iter()
        .map(|c| (strsim::levenshtein(&lower, &c.to_lowercase()), c))
        .min_by_key(|(d, _)| *d);
    if let Some((distance, column)) = nearest {
        if distance <= (name.chars().count() / 3).max(1) {
            return Some(column);
        }
    }
    aliases(key)
        .iter()
        .find_map(|alias| available.iter().find(|c| c.eq_ignore_ascii_case(alias)))
        .map(String::as_str)
}

/// `at`: the JSON record lacking the field; `None` for a CSV header lacking the column.
fn missing_column(
    file: &str,
    at: Option<Location>,
    need: &Need,
    available: &[String],
    layout: Layout,
) -> IngestError {
    let mut advice = match suggest(&need.name, need.key, available) {
        Some(s) if need.key == "prompt_template" => {
            format!("did you mean `{s}`? fix the placeholder in `prompt_template`")
        }
        Some(s) => format!(
            "did you mean `{s}`? set `{} = \"{s}\"` in [ingest]",
            need.key
        ),
        None => format!("set `{}` in [ingest] to one of them", need.key),
    };
    if layout == Layout::Alpaca && need.origin.starts_with("the alpaca") {
        advice.push_str(", or use layout = \"columns\"");
    }
    IngestError::MissingColumn(Box::new(MissingColumn {
        file: file.to_string(),
        at: at.map_or_else(String::new, |l| format!("{l}: ")),
        noun: if at.is_some() { "field" } else { "column" },
        name: need.name.clone(),
        origin: need.origin.clone(),
        holder: if at.is_some() { "record" } else { "header" },
        available: available.join(", "),
        advice,
    }))
}

// ---------------------------------------------------------------------------------------------
// Loading records

/// A record reduced to trimmed text, before cleaning.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    source_row: u64,
    prompt: String,
    response: String,
    /// Empty when absent.
    system: String,
    /// Empty when absent.
    category: String,
    /// A chat with turns after the first exchange.
    truncated: bool,
}

/// Everything read from the file, before cleaning.
struct Loaded {
    rows: Vec<Candidate>,
    layout: Layout,
    columns: BTreeMap<String, String>,
    has_category: bool,
}

fn resolve_format(cfg: &IngestConfig, file: &str) -> Result<Format, IngestError> {
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
fn resolve_delimiter(cfg: &IngestConfig) -> u8 {
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
fn choose_layout(cfg: &IngestConfig, names: &[String]) -> Layout {
    if cfg.layout != Layout::Auto {
        return cfg.layout;
    }
    let has = |n: &str| names.iter().any(|c| c == n);
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

fn load_csv(
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
    let mapping = Mapping::new(cfg, layout).map_err(|m| config_in_run("prompt_template", m))?;
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

fn load_json(
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
    let mapping = Mapping::new(cfg, layout).map_err(|m| config_in_run("prompt_template", m))?;
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

/// A config problem the engine's validation already refuses; kept as an error, not a panic.
fn config_in_run(key: &'static str, message: String) -> IngestError {
    IngestError::Config { key, message }
}

/// A chat role, with ShareGPT's names folded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    System,
    User,
    Assistant,
    Other,
}

fn role_of(name: &str) -> Role {
    match name.to_ascii_lowercase().as_str() {
        "system" => Role::System,
        "user" | "human" => Role::User,
        "assistant" | "gpt" | "model" | "bot" => Role::Assistant,
        _ => Role::Other,
    }
}

fn load_messages(
    cfg: &IngestConfig,
    records: &[JsonRecord],
    file: &str,
) -> Result<Loaded, IngestError> {
    let category = cfg
        .category
        .as_ref()
        .map(|name| role_need("category", Some(name), "", Layout::Messages, true));
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        let mut row = chat_exchange(record, file)?;
        if let Some(need) = &category {
            let value = tabular::text_field(record, &need.name, file)?.ok_or_else(|| {
                let available: Vec<String> = record.fields.keys().cloned().collect();
                missing_column(
                    file,
                    Some(record.location),
                    need,
                    &available,
                    Layout::Messages,
                )
            })?;
            row.category = clean_text(&value);
        }
        rows.push(row);
    }
    let mut columns = BTreeMap::new();
    columns.insert(
        "messages".to_string(),
        "first user turn → prompt, next assistant turn → response".to_string(),
    );
    if let Some(need) = &category {
        columns.insert("category".to_string(), need.name.clone());
    }
    Ok(Loaded {
        rows,
        layout: Layout::Messages,
        columns,
        has_category: category.is_some(),
    })
}

/// The first user turn, the assistant turn after it, and the system turns before it.
fn chat_exchange(record: &JsonRecord, file: &str) -> Result<Candidate, IngestError> {
    let bad = |message: String| IngestError::BadRecord {
        file: file.to_string(),
        location: record.location,
        message,
    };
    let turns = match record
        .fields
        .get("messages")
        .or_else(|| record.fields.get("conversations"))
    {
        Some(Value::Array(turns)) => turns,
        Some(other) => {
            return Err(bad(format!(
                "`messages` is {}, expected an array of {{\"role\", \"content\"}} objects",
                tabular::kind_name(other)
            )))
        }
        None => {
            return Err(bad(format!(
                "layout \"messages\" needs a `messages` (or `conversations`) array, but the \
                 record has: {}; set `layout` to \"alpaca\" or \"columns\" in [ingest]",
                record.field_names()
            )))
        }
    };
    let turns = turns
        .iter()
        .enumerate()
        .map(|(i, turn)| turn_parts(turn).map_err(|m| bad(format!("message {}: {m}", i + 1))))
        .collect::<Result<Vec<_>, _>>()?;
    let first_user = turns.iter().position(|(role, _)| *role == Role::User);
    let system: Vec<String> = turns[..first_user.unwrap_or(turns.len())]
        .iter()
        .filter(|(role, _)| *role == Role::System)
        .map(|(_, content)| clean_text(content))
        .filter(|s| !s.is_empty())
        .collect();
    let system_turns = turns[..first_user.unwrap_or(turns.len())]
        .iter()
        .filter(|(role, _)| *role == Role::System)
        .count();
    let prompt = first_user.map(|u| clean_text(&turns[u].1));
    // The answer must be the very next turn: a later assistant turn may answer something else.
    let response = first_user
        .and_then(|u| turns.get(u + 1))
        .filter(|(role, _)| *role == Role::Assistant)
        .map(|(_, content)| clean_text(content));
    let used = system_turns + usize::from(prompt.is_some()) + usize::from(response.is_some());
    Ok(Candidate {
        source_row: record.row,
        prompt: prompt.unwrap_or_default(),
        response: response.unwrap_or_default(),
        system: system.join("\n\n"),
        category: String::new(),
        truncated: turns.len() > used,
    })
}

/// `(role, content)` of one chat turn (`role`/`content`, or ShareGPT `from`/`value`).
fn turn_parts(turn: &Value) -> Result<(Role, String), String> {
    let Value::Object(fields) = turn else {
        return Err(format!(
            "is {}, expected an object with `role` and `content`",
            tabular::kind_name(turn)
        ));
    };
    let role = match fields.get("role").or_else(|| fields.get("from")) {
        Some(Value::String(r)) => role_of(r),
        Some(other) => {
            return Err(format!(
                "`role` is {}, expected text",
                tabular::kind_name(other)
            ))
        }
        None => return Err("has no `role` (or `from`)".into()),
    };
    let content = match fields.get("content").or_else(|| fields.get("value")) {
        Some(value) => tabular::value_text(value)
            .ok_or_else(|| format!("`content` is {}, expected text", tabular::kind_name(value)))?,
        None => return Err("has no `content` (or `value`)".into()),
    };
    Ok((role, content))
}

// ---------------------------------------------------------------------------------------------
// Cleaning, sampling and splitting

/// blake3 over system \0 prompt \0 response: the duplicate key and the source of the id.
fn content_hash(row: &Candidate) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(row.system.as_bytes());
    hasher.update(b"\0");
    hasher.update(row.prompt.as_bytes());
    hasher.update(b"\0");
    hasher.update(row.response.as_bytes());
    hasher.finalize()
}

/// Drops empty and duplicate rows (keeping the first occurrence), counting each reason.
fn clean(rows: Vec<Candidate>) -> (Vec<Example>, Drops) {
    let mut drops = Drops::default();
    let mut seen = HashSet::with_capacity(rows.len());
    let mut kept = Vec::with_capacity(rows.len());
    for row in rows {
        if row.prompt.is_empty() {
            drops.empty_prompt += 1;
            continue;
        }
        if row.response.is_empty() {
            drops.empty_response += 1;
            continue;
        }
        let hash = content_hash(&row);
        if !seen.insert(*hash.as_bytes()) {
            drops.duplicate += 1;
            continue;
        }
        kept.push(Example {
            id: hash.to_hex()[..16].to_string(),
            prompt: row.prompt,
            response: row.response,
            system: non_empty(row.system),
            category: non_empty(row.category),
            source_row: row.source_row,
        });
    }
    (kept, drops)
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A seeded rank for a row: ordering by it is a shuffle that depends only on the seed and the
/// row's content, so it is stable across platforms and library versions, and adding rows to
/// the file does not reshuffle the ones already there.
fn rank_key(seed: u64, purpose: &[u8], example: &Example) -> ([u8; 32], u64) {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(purpose);
    hasher.update(example.id.as_bytes());
    (*hasher.finalize().as_bytes(), example.source_row)
}

/// Keeps a seeded sample of `max` rows, in file order.
fn sample(rows: Vec<Example>, max: usize, seed: u64) -> Vec<Example> {
    if rows.len() <= max {
        return rows;
    }
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_cached_key(|&i| rank_key(seed, b"sample", &rows[i]));
    let mut keep = vec![false; rows.len()];
    for &i in &order[..max] {
        keep[i] = true;
    }
    rows.into_iter()
        .zip(keep)
        .filter_map(|(row, k)| k.then_some(row))
        .collect()
}

/// How many rows of each group go to val: `fraction` of the total overall (largest-remainder
/// apportionment), and at least one row of every group of two or more, which also keeps at
/// least one in train. Single-row groups go to train unless val would otherwise stay short.
fn val_quotas(sizes: &[usize], fraction: f64) -> Vec<usize> {
    let total: usize = sizes.iter().sum();
    if total < 2 {
        return vec![0; sizes.len()];
    }
    let target = ((total as f64 * fraction).round() as usize).clamp(1, total - 1);
    let exact: Vec<f64> = sizes.iter().map(|&n| n as f64 * fraction).collect();
    let mut quotas: Vec<usize> = sizes
        .iter()
        .zip(&exact)
        .map(|(&n, &e)| {
            if n >= 2 {
                (e.floor() as usize).clamp(1, n - 1)
            } else {
                0
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    let lo = |n: usize| usize::from(n >= 2);
    let mut assigned: usize = quotas.iter().sum();
    // The one-row minimums can overshoot the target: give rows back from the groups whose
    // share was rounded least, never below their minimum.
    while assigned > target {
        let mut progressed = false;
        for &i in order.iter().rev() {
            if assigned > target && quotas[i] > lo(sizes[i]) {
                quotas[i] -= 1;
                assigned -= 1;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    // Then top up by largest remainder; single-row groups only if nothing else has room.
    for singletons_too in [false, true] {
        let room = |i: usize, q: usize| match sizes[i] {
            n if n >= 2 => q < n - 1,
            1 => singletons_too && q == 0,
            _ => false,
        };
        while assigned < target {
            let mut progressed = false;
            for &i in &order {
                if assigned < target && room(i, quotas[i]) {
                    quotas[i] += 1;
                    assigned += 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
    }
    quotas
}

/// Marks which rows go to val: seeded, stratified by category when `stratify`.
fn split(rows: &[Example], fraction: f64, stratify: bool, seed: u64) -> Vec<bool> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        let key = if stratify {
            row.category.as_deref().unwrap_or("")
        } else {
            ""
        };
        groups.entry(key).or_default().push(i);
    }
    let sizes: Vec<usize> = groups.values().map(Vec::len).collect();
    let quotas = val_quotas(&sizes, fraction);
    let mut is_val = vec![false; rows.len()];
    for (mut members, quota) in groups.into_values().zip(quotas) {
        members.sort_by_cached_key(|&i| rank_key(seed, b"split", &rows[i]));
        for &i in &members[..quota] {
            is_val[i] = true;
        }
    }
    is_val
}

// ---------------------------------------------------------------------------------------------
// Statistics and output

fn percentiles(mut lengths: Vec<usize>) -> Percentiles {
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

fn category_counts(rows: &[Example], is_val: &[bool]) -> BTreeMap<String, SplitCounts> {
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

/// Reads `train.jsonl` or `val.jsonl` of a committed ingest artifact (for downstream stages).
pub fn read_examples(path: &Path) -> Result<Vec<Example>, IngestError> {
    let file = File::open(path).map_err(|source| IngestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut examples = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let bad = |message: String| IngestError::BadExample {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let line = line.map_err(|e| bad(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        examples.push(
            serde_json::from_str(&line)
                .map_err(|e| bad(format!("{e}; re-run `pipe run --from ingest`")))?,
        );
    }
    Ok(examples)
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
            "ingest: {truncated} chats have turns after the first user/assistant exchange; \
             kept only that exchange of each"
        ));
    }

    let (kept, dropped) = clean(loaded.rows);
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
        truncated_conversations: truncated,
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

/// `pipe show ingest`: counts, drops, categories and lengths from `stats.json`.
fn write_stats(s: &IngestStats, out: &mut dyn Write) -> std::io::Result<()> {
    let delimiter = s
        .delimiter
        .as_deref()
        .map_or_else(String::new, |d| format!(", delimiter {d:?}"));
    writeln!(
        out,
        "source      {} ({}, {}, layout {}{delimiter})",
        s.file, s.format, s.encoding, s.layout
    )?;
    writeln!(out, "columns")?;
    for (role, column) in &s.columns {
        writeln!(out, "  {role:<15} {column:?}")?;
    }
    writeln!(out, "rows        {:>8} read", s.rows_read)?;
    writeln!(out, "            {:>8} dropped", s.dropped.total())?;
    for (n, why) in [
        (s.dropped.empty_prompt, "empty prompt"),
        (s.dropped.empty_response, "empty response"),
        (s.dropped.duplicate, "duplicate"),
    ] {
        if n > 0 {
            writeln!(out, "              {n:>8} {why}")?;
        }
    }
    if s.sampled_out > 0 {
        writeln!(out, "            {:>8} left out by max_rows", s.sampled_out)?;
    }
    if s.truncated_conversations > 0 {
        writeln!(
            out,
            "            {:>8} chats cut to their first exchange",
            s.truncated_conversations
        )?;
    }
    let share = if s.rows_out > 0 {
        100.0 * s.val as f64 / s.rows_out as f64
    } else {
        0.0
    };
    writeln!(
        out,
        "            {:>8} written: {} train, {} val ({share:.1}% val, seed {})",
        s.rows_out, s.train, s.val, s.seed
    )?;
    if !s.categories.is_empty() {
        let width = s
            .categories
            .keys()
            .map(|k| k.chars().count())
            .max()
            .unwrap_or(0)
            .max(8);
        let how = if s.stratified {
            "stratified"
        } else {
            "not stratified"
        };
        writeln!(out, "categories ({how})")?;
        writeln!(out, "  {:<width$} {:>8} {:>8}", "category", "train", "val")?;
        for (name, c) in &s.categories {
            writeln!(out, "  {name:<width$} {:>8} {:>8}", c.train, c.val)?;
        }
    }
    writeln!(out, "lengths (characters)")?;
    writeln!(
        out,
        "  {:<10} {:>8} {:>8} {:>8} {:>8}",
        "", "p50", "p90", "p99", "max"
    )?;
    for (name, p) in &s.lengths {
        writeln!(
            out,
            "  {name:<10} {:>8} {:>8} {:>8} {:>8}",
            p.p50, p.p90, p.p99, p.max
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::pick_table;
    use crate::progress::{Bar, NullProgress, Progress};
    use std::sync::Mutex;

    /// Progress that keeps the info lines, to check that drops are reported.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Progress for Recorder {
        fn bar(&self, total: Option<u64>, unit: &str) -> Box<dyn Bar> {
            NullProgress.bar(total, unit)
        }
        fn info(&self, msg: &str) {
            self.0.lock().unwrap().push(msg.to_string());
        }
        fn debug(&self, _msg: &str) {}
    }

    struct Outputs {
        out: tempfile::TempDir,
        train: Vec<Example>,
        val: Vec<Example>,
        stats: IngestStats,
        metrics: serde_json::Map<String, Value>,
        lines: Vec<String>,
    }

    impl Outputs {
        fn all(&self) -> Vec<Example> {
            let mut all: Vec<Example> = self.train.iter().chain(&self.val).cloned().collect();
            all.sort_by_key(|e| e.source_row);
            all
        }
    }

    fn config(toml: &str) -> IngestConfig {
        let cfg: IngestConfig = pick_table(toml, "ingest").unwrap();
        validate_config(&cfg).unwrap();
        cfg
    }

    fn issue(toml: &str) -> ConfigIssue {
        let cfg: IngestConfig = pick_table(toml, "ingest").unwrap();
        validate_config(&cfg).unwrap_err()
    }

    /// Runs the stage with `workspace` as the workspace root and a fresh output directory.
    fn run_at(workspace: &Path, toml: &str, seed: u64) -> Result<Outputs, String> {
        let cfg = config(toml);
        let out = tempfile::tempdir().unwrap();
        let recorder = Recorder::default();
        let mut cx = StageContext::new(
            workspace.to_path_buf(),
            out.path().to_path_buf(),
            out.path().join("partial"),
            BTreeMap::new(),
            seed,
            &recorder,
        );
        Ingest::run(&cfg, &mut cx).map_err(|e| e.to_string())?;
        let metrics = cx.metrics().clone();
        let stats =
            serde_json::from_str(&std::fs::read_to_string(out.path().join(STATS_FILE)).unwrap())
                .unwrap();
        Ok(Outputs {
            train: read_examples(&out.path().join(TRAIN_FILE)).unwrap(),
            val: read_examples(&out.path().join(VAL_FILE)).unwrap(),
            stats,
            metrics,
            lines: recorder.0.into_inner().unwrap(),
            out,
        })
    }

    /// Writes `files` into a temporary workspace and runs the stage there.
    fn run_with(toml: &str, files: &[(&str, &[u8])], seed: u64) -> Result<Outputs, String> {
        let ws = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            std::fs::write(ws.path().join(name), bytes).unwrap();
        }
        run_at(ws.path(), toml, seed)
    }

    fn run_err(toml: &str, files: &[(&str, &[u8])]) -> String {
        match run_with(toml, files, 1) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    const QA: &str = "[ingest]\npath = \"qa.csv\"\nprompt = \"question\"\nresponse = \"answer\"\ncategory = \"category\"\n";

    /// `n` distinct rows spread over categories of the given sizes.
    fn categorised_csv(sizes: &[(&str, usize)]) -> String {
        let mut text = String::from("question,answer,category\n");
        for (category, n) in sizes {
            for i in 0..*n {
                text.push_str(&format!(
                    "what is {category} {i}?,it is {category} number {i},{category}\n"
                ));
            }
        }
        text
    }

    #[test]
    fn csv_happy_path_keeps_quoted_commas_and_newlines() {
        let csv = "question,answer,category\n\
                   \"What does ls, the tool, do?\",\"Lists files.\nOne per line.\",cmd\n\
                   What is cat?,Concatenates files.,cmd\n\
                   What is /etc/passwd?,\"The \"\"user\"\" database.\",file\n\
                   What is tty?,A terminal.,file\n";
        let o = run_with(QA, &[("qa.csv", csv.as_bytes())], 7).unwrap();
        let all = o.all();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].prompt, "What does ls, the tool, do?");
        assert_eq!(all[0].response, "Lists files.\nOne per line.");
        assert_eq!(all[0].category.as_deref(), Some("cmd"));
        assert_eq!(all[0].system, None);
        assert_eq!(all[2].response, "The \"user\" database.");
        assert_eq!(
            all.iter().map(|e| e.source_row).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert!(all
            .iter()
            .all(|e| e.id.len() == 16 && e.id.chars().all(|c| c.is_ascii_hexdigit())));
        // Two categories of two rows: each has one row in each split.
        assert_eq!((o.train.len(), o.val.len()), (2, 2));
        assert_eq!(o.stats.categories["cmd"], SplitCounts { train: 1, val: 1 });
        assert_eq!(o.stats.encoding, "utf-8");
        assert_eq!(o.stats.format, "csv");
        assert_eq!(o.stats.layout, "columns");
        assert_eq!(o.metrics["rows_in"], 4);
        assert_eq!(o.metrics["dropped"], 0);
    }

    #[test]
    fn csv_numbers_stay_text_and_blank_lines_keep_row_numbers() {
        let csv =
            "question,answer,category\r\n\r\n007,1e3,0.50\r\n\r\n\"1,000\",\"-0\r\n+42\",NaN\r\n";
        let o = run_with(QA, &[("qa.csv", csv.as_bytes())], 1).unwrap();
        let all = o.all();
        let got: Vec<(&str, &str, Option<&str>, u64)> = all
            .iter()
            .map(|e| {
                let category = e.category.as_deref();
                (
                    e.prompt.as_str(),
                    e.response.as_str(),
                    category,
                    e.source_row,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("007", "1e3", Some("0.50"), 1),
                ("1,000", "-0\n+42", Some("NaN"), 2)
            ]
        );
    }

    #[test]
    fn output_rows_have_the_documented_shape() {
        let csv = "question,answer,category\nq1,a1,c\nq2,a2,c\nq3,a3,\n";
        let o = run_with(QA, &[("qa.csv", csv.as_bytes())], 1).unwrap();
        let text = std::fs::read_to_string(o.out.path().join(TRAIN_FILE)).unwrap()
            + &std::fs::read_to_string(o.out.path().join(VAL_FILE)).unwrap();
        let q1 = text.lines().find(|l| l.contains("\"q1\"")).unwrap();
        let id = &blake3::hash(b"\0q1\0a1").to_hex()[..16];
        assert_eq!(
            q1,
            format!(
                r#"{{"id":"{id}","prompt":"q1","response":"a1","category":"c","source_row":1}}"#
            )
        );
        let q3 = text.lines().find(|l| l.contains("\"q3\"")).unwrap();
        assert!(
            !q3.contains("category"),
            "an empty category is omitted: {q3}"
        );
    }

    #[test]
    fn utf8_bom_is_stripped_before_the_header() {
        let csv = "\u{feff}question,answer,category\nq1,a1,x\nq2,a2,x\n";
        let o = run_with(QA, &[("qa.csv", csv.as_bytes())], 1).unwrap();
        assert_eq!(o.stats.encoding, "utf-8 (bom)");
        assert_eq!(o.all()[0].prompt, "q1");
    }

    #[test]
    fn cp949_korean_csv_is_detected_and_decoded_exactly() {
        let text = "question,answer,category\n\
                    리눅스에서 파일 목록은?,ls 명령을 씁니다.,명령\n\
                    \"쉼표, 그리고 똠방각하\",뷁 햏 똠 확장 완성형,명령\n";
        let (bytes, _, unmappable) = encoding_rs::EUC_KR.encode(text);
        assert!(!unmappable);
        assert!(
            std::str::from_utf8(&bytes).is_err(),
            "the test file must not be UTF-8"
        );
        let o = run_with(QA, &[("qa.csv", &bytes)], 1).unwrap();
        assert_eq!(o.stats.encoding, "cp949");
        let all = o.all();
        assert_eq!(all[0].prompt, "리눅스에서 파일 목록은?");
        assert_eq!(all[0].response, "ls 명령을 씁니다.");
        assert_eq!(all[1].prompt, "쉼표, 그리고 똠방각하");
        assert_eq!(all[1].response, "뷁 햏 똠 확장 완성형");
        assert_eq!(all[1].category.as_deref(), Some("명령"));
    }

    const ALPACA_JSON: &str = r#"[
        {"instruction": "Name the command that lists files.", "input": "", "output": "ls"},
        {"instruction": "Translate to French.", "input": "cat", "output": "chat", "system": "You translate."},
        {"instruction": "Sum the numbers.", "input": "1 2", "output": 3}
    ]"#;

    #[test]
    fn alpaca_json_joins_the_input_only_where_there_is_one() {
        let toml = "[ingest]\npath = \"a.json\"\n";
        let o = run_with(toml, &[("a.json", ALPACA_JSON.as_bytes())], 1).unwrap();
        assert_eq!(o.stats.layout, "alpaca");
        assert_eq!(o.stats.format, "json");
        let all = o.all();
        assert_eq!(all[0].prompt, "Name the command that lists files.");
        assert_eq!(all[1].prompt, "Translate to French.\n\ncat");
        assert_eq!(all[1].system.as_deref(), Some("You translate."));
        assert_eq!(all[2].response, "3", "numbers are taken as their JSON text");
        assert_eq!(all[2].source_row, 3);
        assert_eq!(
            o.stats.columns["prompt_template"],
            "{instruction}\n\n{input}"
        );
    }

    #[test]
    fn alpaca_jsonl_without_input_fields() {
        let jsonl = "{\"instruction\": \"a\", \"output\": \"b\"}\n\n{\"instruction\": \"c\", \"output\": \"d\", \"input\": \"e\"}\n";
        let o = run_with(
            "[ingest]\npath = \"a.jsonl\"\n",
            &[("a.jsonl", jsonl.as_bytes())],
            1,
        )
        .unwrap();
        let all = o.all();
        assert_eq!(all[0].prompt, "a");
        assert_eq!(all[1].prompt, "c\n\ne");
        // JSONL rows are numbered by line; the blank line 2 is skipped.
        assert_eq!(all[1].source_row, 3);
    }

    #[test]
    fn messages_jsonl_keeps_the_first_exchange_and_counts_the_rest() {
        let jsonl = [
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}], "topic": "greet"}"#,
            r#"{"messages": [{"role": "user", "content": "One?"}, {"role": "assistant", "content": "1"}, {"role": "user", "content": "Two?"}, {"role": "assistant", "content": "2"}], "topic": "count"}"#,
            r#"{"conversations": [{"from": "human", "value": "ShareGPT?"}, {"from": "gpt", "value": "Yes."}], "topic": "greet"}"#,
            r#"{"messages": [{"role": "user", "content": "Unanswered?"}], "topic": "count"}"#,
        ]
        .join("\n");
        let toml = "[ingest]\npath = \"c.jsonl\"\ncategory = \"topic\"\n";
        let o = run_with(toml, &[("c.jsonl", jsonl.as_bytes())], 1).unwrap();
        assert_eq!(o.stats.layout, "messages");
        let all = o.all();
        assert_eq!(all.len(), 3);
        assert_eq!(
            (all[0].prompt.as_str(), all[0].response.as_str()),
            ("Hi?", "Hello.")
        );
        assert_eq!(all[0].system.as_deref(), Some("Be brief."));
        assert_eq!(
            (all[1].prompt.as_str(), all[1].response.as_str()),
            ("One?", "1")
        );
        assert_eq!(
            (all[2].prompt.as_str(), all[2].response.as_str()),
            ("ShareGPT?", "Yes.")
        );
        assert_eq!(all[2].category.as_deref(), Some("greet"));
        assert_eq!(o.stats.truncated_conversations, 1);
        assert_eq!(o.stats.dropped.empty_response, 1);
        assert!(
            o.lines
                .iter()
                .any(|l| l.contains("1 chats have turns after the first")),
            "{:?}",
            o.lines
        );
    }

    #[test]
    fn input_column_is_joined_by_the_template() {
        let csv = "instruction,context,answer\nSummarise.,Some text.,Short.\nSay hi.,,Hi.\n";
        let toml = "[ingest]\npath = \"t.csv\"\nprompt = \"instruction\"\nresponse = \"answer\"\n\
                    input = \"context\"\nprompt_template = \"{instruction}\\nContext: {context}\"\n";
        let o = run_with(toml, &[("t.csv", csv.as_bytes())], 1).unwrap();
        let all = o.all();
        assert_eq!(all[0].prompt, "Summarise.\nContext: Some text.");
        assert_eq!(
            all[1].prompt, "Say hi.",
            "an empty input collapses to the prompt alone"
        );
    }

    #[test]
    fn a_template_without_input_applies_to_every_row() {
        let csv = "q,topic,a\nWhat?,unix,That.\n2?,x,y\n";
        let toml = "[ingest]\npath = \"t.csv\"\nprompt = \"q\"\nresponse = \"a\"\nprompt_template = \"[{topic}] {q} {{braces}}\"\n";
        let o = run_with(toml, &[("t.csv", csv.as_bytes())], 1).unwrap();
        assert_eq!(o.all()[0].prompt, "[unix] What? {braces}");
    }

    #[test]
    fn text_is_trimmed_and_crlf_becomes_lf() {
        let csv = "question,answer,category\r\n  padded  ,\"two\r\nlines \",\t c \r\nq,a,c\r\n";
        let o = run_with(QA, &[("qa.csv", csv.as_bytes())], 1).unwrap();
        let all = o.all();
        assert_eq!(all[0].prompt, "padded");
        assert_eq!(all[0].response, "two\nlines");
        assert_eq!(all[0].category.as_deref(), Some("c"));
    }

    #[test]
    fn drops_are_counted_by_reason_and_reported() {
        let csv = "question,answer,category\n\
                   q1,a1,c\n\
                   ,no prompt,c\n\
                   q2,   ,c\n\
                   q1 ,a1,c\n\
                   q3,a3,c\n";
        let o = run_with(QA, &[("qa.csv", csv.as_bytes())], 1).unwrap();
        assert_eq!(
            o.stats.dropped,
            Drops {
                empty_prompt: 1,
                empty_response: 1,
                duplicate: 1
            }
        );
        assert_eq!((o.stats.rows_read, o.stats.rows_out), (5, 2));
        assert_eq!(o.metrics["dropped"], 3);
        assert_eq!(
            o.all().iter().map(|e| e.source_row).collect::<Vec<_>>(),
            vec![1, 5]
        );
        let line = o.lines.iter().find(|l| l.contains("dropped")).unwrap();
        assert_eq!(
            line,
            "ingest: dropped 3 of 5 rows: 1 with an empty prompt, 1 with an empty response, 1 duplicate"
        );
    }

    #[test]
    fn different_system_prompts_are_not_duplicates() {
        let csv = "s,q,a\nbe terse,q,a\nbe kind,q,a\nbe kind,q,a\n";
        let toml = "[ingest]\npath = \"t.csv\"\nprompt = \"q\"\nresponse = \"a\"\nsystem = \"s\"\n";
        let o = run_with(toml, &[("t.csv", csv.as_bytes())], 1).unwrap();
        assert_eq!(o.stats.rows_out, 2);
        assert_eq!(o.stats.dropped.duplicate, 1);
        assert_ne!(o.all()[0].id, o.all()[1].id);
    }

    #[test]
    fn stratified_split_properties() {
        let sizes = [
            ("a", 2),
            ("b", 3),
            ("c", 10),
            ("d", 50),
            ("e", 135),
            ("solo", 1),
        ];
        let csv = categorised_csv(&sizes);
        let files = [("qa.csv", csv.as_bytes())];
        let o = run_with(QA, &files, 42).unwrap();
        for (category, n) in sizes.iter().filter(|(_, n)| *n >= 2) {
            let c = o.stats.categories[*category];
            assert!(c.train >= 1 && c.val >= 1, "{category}: {c:?}");
            assert_eq!(c.train + c.val, *n);
        }
        assert_eq!(o.stats.categories["solo"], SplitCounts { train: 1, val: 0 });
        // 201 rows at 0.2: 40 val, exactly, by largest-remainder apportionment.
        assert_eq!((o.train.len(), o.val.len()), (161, 40));
        let ids = |v: &[Example]| v.iter().map(|e| e.id.clone()).collect::<HashSet<_>>();
        assert!(ids(&o.train).is_disjoint(&ids(&o.val)));

        let again = run_with(QA, &files, 42).unwrap();
        assert_eq!(ids(&again.val), ids(&o.val), "same seed, same split");
        let other = run_with(QA, &files, 43).unwrap();
        assert_ne!(ids(&other.val), ids(&o.val), "another seed, another split");
        assert_eq!(other.val.len(), 40);
    }

    #[test]
    fn unstratified_split_ignores_categories() {
        let csv = categorised_csv(&[("a", 30), ("b", 70)]);
        let toml = format!("{QA}stratify = false\nval_fraction = 0.3\n");
        let o = run_with(&toml, &[("qa.csv", csv.as_bytes())], 1).unwrap();
        assert!(!o.stats.stratified);
        assert_eq!(o.val.len(), 30);
        assert_eq!(
            o.stats.categories.values().map(|c| c.val).sum::<usize>(),
            30
        );
    }

    #[test]
    fn val_quotas_hit_the_fraction_and_cover_every_group() {
        assert_eq!(val_quotas(&[100], 0.2), vec![20]);
        assert_eq!(val_quotas(&[3, 7], 0.3), vec![1, 2]);
        // Every group of two or more needs a val row, even past the target.
        assert_eq!(val_quotas(&[2, 2, 2, 2, 2], 0.2), vec![1; 5]);
        // Minimums that overshoot are paid back by the larger groups.
        assert_eq!(
            val_quotas(&[2, 3, 10, 50, 135, 1], 0.2),
            vec![1, 1, 2, 10, 26, 0]
        );
        // Only singletons: val still gets its share.
        assert_eq!(val_quotas(&[1, 1, 1, 1], 0.5).iter().sum::<usize>(), 2);
        // A val share that would empty train is capped.
        assert_eq!(val_quotas(&[5], 0.99), vec![4]);
        assert_eq!(val_quotas(&[2], 0.01), vec![1]);
    }

    #[test]
    fn max_rows_takes_a_seeded_sample_after_cleaning() {
        let csv = categorised_csv(&[("a", 20), ("b", 20)]) + "what is a 0?,it is a number 0,a\n";
        let toml = format!("{QA}max_rows = 10\n");
        let files = [("qa.csv", csv.as_bytes())];
        let o = run_with(&toml, &files, 5).unwrap();
        assert_eq!(o.stats.rows_out, 10);
        assert_eq!(o.stats.dropped.duplicate, 1);
        assert_eq!(o.stats.sampled_out, 30);
        assert_eq!((o.train.len(), o.val.len()), (8, 2));
        let rows = |o: &Outputs| o.all().iter().map(|e| e.source_row).collect::<Vec<_>>();
        assert_eq!(rows(&run_with(&toml, &files, 5).unwrap()), rows(&o));
        assert_ne!(rows(&run_with(&toml, &files, 6).unwrap()), rows(&o));
    }

    #[test]
    fn tsv_and_custom_delimiters() {
        let tsv = "question\tanswer\tcategory\nq, with comma\ta\tc\nq2\ta2\tc\n";
        let toml = "[ingest]\npath = \"t.tsv\"\nprompt = \"question\"\nresponse = \"answer\"\n";
        let o = run_with(toml, &[("t.tsv", tsv.as_bytes())], 1).unwrap();
        assert_eq!(o.stats.delimiter.as_deref(), Some("\t"));
        assert_eq!(o.all()[0].prompt, "q, with comma");

        let csv = "question;answer\nq1;a1\nq2;a2\n";
        let toml = "[ingest]\npath = \"t.csv\"\nprompt = \"question\"\nresponse = \"answer\"\ndelimiter = \";\"\n";
        let o = run_with(toml, &[("t.csv", csv.as_bytes())], 1).unwrap();
        assert_eq!(o.stats.rows_out, 2);
    }

    #[test]
    fn demo_csv_ingests_without_drops() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let toml = "[ingest]\npath = \"data/unix_manual_qa.csv\"\nprompt = \"question\"\nresponse = \"answer\"\ncategory = \"category\"\n";
        let o = run_at(&workspace, toml, 0).unwrap();
        assert_eq!(o.stats.rows_read, 664);
        assert_eq!(o.stats.dropped.total(), 0);
        assert_eq!((o.train.len(), o.val.len()), (531, 133));
        assert_eq!(o.stats.categories.len(), 5);
        assert!(o
            .stats
            .categories
            .values()
            .all(|c| c.train > 0 && c.val > 0));
        assert!(o.stats.lengths["prompt"].max <= 60);
    }

    #[test]
    fn starter_parses_validates_and_runs_on_the_demo_data() {
        let cfg = config(Ingest::STARTER);
        assert_eq!(cfg.val_fraction, 0.2);
        assert!(cfg.stratify);
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let o = run_at(&workspace, Ingest::STARTER, 3).unwrap();
        assert_eq!(o.stats.rows_out, 664);
        assert!(crate::registry().iter().any(|s| s.name() == "ingest"));
    }

    #[test]
    fn show_prints_counts_drops_categories_and_lengths() {
        let csv = "question,answer,category\nq1,a1,x\nq2,a2,x\n,a,x\nq3,a3,y\nq4,a4,y\n";
        let o = run_with(QA, &[("qa.csv", csv.as_bytes())], 1).unwrap();
        let mut shown = Vec::new();
        Ingest::show(o.out.path(), &mut shown).unwrap();
        let shown = String::from_utf8(shown).unwrap();
        for part in [
            "source      qa.csv (csv, utf-8, layout columns, delimiter \",\")",
            "5 read",
            "1 empty prompt",
            "4 written: 2 train, 2 val",
            "categories (stratified)",
            "x",
            "lengths (characters)",
            "response",
        ] {
            assert!(shown.contains(part), "missing {part:?} in:\n{shown}");
        }
    }

    // --- bad input: every one a clear error -----------------------------------------------

    #[test]
    fn error_missing_file() {
        let err = run_err(QA, &[]);
        assert!(err.starts_with("cannot find qa.csv (looked for /"), "{err}");
        assert!(
            err.ends_with(
                "qa.csv); check the path, which is relative to the directory holding pipeline.toml"
            ),
            "{err}"
        );
    }

    #[test]
    fn error_empty_file() {
        let err = run_err(QA, &[("qa.csv", b"")]);
        assert_eq!(
            err,
            "qa.csv is empty; it needs a header line and at least one data row"
        );
        let err = run_err("[ingest]\npath = \"a.jsonl\"\n", &[("a.jsonl", b"\n\n")]);
        assert_eq!(err, "a.jsonl is empty; it needs one JSON object per line");
    }

    #[test]
    fn error_header_only() {
        let err = run_err(QA, &[("qa.csv", b"question,answer,category\n")]);
        assert_eq!(err, "qa.csv has a header (question, answer, category) but no data rows; add rows below the header line");
    }

    #[test]
    fn error_missing_column_lists_columns_and_suggests_the_nearest() {
        let toml = "[ingest]\npath = \"qa.csv\"\nprompt = \"questoin\"\nresponse = \"answer\"\n";
        let err = run_err(toml, &[("qa.csv", b"question,answer,category\nq,a,c\n")]);
        assert_eq!(
            err,
            "qa.csv: no column `questoin` (set by `prompt`); the header has: question, answer, category; \
             did you mean `question`? set `prompt = \"question\"` in [ingest]"
        );
    }

    #[test]
    fn error_missing_default_column_suggests_a_known_alias() {
        let err = run_err(
            "[ingest]\npath = \"qa.csv\"\n",
            &[("qa.csv", b"question,answer,category\nq,a,c\n")],
        );
        assert_eq!(
            err,
            "qa.csv: no column `prompt` (the default for `prompt`); the header has: question, answer, category; \
             did you mean `question`? set `prompt = \"question\"` in [ingest]"
        );
        let toml = "[ingest]\npath = \"qa.csv\"\nprompt = \"question\"\nresponse = \"answer\"\ncategory = \"kind\"\n";
        let err = run_err(toml, &[("qa.csv", b"question,answer,type\nq,a,c\n")]);
        assert!(
            err.ends_with("did you mean `type`? set `category = \"type\"` in [ingest]"),
            "{err}"
        );
    }

    #[test]
    fn error_template_placeholder_not_a_column() {
        let toml = "[ingest]\npath = \"qa.csv\"\nprompt = \"question\"\nresponse = \"answer\"\nprompt_template = \"{question} {categroy}\"\n";
        let err = run_err(toml, &[("qa.csv", b"question,answer,category\nq,a,c\n")]);
        assert_eq!(
            err,
            "qa.csv: no column `categroy` (used in `prompt_template`); the header has: question, answer, category; \
             did you mean `category`? fix the placeholder in `prompt_template`"
        );
    }

    #[test]
    fn error_duplicate_mapped_column() {
        let err = run_err(QA, &[("qa.csv", b"question,answer,question\nq,a,c\n")]);
        assert_eq!(err, "qa.csv: column `question` (set by `prompt`) appears 2 times in the header; rename the duplicates so the mapping is unambiguous");
    }

    #[test]
    fn error_undecodable_bytes() {
        let err = run_err(
            QA,
            &[(
                "qa.csv",
                b"question,answer,category\nq,a,c\nq2,\xff\xfe,c\n",
            )],
        );
        assert_eq!(
            err,
            "qa.csv: line 3 (byte 35) cannot be decoded as utf-8 (fails at line 3 (byte 35)) or cp949/euc-kr; \
             re-save the file as UTF-8, or set `encoding` to the file's real encoding"
        );
        let (korean, _, _) = encoding_rs::EUC_KR.encode("question,answer\n질문,답\n");
        let toml = "[ingest]\npath = \"qa.csv\"\nencoding = \"utf-8\"\nprompt = \"question\"\nresponse = \"answer\"\n";
        let err = run_err(toml, &[("qa.csv", &korean)]);
        assert!(err.starts_with("qa.csv: line 2 (byte 17) cannot be decoded as utf-8; re-save the file as UTF-8, or set `encoding`"), "{err}");
    }

    #[test]
    fn error_ragged_csv_row() {
        let err = run_err(
            QA,
            &[("qa.csv", b"question,answer,category\nq,a,c\nq2,a, b,c\n")],
        );
        assert_eq!(
            err,
            "qa.csv: line 3 (row 2) has 4 fields but the header has 3; quote fields that contain the delimiter `,` (\"a, b\"), or set the right delimiter"
        );
    }

    #[test]
    fn error_malformed_json_and_jsonl() {
        let toml = "[ingest]\npath = \"a.json\"\n";
        let err = run_err(toml, &[("a.json", b"[\n {\"instruction\": \"a\", \"output\": \"b\"},\n {\"instruction\": \"c\" \"output\": \"d\"}\n]")]);
        assert!(err.starts_with("a.json: line 3, column 22: invalid JSON: expected `,` or `}`; fix the syntax there"), "{err}");
        let toml = "[ingest]\npath = \"a.jsonl\"\n";
        let err = run_err(toml, &[("a.jsonl", b"{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\", \"output\": }\n")]);
        assert!(
            err.starts_with(
                "a.jsonl: line 2, column 32: invalid JSON: expected value; fix the syntax there"
            ),
            "{err}"
        );
    }

    #[test]
    fn error_alpaca_without_output() {
        let toml = "[ingest]\npath = \"a.jsonl\"\nlayout = \"alpaca\"\n";
        let jsonl = b"{\"instruction\": \"a\", \"input\": \"\", \"answer\": \"b\"}\n";
        let err = run_err(toml, &[("a.jsonl", jsonl)]);
        assert_eq!(
            err,
            "a.jsonl: line 1: no field `output` (the alpaca field for `response`); the record has: answer, input, instruction; \
             did you mean `answer`? set `response = \"answer\"` in [ingest], or use layout = \"columns\""
        );
    }

    #[test]
    fn error_field_missing_in_a_later_record() {
        let jsonl = b"{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\"}\n";
        let err = run_err("[ingest]\npath = \"a.jsonl\"\n", &[("a.jsonl", jsonl)]);
        assert!(err.starts_with("a.jsonl: line 2: no field `output` (the alpaca field for `response`); the record has: instruction;"), "{err}");
    }

    #[test]
    fn error_messages_layout_mismatch() {
        let toml = "[ingest]\npath = \"a.jsonl\"\nlayout = \"messages\"\n";
        let err = run_err(
            toml,
            &[("a.jsonl", b"{\"instruction\": \"a\", \"output\": \"b\"}\n")],
        );
        assert_eq!(
            err,
            "a.jsonl: line 1: layout \"messages\" needs a `messages` (or `conversations`) array, but the record has: instruction, output; \
             set `layout` to \"alpaca\" or \"columns\" in [ingest]"
        );
        let err = run_err(
            toml,
            &[("a.jsonl", b"{\"messages\": [{\"role\": \"user\"}]}\n")],
        );
        assert_eq!(
            err,
            "a.jsonl: line 1: message 1: has no `content` (or `value`)"
        );
        let err = run_err(
            "[ingest]\npath = \"qa.csv\"\nlayout = \"messages\"\n",
            &[("qa.csv", b"a,b\n1,2\n")],
        );
        assert!(
            err.starts_with("qa.csv: layout \"messages\" needs JSON or JSONL input"),
            "{err}"
        );
    }

    #[test]
    fn error_non_text_field() {
        let jsonl = b"{\"instruction\": \"a\", \"output\": [\"b\"]}\n";
        let err = run_err("[ingest]\npath = \"a.jsonl\"\n", &[("a.jsonl", jsonl)]);
        assert_eq!(
            err,
            "a.jsonl: line 1: field `output` is an array, expected text; make it a string"
        );
    }

    #[test]
    fn error_unknown_extension() {
        let err = run_err("[ingest]\npath = \"data.txt\"\n", &[("data.txt", b"x")]);
        assert_eq!(err, "data.txt: cannot tell the format from the extension `.txt`; set `format` in [ingest] to \"csv\", \"json\" or \"jsonl\"");
    }

    #[test]
    fn error_too_few_rows_after_cleaning() {
        let err = run_err(
            QA,
            &[("qa.csv", b"question,answer,category\nq,a,c\nq,a,c\n,x,c\n")],
        );
        assert_eq!(err, "qa.csv: only 1 usable row(s) of 3 (dropped: 1 with an empty prompt, 1 duplicate); need at least 2 to make a train and a val split");
    }

    // --- config validation ----------------------------------------------------------------

    #[test]
    fn val_fraction_must_be_inside_zero_one() {
        for bad in ["0.0", "1.0", "1.5", "-0.1", "nan"] {
            let i = issue(&format!(
                "[ingest]\npath = \"a.csv\"\nval_fraction = {bad}\n"
            ));
            assert_eq!(i.key, "val_fraction", "{bad}");
            assert!(
                i.message.starts_with("must be between 0 and 1 (exclusive)"),
                "{}",
                i.message
            );
        }
    }

    #[test]
    fn other_config_issues_name_their_key() {
        let base = "[ingest]\npath = \"a.csv\"\n";
        let cases = [
            ("delimiter = \"ab\"", "delimiter"),
            ("delimiter = \"\\\"\"", "delimiter"),
            ("max_rows = 1", "max_rows"),
            ("prompt = \" \"", "prompt"),
            ("prompt_template = \"{prompt\"", "prompt_template"),
            ("prompt_template = \"a } b\"", "prompt_template"),
            ("prompt_template = \"{}\"", "prompt_template"),
            (
                "input = \"ctx\"\nprompt_template = \"{prompt}\"",
                "prompt_template",
            ),
            ("layout = \"messages\"\nprompt = \"q\"", "prompt"),
            (
                "layout = \"messages\"\nprompt_template = \"{q}\"",
                "prompt_template",
            ),
            ("format = \"json\"\ndelimiter = \";\"", "delimiter"),
        ];
        for (extra, key) in cases {
            assert_eq!(issue(&format!("{base}{extra}\n")).key, key, "{extra}");
        }
        assert!(config("[ingest]\npath = \"a.csv\"\ndelimiter = \"\\t\"\nlayout = \"messages\"\ncategory = \"c\"\n").delimiter.is_some());
    }

    #[test]
    fn unknown_keys_and_values_are_refused() {
        let err = pick_table::<IngestConfig>("[ingest]\npath = \"a\"\nval_frac = 0.1\n", "ingest")
            .unwrap_err();
        assert!(err.message().contains("unknown field `val_frac`"), "{err}");
        let err =
            pick_table::<IngestConfig>("[ingest]\npath = \"a\"\nencoding = \"latin1\"\n", "ingest")
                .unwrap_err();
        assert!(err.message().contains("unknown variant `latin1`"), "{err}");
    }

    #[test]
    fn templates_parse_placeholders_and_escapes() {
        assert_eq!(
            parse_template("{a}\n{{b}} {c}").unwrap(),
            vec![
                Piece::Field("a".into()),
                Piece::Text("\n{b} ".into()),
                Piece::Field("c".into())
            ]
        );
        assert!(parse_template("{a").is_err());
        assert!(parse_template("{a{b}").is_err());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = percentiles((1..=100).collect());
        assert_eq!(
            p,
            Percentiles {
                p50: 50,
                p90: 90,
                p99: 99,
                max: 100
            }
        );
        assert_eq!(
            percentiles(vec![7]),
            Percentiles {
                p50: 7,
                p90: 7,
                p99: 7,
                max: 7
            }
        );
    }

    #[test]
    fn auto_layout_prefers_explicit_column_keys_over_a_chat() {
        let names = [
            "messages".to_string(),
            "instruction".into(),
            "output".into(),
        ];
        let base = "[ingest]\npath = \"a.jsonl\"\n";
        assert_eq!(choose_layout(&config(base), &names), Layout::Messages);
        let with_system = config(&format!("{base}system = \"sys\"\n"));
        assert_eq!(choose_layout(&with_system, &names), Layout::Alpaca);
        let with_prompt = config(&format!("{base}prompt = \"instruction\"\n"));
        assert_eq!(choose_layout(&with_prompt, &names), Layout::Columns);
    }

    /// A manual throughput check: `PIPE_INGEST_BENCH_MB=1000 cargo test -p pipe-stages --lib
    /// --release ingest::tests::large_csv -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn large_csv_throughput() {
        let megabytes: usize = std::env::var("PIPE_INGEST_BENCH_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        let ws = tempfile::tempdir().unwrap();
        let path = ws.path().join("qa.csv");
        let mut out = BufWriter::new(File::create(&path).unwrap());
        writeln!(out, "question,answer,category").unwrap();
        let mut written = 0;
        let mut i = 0usize;
        while written < megabytes << 20 {
            let line = format!(
                "\"What does command number {i}, in section {}, do?\",\"It does thing {i}; \
                 see the \"\"manual\"\" for the long explanation of all its options.\",cat{}\n",
                i % 8,
                i % 13
            );
            written += line.len();
            out.write_all(line.as_bytes()).unwrap();
            i += 1;
        }
        out.flush().unwrap();
        let started = std::time::Instant::now();
        let o = run_at(ws.path(), QA, 1).unwrap();
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{megabytes} MB, {} rows in {seconds:.1} s ({:.0} MB/s)",
            o.stats.rows_read,
            megabytes as f64 / seconds
        );
        assert_eq!(o.stats.rows_read, i);
    }
}
