//! Right-padded training batches of prompt + completion token ids, with the next-token targets
//! and the masks that select which targets a loss counts (the `labels = -100` of HF).

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use crate::llm::error::{LlmError, LlmResult};

/// One training example: the completion follows the prompt; only completion tokens (and the
/// earlier assistant turns of a multi-turn prompt) are targets of a completion-only loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
    /// Ranges of `prompt` holding earlier assistant turns of a multi-turn conversation: targets
    /// of a completion-only loss too, as TRL's assistant-only loss trains every assistant turn.
    /// Sorted, disjoint, never starting at 0 (a target needs a token before it).
    pub prompt_targets: Vec<Range<usize>>,
}

impl Example {
    /// A single-turn example: only the completion is a target.
    pub fn new(prompt: Vec<u32>, completion: Vec<u32>) -> Self {
        Example {
            prompt,
            completion,
            prompt_targets: Vec::new(),
        }
    }

    /// Target tokens of a completion-only loss: the completion and the prompt's targets.
    pub fn target_count(&self) -> usize {
        self.completion.len() + self.prompt_targets.iter().map(Range::len).sum::<usize>()
    }

    /// Whether token `t` of prompt + completion is a target of a completion-only loss.
    fn is_target(&self, t: usize) -> bool {
        t >= self.prompt.len() || self.prompt_targets.iter().any(|r| r.contains(&t))
    }
}

/// A batch of examples padded on the right to the longest one.
///
/// Position `t` predicts token `t+1`: `targets[b][t] = ids[b][t+1]`; the masks are 1 where that
/// prediction counts.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `[batch, seq]` u32.
    pub input_ids: Tensor,
    /// `[batch, seq]` u32, 1 for real tokens.
    pub attention_mask: Tensor,
    /// `[batch, seq]` u32, the next token (0 where there is none).
    pub targets: Tensor,
    /// `[batch, seq]` f32: 1 where the target is a completion token (or a token of an earlier
    /// assistant turn, see [`Example::prompt_targets`]).
    pub completion_mask: Tensor,
    /// `[batch, seq]` f32: 1 where the target is any real token (prompt or completion), the
    /// positions of a full-sequence loss.
    pub sequence_mask: Tensor,
    /// Completion tokens per example.
    pub completion_lens: Vec<usize>,
}

impl TokenBatch {
    /// Pads `examples` on the right with `pad_id`. Refuses an empty batch and an example with
    /// no completion tokens or no prompt (the first completion token needs a position that
    /// predicts it).
    pub fn new(examples: &[Example], pad_id: u32, device: &Device) -> LlmResult<Self> {
        if examples.is_empty() {
            return Err(LlmError::Invalid("empty batch: no examples".into()));
        }
        for (i, ex) in examples.iter().enumerate() {
            if ex.completion.is_empty() {
                return Err(LlmError::Invalid(format!(
                    "example {i} has no completion tokens: nothing to train on"
                )));
            }
            if ex.prompt.is_empty() {
                return Err(LlmError::Invalid(format!(
                    "example {i} has an empty prompt: the first completion token needs a preceding token (e.g. BOS)"
                )));
            }
        }
        let seq = examples
            .iter()
            .map(|e| e.prompt.len() + e.completion.len())
            .max()
            .unwrap_or(0);
        let batch = examples.len();
        let mut ids = vec![pad_id; batch * seq];
        let mut real = vec![0u32; batch * seq];
        let mut targets = vec![0u32; batch * seq];
        let mut completion_mask = vec![0f32; batch * seq];
        let mut sequence_mask = vec![0f32; batch * seq];
        for (b, ex) in examples.iter().enumerate() {
            let row = b * seq;
            let tokens: Vec<u32> = ex.prompt.iter().chain(&ex.completion).copied().collect();
            for (t, &tok) in tokens.iter().enumerate() {
                ids[row + t] = tok;
                real[row + t] = 1;
                if t + 1 < tokens.len() {
                    targets[row + t] = tokens[t + 1];
                    sequence_mask[row + t] = 1.0;
                    if ex.is_target(t + 1) {
                        completion_mask[row + t] = 1.0;
                    }
                }
            }
        }
        let shape = (batch, seq);
        Ok(Self {
            input_ids: Tensor::from_vec(ids, shape, device)?,
            attention_mask: Tensor::from_vec(real, shape, device)?,
            targets: Tensor::from_vec(targets, shape, device)?,
            completion_mask: Tensor::from_vec(completion_mask, shape, device)?,
            sequence_mask: Tensor::from_vec(sequence_mask, shape, device)?,
            completion_lens: examples.iter().map(|e| e.completion.len()).collect(),
        })
    }

    pub fn batch_size(&self) -> usize {
        self.completion_lens.len()
    }

    /// The masks in the model's dtype (kept f32 above so the batch is dtype-agnostic).
    pub fn mask(&self, which: TargetMask, dtype: DType) -> LlmResult<Tensor> {
        let m = match which {
            TargetMask::Completion => &self.completion_mask,
            TargetMask::Sequence => &self.sequence_mask,
        };
        Ok(m.to_dtype(dtype)?)
    }
}

/// Which targets a loss counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetMask {
    /// Completion tokens only (the prompt is masked, HF's `labels = -100`).
    Completion,
    /// Every real token after the first (prompt and completion).
    Sequence,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_shifted_and_masks_select_completion() -> LlmResult<()> {
        let ex = [
            Example::new(vec![1, 2], vec![3, 4]),
            Example::new(vec![5], vec![6]),
        ];
        let b = TokenBatch::new(&ex, 0, &Device::Cpu)?;
        assert_eq!(
            b.input_ids.to_vec2::<u32>()?,
            vec![vec![1, 2, 3, 4], vec![5, 6, 0, 0]]
        );
        assert_eq!(
            b.targets.to_vec2::<u32>()?,
            vec![vec![2, 3, 4, 0], vec![6, 0, 0, 0]]
        );
        assert_eq!(
            b.completion_mask.to_vec2::<f32>()?,
            vec![vec![0., 1., 1., 0.], vec![1., 0., 0., 0.]]
        );
        assert_eq!(
            b.sequence_mask.to_vec2::<f32>()?,
            vec![vec![1., 1., 1., 0.], vec![1., 0., 0., 0.]]
        );
        assert_eq!(
            b.attention_mask.to_vec2::<u32>()?,
            vec![vec![1, 1, 1, 1], vec![1, 1, 0, 0]]
        );
        Ok(())
    }

    #[test]
    fn earlier_assistant_turns_are_targets_too() -> LlmResult<()> {
        // user(1 2) assistant(3 4) user(5) | assistant(6 7): tokens 2..4 of the prompt and the
        // completion are predicted; the user turns are not.
        let ex = Example {
            prompt_targets: std::iter::once(2..4).collect(),
            ..Example::new(vec![1, 2, 3, 4, 5], vec![6, 7])
        };
        assert_eq!(ex.target_count(), 4);
        let b = TokenBatch::new(&[ex], 0, &Device::Cpu)?;
        assert_eq!(
            b.completion_mask.to_vec2::<f32>()?,
            vec![vec![0., 1., 1., 0., 1., 1., 0.]]
        );
        assert_eq!(b.completion_lens, vec![2]);
        Ok(())
    }

    #[test]
    fn refuses_examples_without_targets() {
        let empty = [Example::new(vec![1], vec![])];
        let err = TokenBatch::new(&empty, 0, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("example 0"), "{err}");
        assert!(TokenBatch::new(&[], 0, &Device::Cpu).is_err());
    }
}
