//! Ingest rows turned into token ids for training: rendered with the model's chat template
//! through [`BaseModel::render_example`] (the rendering every stage shares, every assistant
//! turn of a multi-turn row a target), fitted to
//! `max_seq_len` by the over-length policy, and counted. A row that keeps no target token
//! never reaches a batch, so no batch can be without targets.

use super::SftError;
use crate::base::BaseModel;
use crate::ingest::artifact::Example as Row;
use crate::llm::Example;
use crate::train::fit::{fit, Fit, FitCounts, Overlength};

/// A training or evaluation row as token ids, with what identifies it to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// The ingest id (16 hex digits of the content hash).
    pub id: String,
    /// The row of the user's dataset file.
    pub source_row: u64,
    pub example: Example,
}

impl TokenRow {
    /// Prompt plus completion tokens.
    pub fn len(&self) -> usize {
        self.example.prompt.len() + self.example.completion.len()
    }

    /// Target tokens this row gives a loss: the assistant turns (the completion and, in a
    /// multi-turn row, the earlier answers), or every token after the first.
    pub fn targets(&self, train_on_prompt: bool) -> usize {
        if train_on_prompt {
            self.len() - 1
        } else {
            self.example.target_count()
        }
    }

    /// `id 1a2b… (source row 12)`, for error messages.
    pub fn describe(&self) -> String {
        format!("id {} (source row {})", self.id, self.source_row)
    }
}

/// Renders and fits every row of one ingest split; `file` names the split in errors.
pub fn encode_split(
    base: &BaseModel,
    rows: &[Row],
    max_seq_len: usize,
    policy: Overlength,
    file: &str,
) -> Result<(Vec<TokenRow>, FitCounts), SftError> {
    let mut counts = FitCounts {
        rows: rows.len(),
        ..FitCounts::default()
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let rendered = base
            .render_example(
                row.system.as_deref(),
                &row.history,
                &row.prompt,
                &row.response,
            )
            .map_err(|source| SftError::Render {
                file: file.to_string(),
                id: row.id.clone(),
                source_row: row.source_row,
                source: Box::new(source),
            })?;
        let example = Example {
            prompt: rendered.prompt_ids,
            completion: rendered.completion_ids,
            prompt_targets: rendered.prompt_targets,
        };
        // The template always closes the assistant turn, but an empty completion would have
        // no targets: treat it like one that does not fit.
        let fitted = if example.completion.is_empty() || example.prompt.is_empty() {
            Fit::DropCompletionTooLong
        } else {
            fit(example, max_seq_len, policy)
        };
        let example = match fitted {
            Fit::Whole(e) => e,
            Fit::Truncated(e) => {
                counts.truncated += 1;
                e
            }
            Fit::DropOverlength => {
                counts.dropped_overlength += 1;
                continue;
            }
            Fit::DropCompletionTooLong => {
                counts.dropped_completion_too_long += 1;
                continue;
            }
        };
        out.push(TokenRow {
            id: row.id.clone(),
            source_row: row.source_row,
            example,
        });
    }
    counts.kept = out.len();
    Ok((out, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_count_completion_or_everything() {
        let example = Example::new(vec![1, 2, 3], vec![7, 8]);
        let row = TokenRow {
            id: "x".into(),
            source_row: 1,
            example,
        };
        assert_eq!(
            (row.targets(false), row.targets(true), row.len()),
            (2, 4, 5)
        );
        assert_eq!(row.describe(), "id x (source row 1)");
    }
}
