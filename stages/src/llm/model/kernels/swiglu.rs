//! Gated MLP activations `act(gate) ⊙ up` (SwiGLU with SiLU, GeGLU with GELU-tanh) in one
//! parallel pass, with a backward that recomputes the activation instead of storing it:
//! `d_gate = g⊙up⊙act'(gate)`, `d_up = g⊙act(gate)`. The composition keeps `act(gate)` alive
//! as an extra intermediate-sized tensor per layer.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_slice, dispatch_real, into_storage, Real};
use crate::llm::model::family::Activation;

/// Elements per parallel task: large enough to amortise scheduling.
const CHUNK: usize = 16 * 1024;

/// `silu(gate) * up` for two contiguous tensors of one shape.
pub fn swiglu_fused(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gated_fused(gate, up, Activation::Silu)
}

/// `act(gate) * up` for two contiguous tensors of one shape.
pub fn gated_fused(gate: &Tensor, up: &Tensor, act: Activation) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        candle_core::bail!(
            "gated activation: gate {:?} and up {:?} differ",
            gate.dims(),
            up.dims()
        )
    }
    gate.contiguous()?
        .apply_op2(&up.contiguous()?, SwiGlu { act })
}

struct SwiGlu {
    act: Activation,
}

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

/// `sqrt(2/π)` and the cubic coefficient of the tanh approximation of GELU.
const GELU_A: f64 = 0.797_884_560_802_865_4;
const GELU_B: f64 = 0.044_715;

/// `act(x)` and `act'(x)`.
fn activation<T: Real>(act: Activation, x: T) -> (T, T) {
    match act {
        Activation::Silu => {
            let s = sigmoid(x);
            (x * s, s * (T::one() + x * (T::one() - s)))
        }
        Activation::GeluTanh => {
            let (a, b) = (T::from_f64(GELU_A), T::from_f64(GELU_B));
            let half = T::from_f64(0.5);
            let t = (a * (x + b * x * x * x)).tanh();
            let value = half * x * (T::one() + t);
            let inner = a * (T::one() + T::from_f64(3.0) * b * x * x);
            (
                value,
                half * (T::one() + t) + half * x * (T::one() - t * t) * inner,
            )
        }
    }
}

fn forward<T: Real>(act: Activation, gate: &[T], up: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); gate.len()];
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = match act {
                    Activation::Silu => g * sigmoid(g) * u,
                    Activation::GeluTanh => activation(act, g).0 * u,
                };
            }
        });
    out
}

/// `[d_gate; d_up]` stacked along a new leading axis of 2.
fn backward<T: Real>(act: Activation, gate: &[T], up: &[T], grad: &[T]) -> Vec<T> {
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
                let (value, slope) = activation(act, g[i]);
                dg[i] = gr[i] * u[i] * slope;
                du[i] = gr[i] * value;
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
            into_storage(forward(self.act, g, u))
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
        let both =
            gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluBackward { act: self.act })?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

struct SwiGluBackward {
    act: Activation,
}

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
            into_storage(backward(self.act, g, u, d))
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

    /// GeGLU against the composition of primitives (the path other devices take).
    #[test]
    fn gelu_tanh_matches_the_composition_in_value_and_gradients() -> Result<()> {
        let gate = Var::from_tensor(&randn(&[3, 7, 1000], 4.0, 3)?)?;
        let up = Var::from_tensor(&randn(&[3, 7, 1000], 2.0, 4)?)?;
        assert_same_fn_and_grads(
            &[&gate, &up],
            |v| gated_fused(v[0], v[1], Activation::GeluTanh),
            |v| crate::llm::model::ops::gelu_tanh_composed(v[0])? * v[1],
            1e-12,
        )
    }
}
