//! Rotary embedding fused with the head split: a projection's output `[b, t, heads·d]` becomes
//! rotated heads `[b, heads, t, d]` in one pass (HF's `rotate_half` convention). The backward
//! is the inverse rotation. The composition it replaces (reshape, transpose, contiguous copy,
//! two multiplies, a half-rotation and an add) keeps five full tensors per call alive.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_slice, dispatch_real, into_storage, with_slice, Real};

/// Rotates `x` `[b, t, heads·d]` by `cos`/`sin` `[b, 1, t, d]` (the model's rope angles) into
/// `[b, heads, t, d]`.
pub fn rope_heads_fused(x: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, width) = x.dims3()?;
    if heads == 0 || !width.is_multiple_of(heads) || !(width / heads).is_multiple_of(2) {
        candle_core::bail!("rope: {width} features do not split into {heads} even-sized heads")
    }
    let d = width / heads;
    for (name, a) in [("cos", cos), ("sin", sin)] {
        if a.dims() != [b, 1, t, d] {
            candle_core::bail!(
                "rope: {name} is {:?}, expected [{b}, 1, {t}, {d}]",
                a.dims()
            )
        }
    }
    x.contiguous()?.apply_op1(RopeHeads {
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        heads,
    })
}

struct RopeHeads {
    cos: Tensor,
    sin: Tensor,
    heads: usize,
}

/// The sizes of one call: batch, tokens, heads, head dim.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    d: usize,
}

/// `x` `[b, t, h·d]` → `[b, h, t, d]`: one task per (batch, head) output block.
fn rotate<T: Real>(x: &[T], cos: &[T], sin: &[T], n: Dims) -> Vec<T> {
    let Dims { t, h, d, .. } = n;
    let half = d / 2;
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(t * d)
        .enumerate()
        .for_each(|(bh, block)| {
            let (bi, hi) = (bh / h, bh % h);
            for ti in 0..t {
                let src = &x[(bi * t + ti) * h * d + hi * d..][..d];
                let angle = (bi * t + ti) * d;
                let (c, s) = (&cos[angle..angle + d], &sin[angle..angle + d]);
                let dst = &mut block[ti * d..(ti + 1) * d];
                for i in 0..half {
                    let (x1, x2) = (src[i], src[i + half]);
                    dst[i] = x1 * c[i] - x2 * s[i];
                    dst[i + half] = x2 * c[i + half] + x1 * s[i + half];
                }
            }
        });
    out
}

/// The inverse: `g` `[b, h, t, d]` → `dx` `[b, t, h·d]`, one task per token row.
fn unrotate<T: Real>(g: &[T], cos: &[T], sin: &[T], n: Dims) -> Vec<T> {
    let Dims { t, h, d, .. } = n;
    let half = d / 2;
    let mut dx = vec![T::zero(); g.len()];
    dx.par_chunks_mut(h * d).enumerate().for_each(|(bt, row)| {
        let (bi, ti) = (bt / t, bt % t);
        let angle = bt * d;
        let (c, s) = (&cos[angle..angle + d], &sin[angle..angle + d]);
        for hi in 0..h {
            let src = &g[((bi * h + hi) * t + ti) * d..][..d];
            let dst = &mut row[hi * d..(hi + 1) * d];
            for i in 0..half {
                let (g1, g2) = (src[i], src[i + half]);
                dst[i] = g1 * c[i] + g2 * s[i + half];
                dst[i + half] = g2 * c[i + half] - g1 * s[i];
            }
        }
    });
    dx
}

/// Which way a call rotates.
#[derive(Clone, Copy)]
enum Direction {
    /// `[b, t, h·d]` → rotated `[b, h, t, d]`.
    Forward,
    /// The gradient back: `[b, h, t, d]` → `[b, t, h·d]`.
    Backward,
}

impl RopeHeads {
    fn run(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
        n: Dims,
        direction: Direction,
    ) -> Result<CpuStorage> {
        fn typed<T: Real>(
            op: &RopeHeads,
            storage: &CpuStorage,
            layout: &Layout,
            n: Dims,
            direction: Direction,
        ) -> Result<CpuStorage> {
            let x = contiguous_slice::<T>(storage, layout, "rope-heads")?;
            with_slice::<T, _>(&op.cos, "rope cos", |cos| {
                with_slice::<T, _>(&op.sin, "rope sin", |sin| {
                    if cos.len() != n.b * n.t * n.d || x.len() != n.b * n.t * n.h * n.d {
                        candle_core::bail!("rope-heads: sizes do not match the angles")
                    }
                    Ok(into_storage(match direction {
                        Direction::Forward => rotate(x, cos, sin, n),
                        Direction::Backward => unrotate(x, cos, sin, n),
                    }))
                })
            })
        }
        Ok(dispatch_real!(storage, "rope-heads", |s: T| {
            typed::<T>(self, s, layout, n, direction)?
        }))
    }
}

impl CustomOp1 for RopeHeads {
    fn name(&self) -> &'static str {
        "rope-heads"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, t, width) = layout.shape().dims3()?;
        let n = Dims {
            b,
            t,
            h: self.heads,
            d: width / self.heads,
        };
        let out = self.run(storage, layout, n, Direction::Forward)?;
        Ok((out, Shape::from((n.b, n.h, n.t, n.d))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = RopeHeadsBackward {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            heads: self.heads,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// The backward as an op of its own: `[b, h, t, d]` → `[b, t, h·d]`.
struct RopeHeadsBackward {
    cos: Tensor,
    sin: Tensor,
    heads: usize,
}

impl CustomOp1 for RopeHeadsBackward {
    fn name(&self) -> &'static str {
        "rope-heads-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, t, d) = layout.shape().dims4()?;
        let n = Dims { b, t, h, d };
        let fwd = RopeHeads {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            heads: self.heads,
        };
        let out = fwd.run(storage, layout, n, Direction::Backward)?;
        Ok((out, Shape::from((b, t, h * d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::model::kernels::testing::{assert_same_fn_and_grads, randn};
    use crate::llm::model::ops::rotate_half;
    use candle_core::Var;

    /// The model's composition: split heads, then `x·cos + rotate_half(x)·sin`.
    fn plain(x: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, t, w) = x.dims3()?;
        let x = x
            .reshape((b, t, heads, w / heads))?
            .transpose(1, 2)?
            .contiguous()?;
        x.broadcast_mul(cos)? + rotate_half(&x)?.broadcast_mul(sin)?
    }

    #[test]
    fn matches_the_composition_in_value_and_gradient() -> Result<()> {
        let (b, t, h, d) = (2, 5, 3, 8);
        let x = Var::from_tensor(&randn(&[b, t, h * d], 1.0, 1)?)?;
        // Arbitrary (not unit-norm) angles: the kernel must not assume cos² + sin² = 1.
        let cos = randn(&[b, 1, t, d], 1.0, 2)?;
        let sin = randn(&[b, 1, t, d], 1.0, 3)?;
        assert_same_fn_and_grads(
            &[&x],
            |v| rope_heads_fused(v[0], &cos, &sin, h),
            |v| plain(v[0], &cos, &sin, h),
            1e-13,
        )
    }

    #[test]
    fn refuses_mismatched_angles() {
        let x = randn(&[1, 2, 8], 1.0, 1).unwrap();
        let cos = randn(&[1, 1, 3, 4], 1.0, 2).unwrap();
        assert!(rope_heads_fused(&x, &cos, &cos, 2).is_err());
        assert!(rope_heads_fused(&x, &cos, &cos, 3).is_err());
    }
}
