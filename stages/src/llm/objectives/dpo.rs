//! DPO (Rafailov et al. 2023) as TRL's `DPOTrainer` computes it, with its metrics: a pair's
//! log-prob is the SUM of its completion tokens' log-probs (their mean for `ipo`), and the
//! reference model's log-probs are given (computed once, before training).
//!
//! `logits = (πc − πr) − (ρc − ρr)`;
//! `sigmoid`: `loss = −(1−ε)·log σ(β·logits) − ε·log σ(−β·logits)` (ε = `label_smoothing`, cDPO);
//! `ipo`: `loss = (logits − 1/(2β))²`; both averaged over the pairs of a batch.
//! `rewards/chosen = β·(πc − ρc)`, `rewards/rejected = β·(πr − ρr)`.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::model::decoder::LlamaModel;
use crate::llm::model::lora::Mode;
use crate::llm::model::ops::log_sigmoid;
use crate::llm::objectives::batch::TargetMask;
use crate::llm::objectives::loss::TargetLogProbs;
use crate::llm::objectives::orpo::PreferencePair;

/// TRL's `loss_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLossType {
    /// The DPO paper's loss (with `label_smoothing`: the conservative cDPO).
    #[default]
    Sigmoid,
    /// Azar et al. 2023: a squared loss on length-averaged log-probs.
    Ipo,
}

/// DPO hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    /// β: how far the policy may move from the reference.
    pub beta: f64,
    pub loss_type: DpoLossType,
    /// ε of cDPO: the assumed share of flipped labels (sigmoid only).
    pub label_smoothing: f64,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: DpoLossType::Sigmoid,
            label_smoothing: 0.0,
        }
    }
}

/// What TRL's DPOTrainer logs, under its names, averaged over the pairs of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoMetrics {
    pub loss: f64,
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

/// The DPO loss to backpropagate and its metrics.
#[derive(Debug, Clone)]
pub struct DpoOutput {
    pub loss: Tensor,
    pub metrics: DpoMetrics,
}

/// The completion log-probs of a batch of pairs, summed per sequence: `[pairs]` for the chosen
/// and the rejected answers. Both sequences of a pair go through the model in one forward.
pub fn pair_logps(
    model: &LlamaModel,
    pairs: &[PreferencePair],
    pad_id: u32,
    mode: Mode,
    chunk: usize,
) -> LlmResult<(Tensor, Tensor)> {
    if pairs.is_empty() {
        return Err(LlmError::Invalid("dpo: empty batch of pairs".into()));
    }
    let p = pairs.len();
    let batch = PreferencePair::batch(pairs, pad_id, model.device())?;
    let select = vec![TargetMask::Completion; 2 * p];
    let lp = TargetLogProbs::compute(model, &batch, &select, mode, chunk)?;
    let means = lp.mean_per_sequence(TargetMask::Completion)?;
    // mean × count: the sum over each sequence's completion tokens.
    let lens: Vec<f32> = batch.completion_lens.iter().map(|&n| n as f32).collect();
    let lens = Tensor::new(lens, means.device())?.to_dtype(means.dtype())?;
    let sums = (means * lens)?;
    Ok((sums.narrow(0, 0, p)?, sums.narrow(0, p, p)?))
}

/// Completion tokens of the chosen and the rejected answers of each pair, for `ipo`'s means.
pub fn completion_lengths(pairs: &[PreferencePair]) -> (Vec<f64>, Vec<f64>) {
    pairs
        .iter()
        .map(|p| (p.chosen.len() as f64, p.rejected.len() as f64))
        .unzip()
}

/// DPO on a batch of pairs: the policy's summed log-probs from one forward of `model`, the
/// reference's given as `(chosen, rejected)` sums per pair.
pub fn dpo_loss(
    model: &LlamaModel,
    pairs: &[PreferencePair],
    reference: &[(f64, f64)],
    pad_id: u32,
    config: &DpoConfig,
    mode: Mode,
    chunk: usize,
) -> LlmResult<DpoOutput> {
    if reference.len() != pairs.len() {
        return Err(LlmError::Invalid(format!(
            "dpo: {} pairs but {} reference log-probs",
            pairs.len(),
            reference.len()
        )));
    }
    let (policy_chosen, policy_rejected) = pair_logps(model, pairs, pad_id, mode, chunk)?;
    let (ref_chosen, ref_rejected): (Vec<f64>, Vec<f64>) = reference.iter().copied().unzip();
    let lengths = match config.loss_type {
        DpoLossType::Sigmoid => None,
        DpoLossType::Ipo => Some(completion_lengths(pairs)),
    };
    dpo_objective(
        (&policy_chosen, &policy_rejected),
        (&ref_chosen, &ref_rejected),
        lengths.as_ref().map(|(c, r)| (c.as_slice(), r.as_slice())),
        config,
    )
}

