//! SwiGLU `silu(gate) ⊙ up` in one parallel pass, with a backward that recomputes the sigmoid
//! instead of storing it: `d_gate = g⊙up⊙σ(gate)(1 + gate(1 − σ(gate)))`, `d_up = g⊙silu(gate)`.
//! The composition keeps `silu(gate)` alive as an extra intermediate-sized tensor per layer.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_slice, dispatch_real, into_storage, Real};

/// Elements per parallel task: large enough to amortise scheduling.
const CHUNK: usize = 16 * 1024;

/// `silu(gate) * up` for two contiguous tensors of one shape.
pub fn swiglu_fused(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        candle_core::bail!(
            "swiglu: gate {:?} and up {:?} differ",
            gate.dims(),
            up.dims()
        )
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

struct SwiGlu;

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

fn forward<T: Real>(gate: &[T], up: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); gate.len()];
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        });
    out
}

/// `[d_gate; d_up]` stacked along a new leading axis of 2.
fn backward<T: Real>(gate: &[T], up: &[T], grad: &[T]) -> Vec<T> {
    let n = gate.len();
    let mut out = vec![T::zero(); 2 * n];
    let (d_gate, d_up) = out.split_at_mut(n);
    d_gate
        .par_chunks_mut(CHUNK)
        .zip(d_up.par_chunks_mut(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .zip(grad.par_chunks(CHUNK))
        .for_each(|(((dg, du), (g, u)), gr)| {
            for i in 0..g.len() {
                let s = sigmoid(g[i]);
                let silu = g[i] * s;
                dg[i] = gr[i] * u[i] * s * (T::one() + g[i] * (T::one() - s));
                du[i] = gr[i] * silu;
            }
        });
    out
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch_real!(gs, "swiglu", |s: T| {
            let g = contiguous_slice::<T>(s, gl, "swiglu gate")?;
            let u = contiguous_slice::<T>(us, ul, "swiglu up")?;
            if g.len() != u.len() {
                candle_core::bail!("swiglu: gate and up differ in size")
            }
            into_storage(forward(g, u))
        });
        Ok((out, gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluBackward)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

struct SwiGluBackward;

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "swiglu-backward"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch_real!(gs, "swiglu-backward", |s: T| {
            let g = contiguous_slice::<T>(s, gl, "swiglu-backward")?;
            let u = contiguous_slice::<T>(us, ul, "swiglu-backward")?;
            let d = contiguous_slice::<T>(ds, dl, "swiglu-backward")?;
            if g.len() != u.len() || g.len() != d.len() {
                candle_core::bail!("swiglu-backward: sizes differ")
            }
            into_storage(backward(g, u, d))
        });
        let mut dims = vec![2];
        dims.extend_from_slice(gl.dims());
        Ok((out, Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::model::kernels::testing::{assert_same_fn_and_grads, randn};
    use candle_core::Var;

    #[test]
    fn matches_the_composition_in_value_and_gradients() -> Result<()> {
        // Larger than one parallel chunk, to cross task boundaries.
        let gate = Var::from_tensor(&randn(&[3, 7, 1000], 4.0, 1)?)?;
        let up = Var::from_tensor(&randn(&[3, 7, 1000], 2.0, 2)?)?;
        assert_same_fn_and_grads(
            &[&gate, &up],
            |v| swiglu_fused(v[0], v[1]),
            |v| v[0].silu()? * v[1],
            1e-12,
        )
    }
}
