//! What score hands the stages after it: the preference pairs orpo trains on (one
//! [`Pair`] a line, with their reader) and the effective scorers eval rebuilds
//! (`scorers.json`, read by [`crate::scoring::load_scorers`]). Nothing else of score is visible
//! to them.

use std::path::{Path, PathBuf};

pub use crate::scoring::pairs::Pair;

/// One scored prompt per line (score's own view: `pipe show score`).
pub const SCORES_FILE: &str = "scores.jsonl";
/// One [`Pair`] per line: generated pairs, then the extra pairs. What orpo trains on.
pub const PAIRS_FILE: &str = "pairs.jsonl";
/// The stage's statistics (`pipe show score`).
pub const STATS_FILE: &str = "stats.json";
/// The effective scorer configuration, paths absolute: what
/// [`crate::scoring::load_scorers`] rebuilds.
pub const SCORERS_FILE: &str = "scorers.json";

/// Reads `pairs.jsonl`: one [`Pair`] per line.
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>, PairsError> {
    crate::jsonl::read(path, "a pair").map_err(|message| PairsError {
        path: path.to_path_buf(),
        message,
    })
}

/// `pairs.jsonl` could not be read; names the file and the line.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct PairsError {
    pub path: PathBuf,
    pub message: String,
}
