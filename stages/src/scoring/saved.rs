//! Scoring with the scorers a score run saved (`scorers.json`, paths absolute), so that eval
//! scores answers on exactly the score stage's scale.

use std::path::{Path, PathBuf};

use crate::progress::Progress;

use super::{ScoreInput, Scorers, ScorersConfig, Scores, ScoringError};

/// Why the saved scorers could not be rebuilt; names the file.
#[derive(Debug, thiserror::Error)]
pub enum SavedScorersError {
    #[error("{}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error(transparent)]
    Scoring(#[from] ScoringError),
}

/// The scorers a score artifact used, rebuilt from its saved configuration `path` (its
/// `scorers.json`). The command scorer, if any, runs in `workspace`.
pub fn load_scorers(path: &Path, workspace: &Path) -> Result<Scorers, SavedScorersError> {
    let text = std::fs::read_to_string(path).map_err(|e| SavedScorersError::Read {
        path: path.to_path_buf(),
        message: format!("cannot read it: {e}; re-run `pipe run --from score`"),
    })?;
    let cfg: ScorersConfig = serde_json::from_str(&text).map_err(|e| SavedScorersError::Read {
        path: path.to_path_buf(),
        message: format!("not a scorer configuration: {e}; re-run `pipe run --from score`"),
    })?;
    Ok(Scorers::new(&cfg, workspace)?)
}

/// One answer to score, as `eval` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer<'a> {
    /// Names the row in a command scorer's input and in errors (e.g. `<example id>/sft`).
    pub id: &'a str,
    pub prompt: &'a str,
    /// The turns before `prompt` of a multi-turn row.
    pub history: &'a [crate::llm::ChatMessage],
    pub reference: &'a str,
    pub answer: &'a str,
}

/// Scores answers with [`load_scorers`]' scorers: one [`Scores`] per answer, in order, on the
/// same scale as the score stage's (`combined` in [0, 1] plus each scorer's score).
pub fn score_answers(
    scorers: &Scorers,
    answers: &[Answer<'_>],
    progress: &dyn Progress,
) -> Result<Vec<Scores>, ScoringError> {
    let rows: Vec<ScoreInput<'_>> = answers
        .iter()
        .map(|a| ScoreInput {
            id: a.id,
            prompt: a.prompt,
            history: a.history,
            reference: a.reference,
            candidate: a.answer,
        })
        .collect();
    scorers.score(&rows, progress)
}
