//! Why ingest fails: every error names the file, the row or the key, and what to do.

use std::path::PathBuf;

use crate::tabular::{Location, TableError};

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
