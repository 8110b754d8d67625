//! ORPO (Hong et al. 2024), exactly as DESIGN.md states it, with the metrics TRL's ORPOTrainer
//! logs: `loss = NLL − beta·mean(log σ(log_odds))` over per-pair mean completion log-probs.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::model::decoder::LlamaModel;
use crate::llm::model::lora::Mode;
use crate::llm::model::ops::log_sigmoid;
use crate::llm::model::scalar_op::log1mexp;
use crate::llm::objectives::batch::{Example, TargetMask, TokenBatch};
use crate::llm::objectives::loss::TargetLogProbs;

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

impl PreferencePair {
    /// One batch of every pair's prompt + chosen, then every pair's prompt + rejected: row
    /// `i` and row `i + pairs.len()` are the two answers of pair `i`.
    pub fn batch(pairs: &[Self], pad_id: u32, device: &Device) -> LlmResult<TokenBatch> {
        let chosen = pairs
            .iter()
            .map(|x| Example::new(x.prompt.clone(), x.chosen.clone()));
        let rejected = pairs
            .iter()
            .map(|x| Example::new(x.prompt.clone(), x.rejected.clone()));
        let examples: Vec<Example> = chosen.chain(rejected).collect();
        TokenBatch::new(&examples, pad_id, device)
    }
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
    let batch = PreferencePair::batch(pairs, pad_id, model.device())?;
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
}
