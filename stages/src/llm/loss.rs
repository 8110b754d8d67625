//! Training losses on top of the model: completion-only cross-entropy (SFT), per-sequence mean
//! log-probs, and ORPO (Hong et al. 2024) with the metrics TRL logs. Logits are computed chunk
//! by chunk and only at the positions a loss counts, since the lm_head over the vocabulary is
//! the largest matmul of a small model.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::batch::{Example, TargetMask, TokenBatch};
use super::error::{LlmError, LlmResult};
use super::lora::Mode;
use super::model::LlamaModel;
use super::ops::{log_sigmoid, logsumexp_keepdim};
use super::scalar_op::log1mexp;

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

/// Which NLL term ORPO adds to the odds-ratio term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrpoNll {
    /// Mean NLL of the chosen completion tokens (LLaMA-Factory; the ORPO paper).
    #[default]
    Completion,
    /// Mean NLL over prompt + chosen, as TRL's `ORPOTrainer` computes it.
    FullSequence,
}

/// ORPO hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OrpoConfig {
    /// λ of the paper, weight of the odds-ratio term (TRL's `beta`).
    pub beta: f64,
    pub nll: OrpoNll,
}

impl Default for OrpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            nll: OrpoNll::Completion,
        }
    }
}

/// A preference pair: one prompt, a preferred and a dispreferred completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferencePair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

/// What TRL's ORPOTrainer logs, under its names, averaged over the pairs of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrpoMetrics {
    pub loss: f64,
    pub nll_loss: f64,
    /// Mean of `log σ(log_odds)`.
    pub log_odds_ratio: f64,
    /// Mean of `log_odds`.
    pub log_odds_chosen: f64,
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
}

/// The ORPO loss to backpropagate, its metrics, and the per-pair terms.
#[derive(Debug, Clone)]
pub struct OrpoOutput {
    pub loss: Tensor,
    pub metrics: OrpoMetrics,
    /// `[pairs]` mean completion log-probs of chosen and rejected.
    pub lp_chosen: Tensor,
    pub lp_rejected: Tensor,
    /// `[pairs]` log odds ratio and its log-sigmoid.
    pub log_odds: Tensor,
    pub log_sigmoid_log_odds: Tensor,
    /// `[pairs]` the NLL term of each pair.
    pub nll: Tensor,
}

/// ORPO on a batch of pairs: chosen and rejected run through the model in one forward
/// (padded together), then [`orpo_objective`].
pub fn orpo_loss(
    model: &LlamaModel,
    pairs: &[PreferencePair],
    pad_id: u32,
    config: &OrpoConfig,
    mode: Mode,
    chunk: usize,
) -> LlmResult<OrpoOutput> {
    if pairs.is_empty() {
        return Err(LlmError::Invalid("orpo: empty batch of pairs".into()));
    }
    let p = pairs.len();
    let chosen = pairs.iter().map(|x| Example {
        prompt: x.prompt.clone(),
        completion: x.chosen.clone(),
    });
    let rejected = pairs.iter().map(|x| Example {
        prompt: x.prompt.clone(),
        completion: x.rejected.clone(),
    });
    let examples: Vec<Example> = chosen.chain(rejected).collect();
    let batch = TokenBatch::new(&examples, pad_id, model.device())?;
    let chosen_select = match config.nll {
        OrpoNll::Completion => TargetMask::Completion,
        OrpoNll::FullSequence => TargetMask::Sequence,
    };
    let mut select = vec![chosen_select; p];
    select.extend(vec![TargetMask::Completion; p]);
    let lp = TargetLogProbs::compute(model, &batch, &select, mode, chunk)?;
    let completion_means = lp.mean_per_sequence(TargetMask::Completion)?;
    let lp_chosen = completion_means.narrow(0, 0, p)?;
    let lp_rejected = completion_means.narrow(0, p, p)?;
    let nll = match config.nll {
        OrpoNll::Completion => lp_chosen.neg()?,
        OrpoNll::FullSequence => lp
            .mean_per_sequence(TargetMask::Sequence)?
            .narrow(0, 0, p)?
            .neg()?,
    };
    orpo_objective(&lp_chosen, &lp_rejected, &nll, config.beta)
}

