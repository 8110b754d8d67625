//! Why scoring failed. Every message names the scorer, the command, the rule, the file or the
//! row at fault, and says what to do.

use std::path::PathBuf;

use crate::tabular::{Location, TableError};

/// An error of the scoring library.
#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    /// A config that did not go through `validate` (a library caller built it by hand).
    #[error("[{table}] `{key}` {message}")]
    Config {
        table: String,
        key: String,
        message: String,
    },

    // --- embedding ---------------------------------------------------------------------------
    #[error("embedding model directory {} not found; run scripts/fetch-embedder.sh (it puts all-MiniLM-L6-v2 in models/), or set `model` in [score.embedding] to a sentence-transformers directory (config.json, model.safetensors, tokenizer.json)", dir.display())]
    EmbedderNotFound { dir: PathBuf },
    #[error("embedding model: {}: {message}", path.display())]
    EmbedderFile { path: PathBuf, message: String },
    #[error("embedding model {}: {message}", model.display())]
    Embedding { model: PathBuf, message: String },

    // --- command -----------------------------------------------------------------------------
    #[error("command scorer `{command}`: cannot start it: {source}; check `argv` in [score.command] (the working directory is the workspace root)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("command scorer `{command}`: {what}: {source}")]
    CommandIo {
        command: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("command scorer `{command}` did not finish within {seconds} s on {rows} row(s) and was killed; make it faster or raise `timeout_secs` in [score.command]")]
    Timeout {
        command: String,
        seconds: f64,
        rows: usize,
    },
    #[error("command scorer `{command}` failed ({status}){stderr}")]
    CommandFailed {
        command: String,
        status: String,
        /// Empty, or `; its stderr ends with:\n...`.
        stderr: String,
    },
    #[error("command scorer `{command}` printed {lines} line(s) for {rows} row(s){first_missing}; it must print exactly one number per input row, in input order")]
    LineCount {
        command: String,
        rows: usize,
        lines: usize,
        /// Empty, or `: row 4 (id `x`) got no score`.
        first_missing: String,
    },
    #[error("command scorer `{command}` printed more than {rows} line(s) for {rows} row(s) and was stopped; it must print exactly one number per input row, in input order")]
    TooManyLines { command: String, rows: usize },
    #[error("command scorer `{command}`: output line {line} (row id `{id}`) is longer than {max} bytes and was not read; print one number per line, like 0.75")]
    LineTooLong {
        command: String,
        line: usize,
        id: String,
        max: usize,
    },
    #[error("command scorer `{command}`: output line {line} (row id `{id}`) is {text:?}, not a number; print one number per line, like 0.75")]
    NotANumber {
        command: String,
        line: usize,
        id: String,
        text: String,
    },
    #[error("command scorer `{command}`: output line {line} (row id `{id}`) is {value}, outside `scale` [{low}, {high}]; fix the program or set `scale` in [score.command]")]
    OutOfScale {
        command: String,
        line: usize,
        id: String,
        value: f64,
        low: f64,
        high: f64,
    },
    #[error(
        "command scorer `{command}`: output line {line} is not valid UTF-8; print plain numbers"
    )]
    NotUtf8 { command: String, line: usize },

    // --- rules ---------------------------------------------------------------------------------
    #[error("rule `{rule}`: {message}")]
    Rule { rule: String, message: String },

    // --- pairs -------------------------------------------------------------------------------
    #[error("prompt `{prompt_id}`: {what} has a non-finite score ({score}); scores must be numbers in [0, 1]")]
    NonFiniteScore {
        prompt_id: String,
        what: String,
        score: f64,
    },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("{file}: no column `{column}` (set by `{key}` in [score.extra_pairs]); the header has: {available}{suggestion}")]
    MissingColumn {
        file: String,
        column: String,
        key: &'static str,
        available: String,
        /// Empty, or `; did you mean `x`?`.
        suggestion: String,
    },
    #[error("{file}: column `{column}` appears {count} times in the header; rename the duplicates so the mapping is unambiguous")]
    AmbiguousColumn {
        file: String,
        column: String,
        count: usize,
    },
    #[error("{file}: {location}: `{column}` is empty; every extra pair needs a prompt, a chosen and a rejected answer")]
    EmptyCell {
        file: String,
        location: Location,
        column: String,
    },
    #[error("{file}: {location}: the chosen and rejected answers are the same text; the pair teaches nothing, remove it")]
    SameText { file: String, location: Location },
}
