//! Gradients of one optimizer step: summed over its micro-batches (gradient accumulation),
//! measured by their global L2 norm and clipped to `max_grad_norm` as
//! `torch.nn.utils.clip_grad_norm_` does.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// Running sums of the gradients of a fixed list of variables.
#[derive(Debug)]
pub struct GradAccumulator {
    sums: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    pub fn new(vars: usize) -> Self {
        Self {
            sums: vec![None; vars],
        }
    }

    /// Adds the gradients of one backward pass (a variable the loss does not reach adds 0).
    pub fn add(&mut self, vars: &[Var], store: &GradStore) -> Result<()> {
        for (sum, var) in self.sums.iter_mut().zip(vars) {
            if let Some(g) = store.get(var.as_tensor()) {
                let g = g.detach();
                *sum = Some(match sum.take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    /// The summed gradients, zeros for variables that never received one.
    pub fn finish(self, vars: &[Var]) -> Result<Vec<Tensor>> {
        self.sums
            .into_iter()
            .zip(vars)
            .map(|(s, v)| match s {
                Some(s) => Ok(s),
                None => v.as_tensor().zeros_like(),
            })
            .collect()
    }
}

/// The L2 norm of all gradients taken together (computed in f64).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sum = 0.0;
    for g in grads {
        sum += g
            .to_dtype(candle_core::DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(sum.sqrt())
}

/// Scales the gradients down so their global norm is at most `max_norm` (no-op when it
/// already is, or when `max_norm` is 0, which disables clipping); `norm` is their norm.
pub fn clip(grads: Vec<Tensor>, norm: f64, max_norm: f64) -> Result<Vec<Tensor>> {
    if max_norm <= 0.0 {
        return Ok(grads);
    }
    // The same coefficient as PyTorch, epsilon included.
    let coefficient = max_norm / (norm + 1e-6);
    if coefficient >= 1.0 {
        return Ok(grads);
    }
    grads.into_iter().map(|g| g * coefficient).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn accumulates_measures_and_clips() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::new(&[1f32, 2.0], &dev)?;
        let b = Var::new(&[3f32], &dev)?;
        let vars = [a.clone(), b.clone()];
        let mut acc = GradAccumulator::new(2);
        for _ in 0..2 {
            let loss = (a.as_tensor().sum_all()? * 2.0)?;
            acc.add(&vars, &loss.backward()?)?;
        }
        let grads = acc.finish(&vars)?;
        assert_eq!(grads[0].to_vec1::<f32>()?, vec![4.0, 4.0]);
        assert_eq!(grads[1].to_vec1::<f32>()?, vec![0.0]);
        let norm = global_norm(&grads)?;
        assert!((norm - 32f64.sqrt()).abs() < 1e-6);
        let clipped = clip(grads.clone(), norm, 1.0)?;
        assert!((global_norm(&clipped)? - 1.0).abs() < 1e-5);
        let kept = clip(grads, norm, 100.0)?;
        assert_eq!(kept[0].to_vec1::<f32>()?, vec![4.0, 4.0]);
        Ok(())
    }
}
