//! RMSNorm `y = x / sqrt(mean(x²) + eps) · w` as one op over rows in parallel, with a
//! hand-written backward: `dx = r·(w⊙g − x·r·mean(x̂⊙w⊙g))` with `x̂ = r·x`, `r = 1/rms`, and
//! `dw = Σ_rows g⊙x̂` (formed only when the weight is trained). The composition it replaces
//! keeps five row-sized tensors alive per norm; this keeps its output.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_slice, dispatch_real, into_storage, Real};

/// `x` `[..., h]`, `weight` `[h]`; both contiguous f32/f64 on the CPU.
pub fn rms_norm_fused(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2_arc(
        &weight.contiguous()?,
        std::sync::Arc::new(Box::new(RmsNorm { eps })),
    )
}

struct RmsNorm {
    eps: f64,
}

fn width(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1)
}

/// `1/sqrt(mean(row²) + eps)`, accumulated in f64.
fn inv_rms<T: Real>(row: &[T], eps: f64) -> f64 {
    let sum_sq: f64 = row.iter().map(|&v| v.to_f64() * v.to_f64()).sum();
    1.0 / (sum_sq / row.len() as f64 + eps).sqrt()
}

fn forward<T: Real>(x: &[T], w: &[T], h: usize, eps: f64) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .for_each(|(o, row)| {
            let r = T::from_f64(inv_rms(row, eps));
            for ((o, &v), &wi) in o.iter_mut().zip(row).zip(w) {
                *o = v * r * wi;
            }
        });
    out
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = width(xl);
        if wl.shape().elem_count() != h || h == 0 {
            candle_core::bail!(
                "rms-norm: weight {:?} does not match rows of {h}",
                wl.dims()
            )
        }
        let out = dispatch_real!(xs, "rms-norm", |s: T| {
            let x = contiguous_slice::<T>(s, xl, "rms-norm")?;
            let w = contiguous_slice::<T>(ws, wl, "rms-norm weight")?;
            into_storage(forward(x, w, h, self.eps))
        });
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &g, &RmsNormBackward { eps: self.eps })?;
        // The norm weights of a LoRA model are frozen: no dw unless someone trains them.
        let dw = if w.track_op() {
            let (x2, g2) = (x.flatten_to(x.rank() - 2)?, g.flatten_to(g.rank() - 2)?);
            let h = x.dim(candle_core::D::Minus1)?;
            let x2 = x2.reshape(((), h))?;
            let normed = rms_norm_fused(&x2, &Tensor::ones(h, x.dtype(), x.device())?, self.eps)?;
            Some((normed * g2.reshape(((), h))?)?.sum(0)?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// `dx` from `x`, `w` and the output gradient, one row per task.
struct RmsNormBackward {
    eps: f64,
}

fn backward<T: Real>(x: &[T], w: &[T], g: &[T], h: usize, eps: f64) -> Vec<T> {
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(h)
        .zip(x.par_chunks(h).zip(g.par_chunks(h)))
        .for_each(|(d, (row, gr))| {
            let r = inv_rms(row, eps);
            // mean(x̂ ⊙ w ⊙ g) with x̂ = r·x
            let dot: f64 = row
                .iter()
                .zip(gr)
                .zip(w)
                .map(|((&v, &gv), &wv)| v.to_f64() * gv.to_f64() * wv.to_f64())
                .sum::<f64>()
                * r
                / h as f64;
            let (rt, c) = (T::from_f64(r), T::from_f64(r * dot));
            for (((d, &v), &gv), &wv) in d.iter_mut().zip(row).zip(gr).zip(w) {
                *d = rt * (wv * gv - v * c);
            }
        });
    dx
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = width(xl);
        let out = dispatch_real!(xs, "rms-norm-backward", |s: T| {
            let x = contiguous_slice::<T>(s, xl, "rms-norm-backward")?;
            let w = contiguous_slice::<T>(ws, wl, "rms-norm-backward")?;
            let g = contiguous_slice::<T>(gs, gl, "rms-norm-backward")?;
            if g.len() != x.len() {
                candle_core::bail!("rms-norm-backward: gradient shape differs from input")
            }
            into_storage(backward(x, w, g, h, self.eps))
        });
        Ok((out, xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::model::kernels::testing::{assert_same_fn_and_grads, randn};
    use crate::llm::model::ops::rms_norm_composed;
    use candle_core::{Device, Var};

    #[test]
    fn matches_the_composition_in_value_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&randn(&[3, 5, 16], 2.0, 1)?)?;
        let w = Var::from_tensor(&(randn(&[16], 0.3, 2)? + 1.0)?)?;
        assert_same_fn_and_grads(
            &[&x, &w],
            |v| rms_norm_fused(v[0], v[1], 1e-5),
            |v| rms_norm_composed(v[0], v[1], 1e-5),
            1e-12,
        )?;
        // f32 agrees with the f64 reference to f32 precision.
        let x32 = x.as_tensor().to_dtype(candle_core::DType::F32)?;
        let w32 = w.as_tensor().to_dtype(candle_core::DType::F32)?;
        let ours = rms_norm_fused(&x32, &w32, 1e-5)?.to_dtype(candle_core::DType::F64)?;
        let want = rms_norm_composed(x.as_tensor(), w.as_tensor(), 1e-5)?;
        let diff = (ours - want)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-5, "{diff}");
        let _ = dev;
        Ok(())
    }

    #[test]
    fn frozen_weight_gets_no_gradient() -> Result<()> {
        let x = Var::from_tensor(&randn(&[4, 8], 1.0, 3)?)?;
        let w = randn(&[8], 1.0, 4)?;
        let grads = rms_norm_fused(x.as_tensor(), &w, 1e-6)?
            .sum_all()?
            .backward()?;
        assert!(grads.get(&w).is_none() && grads.get(&x).is_some());
        Ok(())
    }
}
