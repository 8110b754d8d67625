//! Element-wise functions candle lacks (`log(1 - exp(x))` needs `expm1`/`log1p` to be stable),
//! as a custom op with a hand-written derivative so they stay differentiable.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// A differentiable element-wise function given by its value and its derivative on f64.
#[derive(Clone, Copy)]
struct ScalarFn {
    name: &'static str,
    f: fn(f64) -> f64,
    /// `None` for an op that is itself a derivative (we never differentiate twice).
    df: Option<fn(f64) -> f64>,
}

impl ScalarFn {
    fn map<T: Copy>(&self, xs: &[T], to: fn(T) -> f64, from: fn(f64) -> T) -> Vec<T> {
        xs.iter().map(|&x| from((self.f)(to(x)))).collect()
    }
}

impl CustomOp1 for ScalarFn {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: input must be contiguous", self.name)
        };
        let out = match storage {
            CpuStorage::F32(v) => {
                CpuStorage::F32(self.map(&v[start..end], |x| x as f64, |y| y as f32))
            }
            CpuStorage::F64(v) => CpuStorage::F64(self.map(&v[start..end], |x| x, |y| y)),
            other => candle_core::bail!("{}: unsupported dtype {:?}", self.name, other.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let Some(df) = self.df else {
            return Err(candle_core::Error::BackwardNotSupported { op: self.name });
        };
        let derivative = ScalarFn {
            name: "scalar-fn-derivative",
            f: df,
            df: None,
        };
        let local = arg.contiguous()?.apply_op1_no_bwd(&derivative)?;
        Ok(Some(grad_res.mul(&local)?))
    }
}

/// `log(1 - exp(x))` for `x < 0`, stable over the whole range (Mächler 2012): `log(-expm1(x))`
/// near zero, `log1p(-exp(x))` far from it. Values `x >= 0` give NaN (no probability there).
pub fn log1mexp(x: &Tensor) -> Result<Tensor> {
    check_float(x, "log1mexp")?;
    x.contiguous()?.apply_op1(ScalarFn {
        name: "log1mexp",
        f: log1mexp_f64,
        df: Some(log1mexp_derivative),
    })
}

fn check_float(x: &Tensor, name: &str) -> Result<()> {
    match x.dtype() {
        DType::F32 | DType::F64 => Ok(()),
        other => candle_core::bail!("{name}: expected f32 or f64, got {other:?}"),
    }
}

/// Scalar version of [`log1mexp`].
pub fn log1mexp_f64(x: f64) -> f64 {
    if x > -std::f64::consts::LN_2 {
        (-x.exp_m1()).ln()
    } else {
        (-x.exp()).ln_1p()
    }
}

/// d/dx log(1 - exp(x)) = -exp(x) / (1 - exp(x)) = -1 / expm1(-x).
fn log1mexp_derivative(x: f64) -> f64 {
    -1.0 / (-x).exp_m1()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn log1mexp_values_are_accurate_near_zero_and_far() {
        for &x in &[-1e-10f64, -1e-3, -0.5, -1.0, -5.0, -40.0] {
            let naive = (1.0 - x.exp()).ln();
            let got = log1mexp_f64(x);
            if x < -1e-3 {
                assert!((got - naive).abs() < 1e-12, "{x}: {got} vs {naive}");
            }
            assert!(got.is_finite());
        }
        // Where the naive formula loses all digits, the stable one is log(-x) to first order.
        assert!((log1mexp_f64(-1e-10) - (1e-10f64).ln()).abs() < 1e-9);
    }

    #[test]
    fn log1mexp_gradient_matches_finite_differences() -> Result<()> {
        let xs = [-0.01f64, -0.7, -3.0];
        let v = Var::new(&xs, &Device::Cpu)?;
        let grads = log1mexp(v.as_tensor())?.sum_all()?.backward()?;
        let g = grads.get(&v).expect("gradient").to_vec1::<f64>()?;
        for (i, &x) in xs.iter().enumerate() {
            let h = 1e-6;
            let fd = (log1mexp_f64(x + h) - log1mexp_f64(x - h)) / (2.0 * h);
            assert!(
                (g[i] - fd).abs() < 1e-6 * (1.0 + fd.abs()),
                "{x}: {} vs {fd}",
                g[i]
            );
        }
        Ok(())
    }
}
