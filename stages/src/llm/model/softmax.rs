//! Softmax over the last dimension as one custom op with a hand-written backward
//! (`dx = p ⊙ (dp − Σ dp⊙p)`): candle's fused `softmax_last_dim` records no backward, and the
//! composition from primitives keeps five score-sized tensors alive per attention layer where
//! this keeps one (the output).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

struct SoftmaxLastDim;

/// Softmax over the last dimension of a contiguous f32/f64 CPU tensor, differentiable.
pub fn softmax_last_dim_op(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxLastDim)
}

/// Rows in parallel (candle runs its own reductions on one thread).
fn softmax_rows<T: num_like::Float + Send + Sync>(xs: &[T], width: usize) -> Vec<T> {
    let mut out = vec![T::ZERO; xs.len()];
    out.par_chunks_mut(width)
        .zip(xs.par_chunks(width))
        .for_each(|(o, row)| {
            let max = row.iter().copied().fold(T::NEG_INF, T::max);
            let mut sum = T::ZERO;
            for (o, &v) in o.iter_mut().zip(row) {
                let e = (v - max).exp();
                sum = sum + e;
                *o = e;
            }
            let inv = T::ONE / sum;
            o.iter_mut().for_each(|v| *v = *v * inv);
        });
    out
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("softmax: input must be contiguous")
        };
        let width = *layout.dims().last().unwrap_or(&1);
        if width == 0 {
            candle_core::bail!("softmax over an empty dimension")
        }
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(softmax_rows(&v[start..end], width)),
            CpuStorage::F64(v) => CpuStorage::F64(softmax_rows(&v[start..end], width)),
            _ => candle_core::bail!("softmax: only f32 and f64 are supported"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((grad_res.broadcast_sub(&dot)? * res)?))
    }
}

/// The few float operations the kernel needs, for f32 and f64.
mod num_like {
    pub trait Float:
        Copy
        + std::ops::Add<Output = Self>
        + std::ops::Sub<Output = Self>
        + std::ops::Mul<Output = Self>
        + std::ops::Div<Output = Self>
    {
        const ZERO: Self;
        const ONE: Self;
        const NEG_INF: Self;
        fn exp(self) -> Self;
        fn max(self, other: Self) -> Self;
    }

    macro_rules! float {
        ($t:ty) => {
            impl Float for $t {
                const ZERO: Self = 0.0;
                const ONE: Self = 1.0;
                const NEG_INF: Self = <$t>::NEG_INFINITY;
                fn exp(self) -> Self {
                    <$t>::exp(self)
                }
                fn max(self, other: Self) -> Self {
                    <$t>::max(self, other)
                }
            }
        };
    }
    float!(f32);
    float!(f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::model::ops::softmax_composed;
    use candle_core::{Device, Var};

    #[test]
    fn equals_the_composed_softmax_in_value_and_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f64, 3.0, (2, 3, 7), &dev)?;
        let upstream = Tensor::randn(0f64, 1.0, (2, 3, 7), &dev)?;
        let ours = softmax_last_dim_op(x.as_tensor())?;
        let composed = softmax_composed(x.as_tensor())?;
        let diff = (&ours - &composed)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-14, "{diff}");
        let g1 = (&ours * &upstream)?.sum_all()?.backward()?;
        let g2 = (&composed * &upstream)?.sum_all()?.backward()?;
        let gd = (g1.get(&x).unwrap() - g2.get(&x).unwrap())?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert!(gd < 1e-14, "{gd}");
        Ok(())
    }

    #[test]
    fn masked_rows_stay_finite() -> Result<()> {
        let x = Tensor::new(&[[-1e9f32, -1e9, -1e9], [0.0, -1e9, 1.0]], &Device::Cpu)?;
        let p = softmax_last_dim_op(&x)?.to_vec2::<f32>()?;
        assert!(p.iter().flatten().all(|v| v.is_finite()));
        assert!((p[0][0] - 1.0 / 3.0).abs() < 1e-6 && p[1][1] == 0.0);
        Ok(())
    }
}
