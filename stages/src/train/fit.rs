//! Fitting a rendered row into `max_seq_len` tokens: the over-length policy, and what it did
//! to a split, for a trainer's summary.

use serde::{Deserialize, Serialize};

use crate::llm::Example;

/// What to do with a row longer than `max_seq_len` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlength {
    /// Drop prompt tokens from the left and keep the whole completion (a row whose completion
    /// alone does not fit is dropped).
    #[default]
    TruncatePrompt,
    /// Drop the row.
    Drop,
}

impl Overlength {
    pub fn name(self) -> &'static str {
        match self {
            Overlength::TruncatePrompt => "truncate_prompt",
            Overlength::Drop => "drop",
        }
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
        prompt_targets: shifted_targets(&example.prompt_targets, cut),
        prompt: example.prompt[cut..].to_vec(),
        completion: example.completion,
    })
}

/// The prompt's target ranges once its first `cut` tokens are gone: shifted, clipped, and
/// never starting at the new first token (nothing precedes it to predict it).
fn shifted_targets(targets: &[std::ops::Range<usize>], cut: usize) -> Vec<std::ops::Range<usize>> {
    targets
        .iter()
        .map(|r| r.start.saturating_sub(cut).max(1)..r.end.saturating_sub(cut))
        .filter(|r| !r.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(p: usize, c: usize) -> Example {
        Example::new((0..p as u32).collect(), (100..100 + c as u32).collect())
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
        // An earlier assistant turn cut in half keeps its surviving tokens as targets; one
        // cut away entirely is gone.
        let multi = Example {
            prompt_targets: vec![1..3, 5..8],
            ..ex(10, 2)
        };
        match fit(multi, 6, Overlength::TruncatePrompt) {
            Fit::Truncated(e) => {
                assert_eq!(
                    (e.prompt.len(), e.prompt_targets),
                    (4, std::iter::once(1..2).collect())
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fit(ex(2, 4), 6, Overlength::Drop), Fit::Whole(ex(2, 4)));
    }
}
