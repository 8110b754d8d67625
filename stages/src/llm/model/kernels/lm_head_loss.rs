//! The log-probability of each target token, `log softmax(h·Wᵀ)[target]`, without ever
//! holding the logits of more than one chunk of positions: over a 49k vocabulary the full
//! `[positions, vocab]` logits (and the softmax and gradient tensors a composition derives
//! from them) are the largest tensors of a small model's training step.
//!
//! The gradient needs no second pass over the vocabulary: `∂ log p(target)/∂h =
//! (onehot − p)·W` does not depend on the upstream gradient, so the forward computes it per
//! chunk while the logits are at hand (Liger-Kernel's trick) and keeps only that `[n, hidden]`
//! matrix; the backward scales its rows by the incoming per-position gradients.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::{matmul, MatMut, MatRef, Threads};
use super::{contiguous_slice, dispatch_real, into_storage, larger, with_slice, Real};

/// Positions per chunk: `[chunk, vocab]` logits are the only vocabulary-sized buffer.
pub const DEFAULT_CHUNK: usize = 256;

/// `[n]` log-probabilities of `targets` under `hidden` `[n, h]` · `weight` `[vocab, h]`ᵀ.
pub fn target_logprobs_fused(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[u32],
    chunk: usize,
) -> Result<Tensor> {
    let (n, h) = hidden.dims2()?;
    let (vocab, wh) = weight.dims2()?;
    if wh != h || targets.len() != n {
        candle_core::bail!(
            "lm-head log-probs: hidden {:?}, weight {:?} and {} targets do not fit together",
            hidden.dims(),
            weight.dims(),
            targets.len()
        )
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("lm-head log-probs: target {bad} is outside the vocabulary of {vocab}")
    }
    hidden.contiguous()?.apply_op1(LmHeadLogProbs {
        weight: weight.contiguous()?,
        targets: targets.to_vec(),
        chunk: chunk.max(1),
        want_grad: hidden.track_op(),
        grad_rows: Mutex::new(None),
    })
}

struct LmHeadLogProbs {
    weight: Tensor,
    targets: Vec<u32>,
    chunk: usize,
    /// Whether anything upstream trains (else the gradient rows are not formed).
    want_grad: bool,
    /// `(onehot − p)·W` per position, `[n, h]`, filled by the forward.
    grad_rows: Mutex<Option<Tensor>>,
}

impl LmHeadLogProbs {
    fn run<T: Real>(&self, hidden: &[T], h: usize) -> Result<(Vec<T>, Option<Vec<T>>)> {
        let n = hidden.len() / h.max(1);
        let vocab = self.weight.dim(0)?;
        let mut logprobs = vec![T::zero(); n];
        let mut grads = self.want_grad.then(|| vec![T::zero(); n * h]);
        let mut logits = vec![T::zero(); self.chunk.min(n) * vocab];
        with_slice::<T, _>(&self.weight, "lm-head weight", |w| {
            for start in (0..n).step_by(self.chunk) {
                let rows = self.chunk.min(n - start);
                let buf = &mut logits[..rows * vocab];
                matmul(
                    MatMut::new(buf, rows, vocab),
                    MatRef::new(&hidden[start * h..(start + rows) * h], rows, h),
                    MatRef::new(w, vocab, h).t(),
                    false,
                    T::one(),
                    Threads::All,
                )?;
                let targets = &self.targets[start..start + rows];
                let want_grad = grads.is_some();
                buf.par_chunks_mut(vocab)
                    .zip(logprobs[start..start + rows].par_iter_mut())
                    .zip(targets.par_iter())
                    .for_each(|((row, lp), &t)| *lp = log_softmax_at(row, t as usize, want_grad));
                if let Some(g) = grads.as_mut() {
                    // rows hold p − onehot; (onehot − p)·W = −(p − onehot)·W.
                    matmul(
                        MatMut::new(&mut g[start * h..(start + rows) * h], rows, h),
                        MatRef::new(buf, rows, vocab),
                        MatRef::new(w, vocab, h),
                        false,
                        -T::one(),
                        Threads::All,
                    )?;
                }
            }
            Ok(())
        })?;
        Ok((logprobs, grads))
    }
}

/// `log softmax(row)[target]`; with `into_grad`, also overwrites `row` with `p − onehot`.
/// One exponential per logit: they are the cost of this pass over the vocabulary.
fn log_softmax_at<T: Real>(row: &mut [T], target: usize, into_grad: bool) -> T {
    let max = row.iter().copied().fold(T::neg_infinity(), larger);
    let target_logit = row[target];
    let mut sum = 0f64;
    for v in row.iter_mut() {
        let e = (*v - max).exp();
        sum += e.to_f64();
        *v = e;
    }
    let lp = T::from_f64((target_logit - max).to_f64() - sum.ln());
    if into_grad {
        let inv = T::from_f64(1.0 / sum);
        row.iter_mut().for_each(|v| *v *= inv);
        row[target] -= T::one();
    }
    lp
}

impl CustomOp1 for LmHeadLogProbs {
    fn name(&self) -> &'static str {
        "lm-head-logprobs"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h) = layout.shape().dims2()?;
        let (out, grads) = dispatch_real!(storage, "lm-head-logprobs", |s: T| {
            let hidden = contiguous_slice::<T>(s, layout, "lm-head-logprobs")?;
            let (lp, g) = self.run(hidden, h)?;
            let g = g
                .map(|g| Tensor::from_vec(g, (n, h), &candle_core::Device::Cpu))
                .transpose()?;
            (into_storage(lp), g)
        });
        *self
            .grad_rows
            .lock()
            .map_err(|_| candle_core::Error::Msg("lm-head-logprobs: poisoned lock".into()))? =
            grads;
        Ok((out, Shape::from(n)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let rows = self
            .grad_rows
            .lock()
            .map_err(|_| candle_core::Error::Msg("lm-head-logprobs: poisoned lock".into()))?
            .clone();
        let Some(rows) = rows else {
            candle_core::bail!(
                "lm-head-logprobs: backward through a forward that ran without gradient tracking"
            )
        };
        Ok(Some(rows.broadcast_mul(&grad.unsqueeze(1)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::model::kernels::testing::{assert_same_fn_and_grads, randn};
    use crate::llm::objectives::loss::log_prob_of;
    use candle_core::{Device, Var};

    #[test]
    fn matches_log_softmax_of_full_logits_in_value_and_gradient() -> Result<()> {
        let (n, h, vocab) = (11, 6, 50);
        let hidden = Var::from_tensor(&randn(&[n, h], 2.0, 1)?)?;
        let w = randn(&[vocab, h], 1.0, 2)?;
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7) % vocab as u32).collect();
        let t = Tensor::new(targets.as_slice(), &Device::Cpu)?;
        for chunk in [1, 4, 64] {
            assert_same_fn_and_grads(
                &[&hidden],
                |v| target_logprobs_fused(v[0], &w, &targets, chunk),
                |v| {
                    log_prob_of(&v[0].matmul(&w.t()?)?, &t)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))
                },
                1e-12,
            )?;
        }
        Ok(())
    }

    #[test]
    fn targets_outside_the_vocabulary_are_errors() {
        let h = randn(&[2, 3], 1.0, 1).unwrap();
        let w = randn(&[5, 3], 1.0, 2).unwrap();
        let err = target_logprobs_fused(&h, &w, &[1, 5], 8).unwrap_err();
        assert!(err.to_string().contains("target 5"), "{err}");
    }
}