/// The DPO formula on per-pair summed log-probs (`[pairs]` tensors for the policy, numbers
/// for the reference). With `lengths` (ipo), every log-prob is divided by its completion's
/// token count first, as TRL averages them for `ipo`.
pub fn dpo_objective(
    (policy_chosen, policy_rejected): (&Tensor, &Tensor),
    (ref_chosen, ref_rejected): (&[f64], &[f64]),
    lengths: Option<(&[f64], &[f64])>,
    config: &DpoConfig,
) -> LlmResult<DpoOutput> {
    let pairs = policy_chosen.dim(0)?;
    if policy_chosen.rank() != 1
        || policy_rejected.dims() != [pairs]
        || ref_chosen.len() != pairs
        || ref_rejected.len() != pairs
    {
        return Err(LlmError::Invalid(format!(
            "dpo: per-pair terms disagree: policy {:?} and {:?}, reference {} and {}",
            policy_chosen.dims(),
            policy_rejected.dims(),
            ref_chosen.len(),
            ref_rejected.len()
        )));
    }
    let (dtype, device) = (policy_chosen.dtype(), policy_chosen.device());
    let per_pair =
        |v: Vec<f64>| -> LlmResult<Tensor> { Ok(Tensor::new(v, device)?.to_dtype(dtype)?) };
    let ones = vec![1.0; pairs];
    let (len_c, len_r) = lengths.unwrap_or((&ones, &ones));
    let (pi_c, pi_r) = (
        policy_chosen.div(&per_pair(len_c.to_vec())?)?,
        policy_rejected.div(&per_pair(len_r.to_vec())?)?,
    );
    let rho_c: Vec<f64> = ref_chosen.iter().zip(len_c).map(|(x, n)| x / n).collect();
    let rho_r: Vec<f64> = ref_rejected.iter().zip(len_r).map(|(x, n)| x / n).collect();
    let ref_logratio: Vec<f64> = rho_c.iter().zip(&rho_r).map(|(c, r)| c - r).collect();
    let logits = ((&pi_c - &pi_r)? - per_pair(ref_logratio)?)?;
    let beta = config.beta;
    let losses = match config.loss_type {
        DpoLossType::Sigmoid => {
            let eps = config.label_smoothing;
            let pos = (log_sigmoid(&(&logits * beta)?)? * -(1.0 - eps))?;
            if eps > 0.0 {
                (pos - (log_sigmoid(&(&logits * -beta)?)? * eps)?)?
            } else {
                pos
            }
        }
        DpoLossType::Ipo => (logits - 1.0 / (2.0 * beta))?.sqr()?,
    };
    let loss = losses.mean_all()?;
    let metrics = dpo_metrics(&loss, (&pi_c, &pi_r), (&rho_c, &rho_r), beta)?;
    Ok(DpoOutput { loss, metrics })
}

