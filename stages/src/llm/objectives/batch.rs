//! Right-padded training batches of prompt + completion token ids, with the next-token targets
//! and the masks that select which targets a loss counts (the `labels = -100` of HF).

use candle_core::{DType, Device, Tensor};

use crate::llm::error::{LlmError, LlmResult};

/// One training example: the completion follows the prompt; only completion tokens are
/// targets of a completion-only loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
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
    /// `[batch, seq]` f32: 1 where the target is a completion token.
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
            let p = ex.prompt.len();
            for (t, &tok) in tokens.iter().enumerate() {
                ids[row + t] = tok;
                real[row + t] = 1;
                if t + 1 < tokens.len() {
                    targets[row + t] = tokens[t + 1];
                    sequence_mask[row + t] = 1.0;
                    if t + 1 >= p {
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
            Example {
                prompt: vec![1, 2],
                completion: vec![3, 4],
            },
            Example {
                prompt: vec![5],
                completion: vec![6],
            },
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
    fn refuses_examples_without_targets() {
        let empty = [Example {
            prompt: vec![1],
            completion: vec![],
        }];
        let err = TokenBatch::new(&empty, 0, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("example 0"), "{err}");
        assert!(TokenBatch::new(&[], 0, &Device::Cpu).is_err());
    }
}
