//! Ingest rows turned into token ids for training: rendered with the model's chat template
//! through [`BaseModel::render_example`] (the rendering every stage shares), fitted to
//! `max_seq_len` by the over-length policy, and counted. A row that keeps no target token
//! never reaches a batch, so no batch can be without targets.

use serde::{Deserialize, Serialize};

use super::config::Overlength;
use super::SftError;
use crate::ingest::Example as Row;
use crate::llm::Example;
use crate::model::BaseModel;

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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Target tokens this row gives a loss: the completion, or every token after the first.
    pub fn targets(&self, train_on_prompt: bool) -> usize {
        if train_on_prompt {
            self.len() - 1
        } else {
            self.example.completion.len()
        }
    }

    /// `id 1a2b… (source row 12)`, for error messages.
    pub fn describe(&self) -> String {
        format!("id {} (source row {})", self.id, self.source_row)
    }
}

/// What fitting a split to `max_seq_len` did, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FitCounts {
    /// Rows in the ingest file.
    pub rows: usize,
    /// Rows used.
    pub kept: usize,
    /// Rows kept with prompt tokens cut from the left (`truncate_prompt`).
    pub truncated: usize,
    /// Rows over `max_seq_len` dropped by `overlength = "drop"`.
    pub dropped_overlength: usize,
    /// Rows whose completion alone leaves no room for a prompt token: dropped by either policy.
    pub dropped_completion_too_long: usize,
}

impl FitCounts {
    pub fn dropped(&self) -> usize {
        self.dropped_overlength + self.dropped_completion_too_long
    }
}

/// How one rendered row fits into `max_seq_len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    Whole(Example),
    /// Prompt tokens were dropped from the left.
    Truncated(Example),
    /// Longer than allowed under `overlength = "drop"`.
    DropOverlength,
    /// The completion needs `max_seq_len` tokens or more: no prompt token would be left to
    /// predict its first token.
    DropCompletionTooLong,
}

/// Applies the over-length policy to one rendered row.
pub fn fit(example: Example, max_seq_len: usize, policy: Overlength) -> Fit {
    let total = example.prompt.len() + example.completion.len();
    if total <= max_seq_len {
        return Fit::Whole(example);
    }
    if policy == Overlength::Drop {
        return Fit::DropOverlength;
    }
    // At least one prompt token must remain: position t predicts token t+1, so the first
    // completion token needs a token before it.
    if example.completion.len() + 1 > max_seq_len {
        return Fit::DropCompletionTooLong;
    }
    let keep = max_seq_len - example.completion.len();
    let cut = example.prompt.len() - keep;
    Fit::Truncated(Example {
        prompt: example.prompt[cut..].to_vec(),
        completion: example.completion,
    })
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
            .render_example(row.system.as_deref(), &row.prompt, &row.response)
            .map_err(|source| SftError::Render {
                file: file.to_string(),
                id: row.id.clone(),
                source_row: row.source_row,
                source: Box::new(source),
            })?;
        let example = Example {
            prompt: rendered.prompt_ids,
            completion: rendered.completion_ids,
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

    fn ex(p: usize, c: usize) -> Example {
        Example {
            prompt: (0..p as u32).collect(),
            completion: (100..100 + c as u32).collect(),
        }
    }

    #[test]
    fn truncation_keeps_the_completion_and_the_prompt_end() {
        assert_eq!(
            fit(ex(3, 2), 5, Overlength::TruncatePrompt),
            Fit::Whole(ex(3, 2))
        );
        match fit(ex(10, 4), 6, Overlength::TruncatePrompt) {
            Fit::Truncated(e) => {
                assert_eq!(e.prompt, vec![8, 9]);
                assert_eq!(e.completion.len(), 4);
            }
            other => panic!("{other:?}"),
        }
        // The completion alone fills the window: no prompt token left, dropped.
        assert_eq!(
            fit(ex(10, 6), 6, Overlength::TruncatePrompt),
            Fit::DropCompletionTooLong
        );
        // One prompt token left is enough: every completion token stays a target.
        match fit(ex(10, 5), 6, Overlength::TruncatePrompt) {
            Fit::Truncated(e) => assert_eq!((e.prompt.len(), e.completion.len()), (1, 5)),
            other => panic!("{other:?}"),
        }
        assert_eq!(fit(ex(10, 4), 6, Overlength::Drop), Fit::DropOverlength);
        assert_eq!(fit(ex(2, 4), 6, Overlength::Drop), Fit::Whole(ex(2, 4)));
    }

    #[test]
    fn targets_count_completion_or_everything() {
        let row = TokenRow {
            id: "x".into(),
            source_row: 1,
            example: ex(3, 2),
        };
        assert_eq!(
            (row.targets(false), row.targets(true), row.len()),
            (2, 4, 5)
        );
        assert_eq!(row.describe(), "id x (source row 1)");
    }
}
