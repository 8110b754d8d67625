//! A frozen projection with its LoRA as one op: `y = x·Wᵀ (+ b) + scale·dropout(x)·Aᵀ·Bᵀ`.
//! The graph keeps only `y`: the dropout mask is a stateless hash of (seed, element) and is
//! recomputed in the backward, as is the rank-r activation. The backward forms `dx`
//! (through the frozen `W` only once), `dA` and `dB`, never `dW`. The composition it replaces
//! keeps the mask, the dropped input and three output-sized tensors alive per projection.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::matmul::{matmul, MatMut, MatRef, Threads};
use super::{contiguous_slice, dispatch_real, into_storage, with_slice, Real};

/// Inverted dropout with a mask that is a pure function of `(seed, element index)`, so the
/// backward (and the plain composition in tests) recompute exactly the forward's mask.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Probability of dropping an element, in [0, 1).
    pub p: f64,
    pub seed: u64,
}

impl Dropout {
    /// Whether element `i` is kept. One 64-bit hash of (seed, i/4) decides four neighbouring
    /// elements with 16 bits each (p is then exact to 1.5e-5): hashing is the cost of
    /// dropout, and the mask is recomputed in the backward.
    pub fn keeps(&self, i: usize) -> bool {
        let bits = (self.block_hash(i / 4) >> (16 * (i % 4))) & 0xFFFF;
        bits >= self.threshold()
    }

    /// The multiplier of element `i`: `1/(1-p)` if kept, else 0.
    pub fn factor(&self, i: usize) -> f64 {
        if self.keeps(i) {
            1.0 / (1.0 - self.p)
        } else {
            0.0
        }
    }

    /// Elements whose 16 random bits fall below this are dropped.
    fn threshold(&self) -> u64 {
        (self.p * 65536.0).round() as u64
    }

    /// SplitMix64's output for the `block`-th step of the stream `seed`.
    fn block_hash(&self, block: usize) -> u64 {
        mix64(
            self.seed
                .wrapping_add((block as u64).wrapping_add(1).wrapping_mul(GOLDEN)),
        )
    }

    /// `x ⊙ mask` over a flat slice whose first element has index `offset` (a multiple of 4).
    fn apply<T: Real>(&self, x: &[T], offset: usize, out: &mut [T]) {
        debug_assert!(offset.is_multiple_of(4));
        let kept = T::from_f64(1.0 / (1.0 - self.p));
        let threshold = self.threshold();
        for (j, (o, xs)) in out.chunks_mut(4).zip(x.chunks(4)).enumerate() {
            let h = self.block_hash(offset / 4 + j);
            for (k, (o, &v)) in o.iter_mut().zip(xs).enumerate() {
                let keep = ((h >> (16 * k)) & 0xFFFF) >= threshold;
                *o = if keep { v * kept } else { T::zero() };
            }
        }
    }
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finaliser: a bijective mix of a 64-bit word.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Elements per parallel dropout task.
const CHUNK: usize = 16 * 1024;

fn dropped<T: Real>(x: &[T], dropout: &Dropout) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (o, xs))| dropout.apply(xs, c * CHUNK, o));
    out
}

/// `dropout(x)` as a tensor (no backward: it is used inside backward passes and tests).
pub fn apply_dropout(x: &Tensor, dropout: Dropout) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&DropoutOp(dropout))
}

struct DropoutOp(Dropout);

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = dispatch_real!(s, "dropout", |st: T| {
            into_storage(dropped(contiguous_slice::<T>(st, l, "dropout")?, &self.0))
        });
        Ok((out, l.shape().clone()))
    }
}

/// The frozen part of a projection and how its LoRA is scaled and regularised.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// `[out, in]`, contiguous.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Option<Tensor>,
    pub scale: f64,
    /// `None` in evaluation.
    pub dropout: Option<Dropout>,
}

impl LoraLinear {
    /// `x` `[..., in]`, `a` `[r, in]`, `b` `[out, r]` → `[..., out]`.
    pub fn forward(&self, x: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (out_f, in_f) = self.weight.dims2()?;
        let (r, a_in) = a.dims2()?;
        if x.dim(D::Minus1)? != in_f || a_in != in_f || b.dims() != [out_f, r] {
            candle_core::bail!(
                "lora-linear: x {:?}, W {:?}, A {:?}, B {:?} do not fit together",
                x.dims(),
                self.weight.dims(),
                a.dims(),
                b.dims()
            )
        }
        let op = LoraLinear {
            weight: self.weight.contiguous()?,
            bias: self.bias.as_ref().map(Tensor::contiguous).transpose()?,
            ..self.clone()
        };
        x.contiguous()?
            .apply_op3(&a.contiguous()?, &b.contiguous()?, op)
    }

