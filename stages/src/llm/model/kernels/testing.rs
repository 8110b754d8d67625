//! Test helpers for the kernels: seeded random tensors and the check every kernel passes —
//! same values and same gradients (of every input) as the plain candle composition.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A seeded f64 tensor with entries uniform in `[-scale, scale)`.
pub fn randn(shape: &[usize], scale: f64, seed: u64) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| scale * rng.random_range(-1.0..1.0))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Largest absolute difference, relative to the reference's largest magnitude (at least 1).
pub fn rel_diff(ours: &Tensor, want: &Tensor) -> Result<f64> {
    let (a, b) = (ours.to_dtype(DType::F64)?, want.to_dtype(DType::F64)?);
    let scale = b.abs()?.max_all()?.to_scalar::<f64>()?.max(1.0);
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f64>()? / scale)
}

/// Checks `ours(vars)` against `plain(vars)`: the values, then the gradient of
/// `sum(out ⊙ u)` (u random) with respect to every var.
pub fn assert_same_fn_and_grads(
    vars: &[&Var],
    ours: impl Fn(&[&Tensor]) -> Result<Tensor>,
    plain: impl Fn(&[&Tensor]) -> Result<Tensor>,
    tol: f64,
) -> Result<()> {
    let inputs: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
    let a = ours(&inputs)?;
    let b = plain(&inputs)?;
    assert_eq!(a.dims(), b.dims(), "output shapes differ");
    let d = rel_diff(&a, &b)?;
    assert!(d < tol, "values differ by {d:e}");
    let u = randn(a.dims(), 1.0, 99)?.to_dtype(a.dtype())?;
    let ga = (&a * &u)?.sum_all()?.backward()?;
    let gb = (&b * &u)?.sum_all()?.backward()?;
    for (i, v) in vars.iter().enumerate() {
        let (x, y) = (ga.get(v), gb.get(v));
        match (x, y) {
            (Some(x), Some(y)) => {
                let d = rel_diff(x, y)?;
                assert!(d < tol, "gradient of input {i} differs by {d:e}");
            }
            (None, None) => {}
            (x, y) => panic!(
                "input {i}: gradient present in fused {} / plain {}",
                x.is_some(),
                y.is_some()
            ),
        }
    }
    Ok(())
}
