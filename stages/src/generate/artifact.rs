//! What generate hands the stages after it: the candidates file (one [`CandidateRecord`] a
//! line: a prompt, its reference answer and its sampled answers) and its reader. Nothing else
//! of generate is visible to them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::llm::FinishReason;

/// The stage's main output: one [`CandidateRecord`] per line.
pub const CANDIDATES_FILE: &str = "candidates.jsonl";
/// The run's summary (`pipe show generate`).
pub const SUMMARY_FILE: &str = "summary.json";

/// One sampled answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedCandidate {
    /// The answer, special tokens skipped, cut before a stop text, trimmed.
    pub text: String,
    /// Tokens generated (the end token included).
    pub tokens: usize,
    /// Mean log-probability of those tokens under the model (before sampling transforms).
    pub mean_logprob: f64,
    pub finish_reason: FinishReason,
}

/// One line of `candidates.jsonl`: a prompt, its reference answer and its candidates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    /// The ingest id of the prompt's row.
    pub id: String,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The turns before `prompt` of a multi-turn row (the context it is asked in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<crate::llm::ChatMessage>,
    /// The dataset's answer.
    pub reference: String,
    pub candidates: Vec<GeneratedCandidate>,
}

/// Reads a candidates file (the stage's output or its partial one).
pub fn read_candidates(path: &Path) -> Result<Vec<CandidateRecord>, CandidatesError> {
    crate::jsonl::read(path, "a candidates record").map_err(|message| CandidatesError {
        path: path.to_path_buf(),
        message,
    })
}

/// A candidates file could not be read; names the file and the line.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct CandidatesError {
    pub path: PathBuf,
    pub message: String,
}
