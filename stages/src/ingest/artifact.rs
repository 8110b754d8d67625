//! What ingest hands the stages after it: the two split files, their row record and the
//! reader that names the file and line of a bad row. Nothing else of ingest is visible to them.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::llm::ChatMessage;

/// The training split, one [`Example`] per line.
pub const TRAIN_FILE: &str = "train.jsonl";
/// The validation split, one [`Example`] per line.
pub const VAL_FILE: &str = "val.jsonl";

/// [`super::IngestStats`] as JSON (for `pipe show ingest`).
pub const STATS_FILE: &str = "stats.json";

/// One output row of `train.jsonl` / `val.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// First 16 hex digits of blake3(system \0 prompt \0 response, then the rejected answer
    /// and the history where a row has them): stable across runs and files.
    pub id: String,
    pub prompt: String,
    pub response: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// 1-based: CSV record after the header, JSON array position, or JSONL line.
    pub source_row: u64,
    /// The dispreferred answer of a preference row (layout "preference": `response` is then
    /// the chosen one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    /// The user and assistant turns before `prompt` in a multi-turn chat, oldest first: the
    /// context the prompt is asked in. sft trains on its assistant turns too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<ChatMessage>,
}

/// A seeded sample of `limit` rows (all of them, in file order, without a limit): rows
/// ordered by a hash of (seed, id), so a larger limit keeps the smaller sample and the
/// sample does not depend on the rows' order in the file.
pub fn seeded_sample(mut rows: Vec<Example>, limit: Option<usize>, seed: u64) -> Vec<Example> {
    let Some(limit) = limit else {
        return rows;
    };
    rows.sort_by_cached_key(|r| (sample_hash(seed, &r.id), r.source_row));
    rows.truncate(limit);
    rows
}

/// 64 bits of blake3 over ("select", seed, id): stable across platforms and versions.
fn sample_hash(seed: u64, id: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"select");
    h.update(&seed.to_le_bytes());
    h.update(id.as_bytes());
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// Reads `train.jsonl` or `val.jsonl` of a committed ingest artifact (for downstream stages).
pub fn read_examples(path: &Path) -> Result<Vec<Example>, ExamplesError> {
    let file = File::open(path).map_err(|source| ExamplesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut examples = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let bad = |message: String| ExamplesError::Bad {
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

/// Why a split file of an ingest artifact could not be read; names the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum ExamplesError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: line {line}: {message}", path.display())]
    Bad {
        path: PathBuf,
        line: usize,
        message: String,
    },
}
