//! How faithfully an export reproduces the merged model, measured the way the engine fixtures
//! measure the model against transformers: mean next-token NLL, the top-10 logits at the last
//! position, and the greedy continuation; plus the largest difference over every logit.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::llm::{LlamaModel, LlmResult, Mode};

/// Tokens of greedy continuation compared (the engine fixtures use 24).
pub const GREEDY_TOKENS: usize = 24;
/// How many of the reference's highest last-position logits are compared.
pub const TOP_K: usize = 10;

/// What one model does on the probe, computed once per model.
#[derive(Debug, Clone)]
pub struct ProbeRun {
    /// `[positions, vocab]`, row-major.
    logits: Vec<f32>,
    vocab: usize,
    /// Mean NLL of each probe token given those before it.
    nll: f64,
    /// Greedy tokens after the probe.
    greedy: Vec<u32>,
}

/// The merged model's figures on the probe, written to the summary so that other runtimes
/// (transformers, llama.cpp: `scripts/verify-export.py`) can be checked against them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeFigures {
    /// The probe's token ids.
    pub ids: Vec<u32>,
    /// Mean next-token NLL over the probe.
    pub nll: f64,
    /// The 10 highest logits at the last position, `[token id, logit]`, highest first.
    pub top10: Vec<(u32, f32)>,
    /// Greedy tokens after the probe.
    pub greedy: Vec<u32>,
}

/// An export against the merged model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Largest |logit difference| over every position and vocabulary entry of the probe.
    pub max_logit_diff: f64,
    /// Largest |difference| among the reference's 10 highest logits at the last position.
    pub top10_logit_diff: f64,
    /// |difference| of the probe's mean next-token NLL.
    pub nll_diff: f64,
    /// Leading greedy tokens after the probe that are the same, of `greedy_tokens`.
    pub greedy_agree: usize,
    pub greedy_tokens: usize,
    /// Whether the next token after the probe is the same.
    pub same_argmax: bool,
}

impl ProbeRun {
    /// Runs `model` on `probe` (at least two tokens): every position's logits, then
    /// [`GREEDY_TOKENS`] greedy steps.
    pub fn of(model: &LlamaModel, probe: &[u32]) -> LlmResult<Self> {
        let input = Tensor::new(probe, model.device())?.unsqueeze(0)?;
        let logits = model
            .forward(&input, None, Mode::Eval)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let vocab = model.config().vocab_size;
        let nll = mean_nll(&logits, vocab, probe);
        let greedy = greedy_continuation(model, probe, GREEDY_TOKENS)?;
        Ok(Self {
            logits,
            vocab,
            nll,
            greedy,
        })
    }

    /// What the summary records of this run on `probe`.
    pub fn figures(&self, probe: &[u32]) -> ProbeFigures {
        let last = self.last_row();
        ProbeFigures {
            ids: probe.to_vec(),
            nll: self.nll,
            top10: top_indices(last, TOP_K)
                .into_iter()
                .map(|i| (i as u32, last[i]))
                .collect(),
            greedy: self.greedy.clone(),
        }
    }

    /// The figures of `self` (an export) against `reference` (the merged model).
    pub fn against(&self, reference: &ProbeRun) -> Fidelity {
        let max_logit_diff = self
            .logits
            .iter()
            .zip(&reference.logits)
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(0.0, f64::max);
        let (ours, want) = (self.last_row(), reference.last_row());
        let top10_logit_diff = top_indices(want, TOP_K)
            .into_iter()
            .map(|i| f64::from((ours[i] - want[i]).abs()))
            .fold(0.0, f64::max);
        let greedy_agree = self
            .greedy
            .iter()
            .zip(&reference.greedy)
            .take_while(|(a, b)| a == b)
            .count();
        Fidelity {
            max_logit_diff,
            top10_logit_diff,
            nll_diff: (self.nll - reference.nll).abs(),
            greedy_agree,
            greedy_tokens: reference.greedy.len(),
            same_argmax: argmax(ours) == argmax(want),
        }
    }

    fn last_row(&self) -> &[f32] {
        &self.logits[self.logits.len() - self.vocab..]
    }
}

/// Mean over positions `1..` of `-log p(probe[i] | probe[..i])`, in f64.
fn mean_nll(logits: &[f32], vocab: usize, probe: &[u32]) -> f64 {
    let terms: Vec<f64> = logits
        .chunks(vocab)
        .zip(probe.iter().skip(1))
        .map(|(row, &next)| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
            f64::from(max) + sum.ln() - f64::from(row[next as usize])
        })
        .collect();
    terms.iter().sum::<f64>() / terms.len().max(1) as f64
}

/// `n` greedy tokens after `ids` through the KV cache (no stop token: the comparison wants a
/// fixed length).
fn greedy_continuation(model: &LlamaModel, ids: &[u32], n: usize) -> LlmResult<Vec<u32>> {
    let mut cache = model.new_cache();
    let device = model.device().clone();
    let mut input = Tensor::new(ids, &device)?.unsqueeze(0)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let logits = model
            .forward_cached_last(&input, None, &mut cache)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let next = argmax(&logits) as u32;
        out.push(next);
        input = Tensor::new(&[next], &device)?.unsqueeze(0)?;
    }
    Ok(out)
}

/// Indices of the `k` largest values, largest first.
fn top_indices(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    idx.truncate(k);
    idx
}

pub(crate) fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(logits: Vec<f32>, vocab: usize, greedy: Vec<u32>, probe: &[u32]) -> ProbeRun {
        ProbeRun {
            nll: mean_nll(&logits, vocab, probe),
            logits,
            vocab,
            greedy,
        }
    }

    #[test]
    fn nll_is_the_mean_cross_entropy_of_the_next_tokens() {
        // Uniform over 4: ln 4 per position, whatever the target.
        let nll = mean_nll(&[0.0; 8], 4, &[1, 2, 3]);
        assert!((nll - 4f64.ln()).abs() < 1e-12);
        // A sure prediction costs nothing.
        let nll = mean_nll(&[0.0, 50.0, 0.0, 0.0], 4, &[0, 1]);
        assert!(nll < 1e-12);
    }

    #[test]
    fn compares_top_logits_greedy_prefix_and_next_token() {
        let probe = [0, 1];
        let want = run(
            vec![0.0, 1.0, 5.0, 3.0, 0.0, 1.0, 5.0, 3.0],
            4,
            vec![2, 3, 1],
            &probe,
        );
        // Entry 0 is outside the reference's top-2 but changes most.
        let got = run(
            vec![0.0, 1.5, 5.0, 3.0, 2.0, 1.0, 4.5, 3.0],
            4,
            vec![2, 3, 0],
            &probe,
        );
        let f = got.against(&want);
        assert_eq!(f.max_logit_diff, 2.0);
        assert_eq!(top_indices(want.last_row(), 2), vec![2, 3]);
        assert_eq!(f.top10_logit_diff, 2.0, "all 4 are in the top 10");
        assert_eq!((f.greedy_agree, f.greedy_tokens), (2, 3));
        assert!(f.same_argmax);
        assert!(f.nll_diff > 0.0 && want.against(&want).nll_diff == 0.0);
        let figures = want.figures(&probe);
        assert_eq!(figures.top10, vec![(2, 5.0), (3, 3.0), (1, 1.0), (0, 0.0)]);
        assert_eq!((figures.ids, figures.greedy), (vec![0, 1], vec![2, 3, 1]));
    }
}
