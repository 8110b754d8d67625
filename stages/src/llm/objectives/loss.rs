//! Token log-probabilities of a batch's targets and the SFT loss (completion-only
//! cross-entropy) built on them; ORPO builds on them too (`orpo.rs`). Logits are computed chunk
//! by chunk and only at the positions a loss counts, since the lm_head over the vocabulary is
//! the largest matmul of a small model.

use candle_core::Tensor;

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::model::decoder::LlamaModel;
use crate::llm::model::kernels::{self, lm_head_loss::target_logprobs_fused};
use crate::llm::model::lora::Mode;
use crate::llm::model::ops::logsumexp_keepdim;
use crate::llm::objectives::batch::{TargetMask, TokenBatch};

/// Positions per lm_head chunk: bounds the `[chunk, vocab]` logits alive at once in forward.
pub const DEFAULT_CHUNK: usize = 512;

/// The log-probabilities of the selected next-token targets of a batch.
#[derive(Debug, Clone)]
pub struct TargetLogProbs {
    /// `[n]`: `log p(target)` of each selected position, row by row.
    values: Tensor,
    entries: Vec<Entry>,
    batch_size: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    row: usize,
    completion: bool,
}

impl TargetLogProbs {
    /// Runs the model on `batch` and scores the targets `select[row]` asks for (one selection
    /// per example; completion positions are always included).
    pub fn compute(
        model: &LlamaModel,
        batch: &TokenBatch,
        select: &[TargetMask],
        mode: Mode,
        chunk: usize,
    ) -> LlmResult<Self> {
        let hidden = model.hidden_states(&batch.input_ids, Some(&batch.attention_mask), mode)?;
        Self::from_hidden(model, &hidden, batch, select, chunk)
    }

    /// As [`TargetLogProbs::compute`] from hidden states `[batch, seq, hidden]` already computed.
    pub fn from_hidden(
        model: &LlamaModel,
        hidden: &Tensor,
        batch: &TokenBatch,
        select: &[TargetMask],
        chunk: usize,
    ) -> LlmResult<Self> {
        let (rows, seq, width) = hidden.dims3()?;
        if select.len() != rows || batch.batch_size() != rows {
            return Err(LlmError::Invalid(format!(
                "{} target selections and {} examples for hidden states of {rows} rows",
                select.len(),
                batch.batch_size()
            )));
        }
        if batch.input_ids.dims() != [rows, seq] {
            return Err(LlmError::Invalid(format!(
                "hidden states [{rows}, {seq}, _] do not belong to a batch of shape {:?}",
                batch.input_ids.dims()
            )));
        }
        let (positions, entries) = selected_positions(batch, select)?;
        if positions.is_empty() {
            return Err(LlmError::Invalid(
                "the batch has no target tokens: every label is masked".into(),
            ));
        }
        let targets: Vec<u32> = {
            let all = batch.targets.flatten_all()?.to_vec1::<u32>()?;
            positions.iter().map(|&p| all[p as usize]).collect()
        };
        let flat = hidden.reshape((rows * seq, width))?;
        let device = hidden.device();
        if kernels::applies(hidden) && hidden.dtype() == model.lm_head_weight().dtype() {
            // One fused op over all selected positions; it chunks the vocabulary work itself.
            let picked = flat.index_select(&Tensor::new(positions.as_slice(), device)?, 0)?;
            let values = target_logprobs_fused(
                &picked,
                model.lm_head_weight(),
                &targets,
                kernels::lm_head_loss::DEFAULT_CHUNK,
            )?;
            return Ok(Self {
                values,
                entries,
                batch_size: rows,
            });
        }
        let mut pieces = Vec::new();
        for (pos, tgt) in positions
            .chunks(chunk.max(1))
            .zip(targets.chunks(chunk.max(1)))
        {
            let idx = Tensor::new(pos, device)?;
            let tgt = Tensor::new(tgt, device)?;
            let logits = model.logits(&flat.index_select(&idx, 0)?)?;
            pieces.push(log_prob_of(&logits, &tgt)?);
        }
        Ok(Self {
            values: Tensor::cat(&pieces, 0)?,
            entries,
            batch_size: rows,
        })
    }

    /// `[n]` log-probabilities of all selected targets.
    pub fn values(&self) -> &Tensor {
        &self.values
    }