/// The ORPO formula on per-pair terms (`[pairs]` each):
/// `log_odds = (lp_c − lp_r) − (log(1−exp(lp_c)) − log(1−exp(lp_r)))`,
/// `loss = mean(nll) − beta·mean(log σ(log_odds))`.
///
/// Mean log-probs are clamped to at most −1e-7: a probability of exactly 1 has infinite odds.
pub fn orpo_objective(
    lp_chosen: &Tensor,
    lp_rejected: &Tensor,
    nll: &Tensor,
    beta: f64,
) -> LlmResult<OrpoOutput> {
    let pairs = lp_chosen.dim(0)?;
    if lp_rejected.dims() != [pairs] || nll.dims() != [pairs] || lp_chosen.rank() != 1 {
        return Err(LlmError::Invalid(format!(
            "orpo: per-pair terms disagree: chosen {:?}, rejected {:?}, nll {:?}",
            lp_chosen.dims(),
            lp_rejected.dims(),
            nll.dims()
        )));
    }
    let lp_c = lp_chosen.minimum(-1e-7)?;
    let lp_r = lp_rejected.minimum(-1e-7)?;
    let log_odds = ((&lp_c - &lp_r)? - (log1mexp(&lp_c)? - log1mexp(&lp_r)?)?)?;
    let ratio = log_sigmoid(&log_odds)?;
    let loss = (nll.mean_all()? - (ratio.mean_all()? * beta)?)?;
    let metrics = orpo_metrics(&loss, nll, &ratio, &log_odds, lp_chosen, lp_rejected, beta)?;
    Ok(OrpoOutput {
        loss,
        metrics,
        lp_chosen: lp_chosen.clone(),
        lp_rejected: lp_rejected.clone(),
        log_odds,
        log_sigmoid_log_odds: ratio,
        nll: nll.clone(),
    })
}

fn orpo_metrics(
    loss: &Tensor,
    nll: &Tensor,
    ratio: &Tensor,
    log_odds: &Tensor,
    lp_c: &Tensor,
    lp_r: &Tensor,
    beta: f64,
) -> LlmResult<OrpoMetrics> {
    let scalar = |t: &Tensor| -> LlmResult<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    let vec = |t: &Tensor| -> LlmResult<Vec<f64>> { Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?) };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (c, r) = (vec(lp_c)?, vec(lp_r)?);
    let accuracies: Vec<f64> = c
        .iter()
        .zip(&r)
        .map(|(c, r)| f64::from(u8::from(c > r)))
        .collect();
    let margins: Vec<f64> = c.iter().zip(&r).map(|(c, r)| beta * (c - r)).collect();
    Ok(OrpoMetrics {
        loss: scalar(loss)?,
        nll_loss: mean(&vec(nll)?),
        log_odds_ratio: mean(&vec(ratio)?),
        log_odds_chosen: mean(&vec(log_odds)?),
        rewards_chosen: beta * mean(&c),
        rewards_rejected: beta * mean(&r),
        rewards_accuracies: mean(&accuracies),
        rewards_margins: mean(&margins),
        logps_chosen: mean(&c),
        logps_rejected: mean(&r),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn orpo_objective_reproduces_the_formula() -> LlmResult<()> {
        let dev = Device::Cpu;
        let c = Tensor::new(&[-4.901561260223389f64], &dev)?;
        let r = Tensor::new(&[-3.387151002883911f64], &dev)?;
        let out = orpo_objective(&c, &r, &c.neg()?, 0.1)?;
        let lo = out.log_odds.to_vec1::<f64>()?[0];
        assert!((lo - -1.541337013244629).abs() < 1e-6, "{lo}");
        let ls = out.log_sigmoid_log_odds.to_vec1::<f64>()?[0];
        assert!((ls - -1.7353357076644897).abs() < 1e-6, "{ls}");
        let m = &out.metrics;
        assert!((m.loss - (4.901561260223389 + 0.17353357076644897)).abs() < 1e-6);
        assert_eq!(m.rewards_accuracies, 0.0);
        assert!((m.rewards_margins - 0.1 * (-4.901561260223389 + 3.387151002883911)).abs() < 1e-12);
        let json = serde_json::to_value(m).unwrap();
        for key in [
            "loss",
            "nll_loss",
            "log_odds_ratio",
            "log_odds_chosen",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/accuracies",
            "rewards/margins",
        ] {
            assert!(json.get(key).is_some(), "missing metric {key}");
        }
        Ok(())
    }

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