    fn run<T: Real>(&self, x: &[T], a: &[T], b: &[T], rows: usize) -> Result<Vec<T>> {
        let (out_f, in_f) = self.weight.dims2()?;
        let r = a.len() / in_f.max(1);
        let mut y = vec![T::zero(); rows * out_f];
        with_slice::<T, _>(&self.weight, "lora-linear weight", |w| {
            matmul(
                MatMut::new(&mut y, rows, out_f),
                MatRef::new(x, rows, in_f),
                MatRef::new(w, out_f, in_f).t(),
                false,
                T::one(),
                Threads::All,
            )
        })?;
        if let Some(bias) = &self.bias {
            with_slice::<T, _>(bias, "lora-linear bias", |bias| {
                y.par_chunks_mut(out_f).for_each(|row| {
                    row.iter_mut().zip(bias).for_each(|(v, &bv)| *v += bv);
                });
                Ok(())
            })?;
        }
        let x_in = match &self.dropout {
            Some(d) => std::borrow::Cow::Owned(dropped(x, d)),
            None => std::borrow::Cow::Borrowed(x),
        };
        let mut h = vec![T::zero(); rows * r];
        matmul(
            MatMut::new(&mut h, rows, r),
            MatRef::new(&x_in, rows, in_f),
            MatRef::new(a, r, in_f).t(),
            false,
            T::one(),
            Threads::All,
        )?;
        matmul(
            MatMut::new(&mut y, rows, out_f),
            MatRef::new(&h, rows, r),
            MatRef::new(b, out_f, r).t(),
            true,
            T::from_f64(self.scale),
            Threads::All,
        )?;
        Ok(y)
    }

    /// `dropout(x)` for the backward (just `x` in evaluation).
    fn dropped_input(&self, x: &Tensor) -> Result<Tensor> {
        match self.dropout {
            Some(d) => apply_dropout(x, d),
            None => Ok(x.clone()),
        }
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let in_f = xl.dims().last().copied().unwrap_or(0);
        let rows = xl.shape().elem_count().checked_div(in_f).unwrap_or(0);
        let out = dispatch_real!(xs, "lora-linear", |s: T| {
            let x = contiguous_slice::<T>(s, xl, "lora-linear x")?;
            let a = contiguous_slice::<T>(as_, al, "lora-linear A")?;
            let b = contiguous_slice::<T>(bs, bl, "lora-linear B")?;
            into_storage(self.run(x, a, b, rows)?)
        });
        let mut dims = xl.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.weight.dim(0)?;
        }
        Ok((out, Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out_f, in_f) = self.weight.dims2()?;
        let g = grad.contiguous()?.reshape(((), out_f))?.detach();
        let x2 = x.reshape(((), in_f))?.detach();
        let (a, b) = (a.detach(), b.detach());
        let xd = self.dropped_input(&x2)?;
        // The rank-r pieces: h = dropout(x)·Aᵀ and g·B.
        let h = xd.matmul(&a.t()?)?;
        let gb = g.matmul(&b)?;
        let d_b = (g.t()?.matmul(&h)? * self.scale)?;
        let d_a = (gb.t()?.matmul(&xd)? * self.scale)?;
        let dx = if x.track_op() {
            // dropout is linear and self-adjoint: its backward is the same masking.
            let lora_part = self.dropped_input(&(gb.matmul(&a)? * self.scale)?)?;
            Some((g.matmul(&self.weight)? + lora_part)?.reshape(x.shape())?)
        } else {
            None
        };
        Ok((dx, Some(d_a), Some(d_b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::model::kernels::testing::{assert_same_fn_and_grads, randn};
    use candle_core::Var;

    fn plain(op: &LoraLinear, x: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let in_f = x.dim(D::Minus1)?;
        let mut y = x.broadcast_matmul(&op.weight.t()?)?;
        if let Some(bias) = &op.bias {
            y = y.broadcast_add(bias)?;
        }
        let xd = match op.dropout {
            Some(d) => {
                let mask: Vec<f64> = (0..x.elem_count()).map(|i| d.factor(i)).collect();
                (x * Tensor::from_vec(mask, x.shape(), x.device())?)?
            }
            None => x.clone(),
        };
        let low = xd.reshape(((), in_f))?.matmul(&a.t()?)?.matmul(&b.t()?)?;
        let low = (low * op.scale)?.reshape(y.shape())?;
        y + low
    }

    #[test]
    fn matches_the_composition_with_and_without_dropout() -> Result<()> {
        let (in_f, out_f, r) = (12, 10, 3);
        let x = Var::from_tensor(&randn(&[2, 5, in_f], 1.0, 1)?)?;
        let a = Var::from_tensor(&randn(&[r, in_f], 0.5, 2)?)?;
        let b = Var::from_tensor(&randn(&[out_f, r], 0.5, 3)?)?;
        for dropout in [None, Some(Dropout { p: 0.3, seed: 9 })] {
            let op = LoraLinear {
                weight: randn(&[out_f, in_f], 0.3, 4)?,
                bias: Some(randn(&[out_f], 0.1, 5)?),
                scale: 2.0,
                dropout,
            };
            assert_same_fn_and_grads(
                &[&x, &a, &b],
                |v| op.forward(v[0], v[1], v[2]),
                |v| plain(&op, v[0], v[1], v[2]),
                1e-12,
            )?;
        }
        Ok(())
    }

    #[test]
    fn dropout_keeps_about_one_minus_p_and_is_reproducible() {
        let d = Dropout { p: 0.25, seed: 3 };
        let kept = (0..100_000).filter(|&i| d.keeps(i)).count();
        assert!((kept as f64 / 1e5 - 0.75).abs() < 0.01, "{kept}");
        let other = Dropout { p: 0.25, seed: 4 };
        assert!((0..64).any(|i| d.keeps(i) != other.keeps(i)));
        assert!((0..64).all(|i| d.keeps(i) == Dropout { p: 0.25, seed: 3 }.keeps(i)));
    }
}