    /// Mean log-prob per example over `which` targets: `[batch]`. Errors naming the first
    /// example with no such target.
    pub fn mean_per_sequence(&self, which: TargetMask) -> LlmResult<Tensor> {
        let n = self.entries.len();
        let mut weights = vec![0f64; self.batch_size * n];
        let mut counts = vec![0usize; self.batch_size];
        for e in &self.entries {
            if counts_for(e, which) {
                counts[e.row] += 1;
            }
        }
        if let Some(row) = counts.iter().position(|&c| c == 0) {
            return Err(LlmError::Invalid(format!(
                "example {row} has no {} target tokens",
                mask_name(which)
            )));
        }
        for (j, e) in self.entries.iter().enumerate() {
            if counts_for(e, which) {
                weights[e.row * n + j] = 1.0 / counts[e.row] as f64;
            }
        }
        let dtype = self.values.dtype();
        let w = Tensor::from_vec(weights, (self.batch_size, n), self.values.device())?
            .to_dtype(dtype)?;
        Ok(w.matmul(&self.values.unsqueeze(1)?)?.squeeze(1)?)
    }

    /// Mean negative log-likelihood over all `which` targets of the batch (token-weighted,
    /// HF's cross-entropy with `labels = -100`), and the number of tokens.
    pub fn token_mean_nll(&self, which: TargetMask) -> LlmResult<(Tensor, usize)> {
        let keep: Vec<f64> = self
            .entries
            .iter()
            .map(|e| if counts_for(e, which) { 1.0 } else { 0.0 })
            .collect();
        let count = keep.iter().filter(|&&k| k > 0.0).count();
        if count == 0 {
            return Err(LlmError::Invalid(format!(
                "the batch has no {} target tokens",
                mask_name(which)
            )));
        }
        let keep = Tensor::new(keep, self.values.device())?.to_dtype(self.values.dtype())?;
        let total = (&self.values * &keep)?.sum_all()?;
        Ok(((total * (-1.0 / count as f64))?, count))
    }
}

fn counts_for(e: &Entry, which: TargetMask) -> bool {
    e.completion || which == TargetMask::Sequence
}

fn mask_name(which: TargetMask) -> &'static str {
    match which {
        TargetMask::Completion => "completion",
        TargetMask::Sequence => "sequence",
    }
}

/// Flat indices into `[batch*seq]` of the targets each row selects, and what they are.
fn selected_positions(
    batch: &TokenBatch,
    select: &[TargetMask],
) -> LlmResult<(Vec<u32>, Vec<Entry>)> {
    let completion = batch.completion_mask.to_vec2::<f32>()?;
    let sequence = batch.sequence_mask.to_vec2::<f32>()?;
    let seq = completion.first().map_or(0, Vec::len);
    let mut positions = Vec::new();
    let mut entries = Vec::new();
    for (row, which) in select.iter().enumerate() {
        for t in 0..seq {
            let is_completion = completion[row][t] > 0.0;
            let wanted = match which {
                TargetMask::Completion => is_completion,
                TargetMask::Sequence => sequence[row][t] > 0.0,
            };
            if wanted {
                positions.push((row * seq + t) as u32);
                entries.push(Entry {
                    row,
                    completion: is_completion,
                });
            }
        }
    }
    Ok((positions, entries))
}

/// `log softmax(logits)[target]` per row of `logits` `[n, vocab]`, `targets` `[n]` u32.
pub fn log_prob_of(logits: &Tensor, targets: &Tensor) -> LlmResult<Tensor> {
    let picked = logits.gather(&targets.unsqueeze(1)?, 1)?;
    Ok((picked - logsumexp_keepdim(logits)?)?.squeeze(1)?)
}

/// The result of an SFT loss: the scalar to backpropagate and how many tokens it averages.
#[derive(Debug, Clone)]
pub struct SftLoss {
    pub loss: Tensor,
    pub tokens: usize,
}

/// Completion-only cross-entropy: the mean NLL over the completion tokens of the batch.
pub fn sft_loss(
    model: &LlamaModel,
    batch: &TokenBatch,
    mode: Mode,
    chunk: usize,
) -> LlmResult<SftLoss> {
    let select = vec![TargetMask::Completion; batch.batch_size()];
    let lp = TargetLogProbs::compute(model, batch, &select, mode, chunk)?;
    let (loss, tokens) = lp.token_mean_nll(TargetMask::Completion)?;
    Ok(SftLoss { loss, tokens })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn log_prob_of_is_log_softmax_at_target() -> LlmResult<()> {
        let logits = Tensor::new(&[[1.0f64, 2.0, 3.0]], &Device::Cpu)?;
        let t = Tensor::new(&[2u32], &Device::Cpu)?;
        let got = log_prob_of(&logits, &t)?.to_vec1::<f64>()?[0];
        let want = 3.0 - (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((got - want).abs() < 1e-12);
        Ok(())
    }
}
