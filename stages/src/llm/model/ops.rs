//! Differentiable building blocks composed from candle primitives, because candle 0.11's fused
//! versions (`candle_nn::ops::rms_norm`, `softmax_last_dim`, `rotary_emb::rope*`) record no
//! backward and would silently stop every gradient upstream of them.

use candle_core::{DType, Result, Tensor, D};

use crate::llm::model::family::Activation;
use crate::llm::model::kernels;
use crate::llm::model::softmax::softmax_last_dim_op;

/// Additive mask value for disallowed attention scores. Finite (not `-inf`) so that a fully
/// masked row (a left-padding query that sees only padding) gives a harmless uniform softmax
/// instead of NaN, and so that adding it to a score cannot overflow f32.
pub const MASK_VALUE: f64 = -1.0e9;

/// `x / sqrt(mean(x²) + eps) * weight` over the last dimension, as HF's `LlamaRMSNorm`: the
/// fused kernel on the CPU, the composition elsewhere.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if kernels::applies(x) && x.dtype() == weight.dtype() {
        kernels::rms_norm::rms_norm_fused(x, weight, eps)
    } else {
        rms_norm_composed(x, weight, eps)
    }
}

/// RMSNorm from primitives. HF normalises in f32 even for half-precision models; we upcast
/// half types the same way.
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = upcast_half(x)?;
    let mean_sq = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_rms = (mean_sq + eps)?.sqrt()?.recip()?;
    let normed = xf.broadcast_mul(&inv_rms)?.to_dtype(dtype)?;
    normed.broadcast_mul(weight)
}

/// Softmax over the last dimension, differentiable: a custom op with a hand-written backward
/// on CPU for f32/f64 (see [`crate::llm::model::softmax`]), the composition of primitives elsewhere.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        softmax_last_dim_op(x)
    } else {
        softmax_composed(x)
    }
}

/// Softmax from primitives. The row maximum is detached: softmax is shift-invariant, so its
/// gradient through the max is exactly zero and computing it would only cost time.
pub fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&sum)
}

/// `log(sum(exp(x)))` over the last dimension, keeping it as a size-1 dimension; stable for
/// large logits (shifted by the detached row maximum, see [`softmax_last_dim`]).
pub fn logsumexp_keepdim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted_sum = x.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
    shifted_sum.log()?.broadcast_add(&max)
}

/// HF's `rotate_half`: `[x1, x2] -> [-x2, x1]` over the halves of the last dimension.
pub fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// SwiGLU activation `silu(gate) * up`: the fused kernel on the CPU, else candle's `silu`
/// (a primitive with a backward) times `up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if kernels::applies(gate) && gate.dtype() == up.dtype() {
        kernels::swiglu::swiglu_fused(gate, up)
    } else {
        gate.silu()? * up
    }
}

/// The gated activation `act(gate) * up` of a family's MLP: the fused kernel on the CPU, else
/// candle's `silu` / `gelu` (tanh approximation; primitives with a backward) times `up`.
pub fn gated_activation(gate: &Tensor, up: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Silu => swiglu(gate, up),
        Activation::GeluTanh if kernels::applies(gate) && gate.dtype() == up.dtype() => {
            kernels::swiglu::gated_fused(gate, up, act)
        }
        Activation::GeluTanh => gelu_tanh_composed(gate)? * up,
    }
}

/// GELU with the tanh approximation from primitives: `x/2·(1 + tanh(√(2/π)(x + 0.044715x³)))`.
/// Not candle's `gelu`, whose backward rounds the constants (1e-7 off transformers' gradient).
pub fn gelu_tanh_composed(x: &Tensor) -> Result<Tensor> {
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    let inner = ((x + (x.powf(3.0)? * 0.044_715)?)? * SQRT_2_OVER_PI)?;
    (x * 0.5)? * (inner.tanh()? + 1.0)?
}

/// Numerically stable `log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|))`.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let neg_abs = x.abs()?.neg()?;
    let softplus_tail = (neg_abs.exp()? + 1.0)?.log()?;
    x.minimum(0.0)? - softplus_tail
}

fn upcast_half(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn softmax_matches_candle_fused_version() -> Result<()> {
        let x = Tensor::new(&[[1.0f64, 2.0, 3.0], [1000.0, 1000.0, -5.0]], &Device::Cpu)?;
        let ours = softmax_last_dim(&x)?.flatten_all()?.to_vec1::<f64>()?;
        let theirs = candle_nn::ops::softmax_last_dim(&x)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        close(&ours, &theirs, 1e-12);
        Ok(())
    }

    #[test]
    fn rms_norm_matches_candle_fused_version_and_has_gradient() -> Result<()> {
        // candle's fused kernel is f32-only.
        let x = Var::new(&[[1.0f32, -2.0, 3.0, 0.5]], &Device::Cpu)?;
        let w = Tensor::new(&[0.5f32, 1.0, 2.0, -1.0], &Device::Cpu)?;
        let ours = rms_norm(x.as_tensor(), &w, 1e-6)?;
        let theirs = candle_nn::ops::rms_norm(x.as_tensor(), &w, 1e-6)?;
        let as_f64 = |t: &Tensor| -> Result<Vec<f64>> {
            t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
        };
        close(&as_f64(&ours)?, &as_f64(&theirs)?, 1e-6);
        let grads = ours.sum_all()?.backward()?;
        let g = grads.get(&x).expect("rms_norm must propagate a gradient");
        assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }

    #[test]
    fn log_sigmoid_is_stable_at_extremes() -> Result<()> {
        let x = Tensor::new(&[-800.0f64, -1.0, 0.0, 2.0, 800.0], &Device::Cpu)?;
        let got = log_sigmoid(&x)?.to_vec1::<f64>()?;
        let want: Vec<f64> = [-800.0f64, -1.0, 0.0, 2.0, 800.0]
            .iter()
            .map(|&v: &f64| -(1.0 + (-v).exp()).ln())
            .map(|v| if v.is_finite() { v } else { -800.0 })
            .collect();
        close(&got, &want, 1e-12);
        Ok(())
    }

    #[test]
    fn logsumexp_matches_naive() -> Result<()> {
        let x = Tensor::new(&[[0.1f64, 0.2, -0.3]], &Device::Cpu)?;
        let got = logsumexp_keepdim(&x)?.flatten_all()?.to_vec1::<f64>()?;
        let want = (0.1f64.exp() + 0.2f64.exp() + (-0.3f64).exp()).ln();
        close(&got, &[want], 1e-12);
        Ok(())
    }
}
