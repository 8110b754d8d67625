//! AdamW (Loshchilov & Hutter 2019) as PyTorch's `torch.optim.AdamW` computes it, with its
//! moment estimates exposed as named tensors so a checkpoint can save and restore them: a
//! resumed run must continue with the exact optimizer state of the interrupted one, which
//! `candle_nn::AdamW` keeps private.

use std::collections::HashMap;

use candle_core::{Result, Tensor, Var};

/// AdamW hyper-parameters except the learning rate, which the schedule gives per step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay: every step multiplies the weights by `1 - lr·weight_decay`.
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    /// PyTorch's defaults with no weight decay (HF Trainer's default).
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The optimizer over a fixed list of variables (same order on every call).
#[derive(Debug)]
pub struct AdamW {
    params: AdamWParams,
    /// First and second moment estimates, one per variable.
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Steps taken (the `t` of the bias corrections).
    t: usize,
}

impl AdamW {
    /// Zero moments shaped like `vars`.
    pub fn new(vars: &[Var], params: AdamWParams) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            params,
            m: vars.iter().map(zeros).collect::<Result<_>>()?,
            v: vars.iter().map(zeros).collect::<Result<_>>()?,
            t: 0,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.t
    }

    /// One update of every variable with its gradient (same order as at construction).
    pub fn step(&mut self, vars: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        if vars.len() != self.m.len() || grads.len() != vars.len() {
            candle_core::bail!(
                "adamw: {} variables and {} gradients for an optimizer of {}",
                vars.len(),
                grads.len(),
                self.m.len()
            )
        }
        self.t += 1;
        let p = self.params;
        let correction1 = 1.0 - p.beta1.powi(self.t as i32);
        let correction2 = 1.0 - p.beta2.powi(self.t as i32);
        for (i, (var, grad)) in vars.iter().zip(grads).enumerate() {
            let grad = grad.to_dtype(var.dtype())?;
            let m = ((&self.m[i] * p.beta1)? + (&grad * (1.0 - p.beta1))?)?;
            let v = ((&self.v[i] * p.beta2)? + (grad.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&m / correction1)?;
            let v_hat = (&v / correction2)?;
            let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * p.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments as named tensors (`adamw.m.3`, `adamw.v.3`), for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let m = self
            .m
            .iter()
            .enumerate()
            .map(|(i, t)| (moment_name("m", i), t.clone()));
        let v = self
            .v
            .iter()
            .enumerate()
            .map(|(i, t)| (moment_name("v", i), t.clone()));
        m.chain(v).collect()
    }

    /// Restores moments saved by [`AdamW::state_tensors`] after `steps` steps.
    pub fn restore(&mut self, tensors: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for (kind, moments) in [("m", &mut self.m), ("v", &mut self.v)] {
            for (i, slot) in moments.iter_mut().enumerate() {
                let name = moment_name(kind, i);
                let saved = tensors.get(&name).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state has no tensor `{name}`"))
                })?;
                if saved.dims() != slot.dims() {
                    candle_core::bail!(
                        "optimizer tensor `{name}` has shape {:?}, expected {:?}",
                        saved.dims(),
                        slot.dims()
                    )
                }
                *slot = saved.to_dtype(slot.dtype())?.to_device(slot.device())?;
            }
        }
        self.t = steps;
        Ok(())
    }
}

fn moment_name(kind: &str, i: usize) -> String {
    format!("adamw.{kind}.{i}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// One step of PyTorch's AdamW on w = [1, -2], g = [0.5, 0.25], lr 0.1, wd 0.01:
    /// m = 0.1·g, v = 0.001·g², m̂ = g, v̂ = g², so w' = w·(1 − 0.001) − 0.1·g/(|g| + 1e-8).
    #[test]
    fn first_step_matches_the_closed_form() -> Result<()> {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[1f64, -2.0], &dev)?)?;
        let params = AdamWParams {
            weight_decay: 0.01,
            ..AdamWParams::default()
        };
        let mut opt = AdamW::new(std::slice::from_ref(&var), params)?;
        let grad = Tensor::new(&[0.5f64, 0.25], &dev)?;
        opt.step(std::slice::from_ref(&var), &[grad], 0.1)?;
        let w = var.as_tensor().to_vec1::<f64>()?;
        assert!((w[0] - (1.0 * 0.999 - 0.1)).abs() < 1e-7, "{w:?}");
        assert!((w[1] - (-2.0 * 0.999 - 0.1)).abs() < 1e-7, "{w:?}");
        Ok(())
    }

    #[test]
    fn restored_state_continues_identically() -> Result<()> {
        let dev = Device::Cpu;
        let run = |split: bool| -> Result<Vec<f32>> {
            let var = Var::from_tensor(&Tensor::new(&[0.3f32, -0.7, 1.1], &dev)?)?;
            let vars = [var.clone()];
            let mut opt = AdamW::new(&vars, AdamWParams::default())?;
            for step in 0..6 {
                if split && step == 3 {
                    let saved: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
                    opt = AdamW::new(&vars, AdamWParams::default())?;
                    opt.restore(&saved, 3)?;
                }
                let g = (var.as_tensor() * (step as f64 + 1.0))?.sin()?;
                opt.step(&vars, &[g], 0.01)?;
            }
            var.as_tensor().to_vec1::<f32>()
        };
        assert_eq!(run(false)?, run(true)?);
        let empty = HashMap::new();
        let var = Var::zeros(2, DType::F32, &dev)?;
        let mut opt = AdamW::new(&[var], AdamWParams::default())?;
        assert!(opt
            .restore(&empty, 1)
            .unwrap_err()
            .to_string()
            .contains("adamw.m.0"));
        Ok(())
    }
}