fn dpo_metrics(
    loss: &Tensor,
    (pi_c, pi_r): (&Tensor, &Tensor),
    (rho_c, rho_r): (&[f64], &[f64]),
    beta: f64,
) -> LlmResult<DpoMetrics> {
    let vec = |t: &Tensor| -> LlmResult<Vec<f64>> { Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?) };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (c, r) = (vec(pi_c)?, vec(pi_r)?);
    let chosen: Vec<f64> = c.iter().zip(rho_c).map(|(p, q)| beta * (p - q)).collect();
    let rejected: Vec<f64> = r.iter().zip(rho_r).map(|(p, q)| beta * (p - q)).collect();
    let accuracies: Vec<f64> = chosen
        .iter()
        .zip(&rejected)
        .map(|(c, r)| f64::from(u8::from(c > r)))
        .collect();
    let margins: Vec<f64> = chosen.iter().zip(&rejected).map(|(c, r)| c - r).collect();
    Ok(DpoMetrics {
        loss: loss.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        rewards_chosen: mean(&chosen),
        rewards_rejected: mean(&rejected),
        rewards_accuracies: mean(&accuracies),
        rewards_margins: mean(&margins),
        logps_chosen: mean(&c),
        logps_rejected: mean(&r),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn objective(
        policy: (&[f64], &[f64]),
        reference: (&[f64], &[f64]),
        lengths: Option<(&[f64], &[f64])>,
        config: &DpoConfig,
    ) -> DpoOutput {
        let dev = Device::Cpu;
        let c = Tensor::new(policy.0, &dev).unwrap();
        let r = Tensor::new(policy.1, &dev).unwrap();
        dpo_objective((&c, &r), reference, lengths, config).unwrap()
    }

    /// The formulas by hand on two pairs: sigmoid, cDPO and IPO.
    #[test]
    fn the_objective_is_trls_formula() {
        let (pc, pr) = ([-10.0, -20.0], [-12.0, -18.0]);
        let (rc, rr) = ([-11.0, -19.0], [-11.5, -18.5]);
        let logits = [
            (-10.0 + 12.0) - (-11.0 + 11.5),
            (-20.0 + 18.0) - (-19.0 + 18.5),
        ];
        let ls = |x: f64| -(1.0 + (-x).exp()).ln();
        let sig = objective((&pc, &pr), (&rc, &rr), None, &DpoConfig::default());
        let want = -(ls(0.1 * logits[0]) + ls(0.1 * logits[1])) / 2.0;
        assert!((sig.metrics.loss - want).abs() < 1e-12, "{sig:?}");
        let m = &sig.metrics;
        assert!((m.rewards_chosen - 0.1 * ((-10.0 + 11.0) + (-20.0 + 19.0)) / 2.0).abs() < 1e-12);
        assert!((m.rewards_margins - (m.rewards_chosen - m.rewards_rejected)).abs() < 1e-12);
        assert_eq!(m.rewards_accuracies, 0.5);
        assert_eq!((m.logps_chosen, m.logps_rejected), (-15.0, -15.0));

        let smooth = DpoConfig {
            label_smoothing: 0.2,
            ..DpoConfig::default()
        };
        let cdpo = objective((&pc, &pr), (&rc, &rr), None, &smooth);
        let want: f64 = logits
            .iter()
            .map(|&l| -0.8 * ls(0.1 * l) - 0.2 * ls(-0.1 * l))
            .sum::<f64>()
            / 2.0;
        assert!((cdpo.metrics.loss - want).abs() < 1e-12);

        let ipo = DpoConfig {
            beta: 0.5,
            loss_type: DpoLossType::Ipo,
            label_smoothing: 0.0,
        };
        let (lc, lr) = ([2.0, 4.0], [3.0, 6.0]);
        let out = objective((&pc, &pr), (&rc, &rr), Some((&lc, &lr)), &ipo);
        let mean_logits: [f64; 2] = [
            (-10.0 / 2.0 - -12.0 / 3.0) - (-11.0 / 2.0 - -11.5 / 3.0),
            (-20.0 / 4.0 - -18.0 / 6.0) - (-19.0 / 4.0 - -18.5 / 6.0),
        ];
        let want = mean_logits.iter().map(|l| (l - 1.0).powi(2)).sum::<f64>() / 2.0;
        assert!((out.metrics.loss - want).abs() < 1e-12);
        assert!((out.metrics.logps_chosen - (-5.0 + -5.0) / 2.0).abs() < 1e-12);
    }

    /// The gradient of the objective with respect to the policy's log-probs equals finite
    /// differences, for each loss type.
    #[test]
    fn the_objective_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let (rc, rr) = ([-11.0, -19.0, -7.0], [-11.5, -18.5, -9.0]);
        let lengths = ([2.0, 4.0, 3.0], [3.0, 6.0, 2.0]);
        let configs = [
            (DpoConfig::default(), None),
            (
                DpoConfig {
                    label_smoothing: 0.1,
                    beta: 0.3,
                    ..DpoConfig::default()
                },
                None,
            ),
            (
                DpoConfig {
                    beta: 0.5,
                    loss_type: DpoLossType::Ipo,
                    label_smoothing: 0.0,
                },
                Some((&lengths.0[..], &lengths.1[..])),
            ),
        ];
        for (config, lens) in configs {
            let pc = Var::new(&[-10.0f64, -20.0, -6.0], &dev).unwrap();
            let pr = Var::new(&[-12.0f64, -18.0, -9.5], &dev).unwrap();
            let policy = (pc.as_tensor(), pr.as_tensor());
            let out = dpo_objective(policy, (&rc, &rr), lens, &config).unwrap();
            let grads = out.loss.backward().unwrap();
            let gc = grads.get(&pc).unwrap().to_vec1::<f64>().unwrap();
            let value =
                |c: &[f64], r: &[f64]| objective((c, r), (&rc, &rr), lens, &config).metrics.loss;
            let base_c = pc.to_vec1::<f64>().unwrap();
            let base_r = pr.to_vec1::<f64>().unwrap();
            for i in 0..3 {
                let h = 1e-5;
                let (mut up, mut down) = (base_c.clone(), base_c.clone());
                up[i] += h;
                down[i] -= h;
                let fd = (value(&up, &base_r) - value(&down, &base_r)) / (2.0 * h);
                assert!(
                    (fd - gc[i]).abs() < 1e-8,
                    "{config:?} pair {i}: {fd} vs {}",
                    gc[i]
                );
            }
        }
    }
}
