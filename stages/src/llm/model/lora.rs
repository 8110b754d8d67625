//! LoRA (Hu et al. 2021) as PEFT implements it: `Δy = scale·dropout(x)·Aᵀ·Bᵀ` beside a frozen
//! projection, A Kaiming-uniform and B zero so training starts from the base model exactly.

use candle_core::{DType, Device, Result, Tensor, Var, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use crate::llm::model::kernels::lora_linear::Dropout;
pub use crate::llm::model::lora_config::{lora_scale, LoraConfig, TargetModule};

/// Whether a forward pass trains (LoRA dropout active, seeded by the step) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Eval,
    /// `seed` makes the dropout masks of one step reproducible (e.g. derive it from the step
    /// number); every LoRA module mixes in its own stream id so masks differ between modules.
    Train {
        seed: u64,
    },
}

/// The low-rank update beside one frozen projection.
#[derive(Debug, Clone)]
pub struct LoraLayer {
    /// `[r, in]`.
    a: Var,
    /// `[out, r]`.
    b: Var,
    scale: f64,
    dropout: f64,
    /// Distinguishes this module's dropout masks and initialisation from every other module's.
    stream: u64,
}

impl LoraLayer {
    /// A fresh adapter as PEFT initialises it: A ~ U(-1/sqrt(in), 1/sqrt(in)) (that is
    /// `kaiming_uniform_(a=sqrt(5))`), B = 0.
    pub fn init(
        config: &LoraConfig,
        (out_features, in_features): (usize, usize),
        stream: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let mut rng = StdRng::seed_from_u64(mix(config.seed, stream));
        let values: Vec<f64> = (0..config.r * in_features)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Tensor::from_vec(values, (config.r, in_features), device)?.to_dtype(dtype)?;
        let b = Tensor::zeros((out_features, config.r), dtype, device)?;
        Self::from_weights(a, b, config.scale(), config.dropout, stream)
    }

    /// An adapter from existing weights (e.g. read from a PEFT file).
    pub fn from_weights(
        a: Tensor,
        b: Tensor,
        scale: f64,
        dropout: f64,
        stream: u64,
    ) -> Result<Self> {
        let (r, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        if r != rb {
            candle_core::bail!(
                "lora_A {:?} and lora_B {:?} disagree on the rank",
                a.dims(),
                b.dims()
            )
        }
        Ok(Self {
            a: Var::from_tensor(&a.detach())?,
            b: Var::from_tensor(&b.detach())?,
            scale,
            dropout,
            stream,
        })
    }

    pub fn a(&self) -> &Var {
        &self.a
    }

    pub fn b(&self) -> &Var {
        &self.b
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// `scale·B·A`, the `[out, in]` update a merge adds to the base weight.
    pub fn delta_weight(&self) -> Result<Tensor> {
        (self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale)?
            .detach()
            .contiguous()
    }

    /// `scale·dropout(x)·Aᵀ·Bᵀ` for `x` `[..., in]`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = match mode {
            Mode::Train { seed } if self.dropout > 0.0 => self.dropout(x, seed)?,
            _ => x.clone(),
        };
        let mut out_dims = x.dims().to_vec();
        let in_features = x.dim(D::Minus1)?;
        if let Some(last) = out_dims.last_mut() {
            *last = self.b.dims()[0];
        }
        let x2 = x.reshape(((), in_features))?;
        let low_rank = x2.matmul(&self.a.as_tensor().t()?)?;
        let up = low_rank.matmul(&self.b.as_tensor().t()?)?;
        (up * self.scale)?.reshape(out_dims)
    }

    /// Inverted dropout: keep with probability `1-p`, scale kept values by `1/(1-p)`. The
    /// mask is a hash of (step seed, module stream, element), the same one the fused kernel
    /// recomputes in its backward.
    fn dropout(&self, x: &Tensor, seed: u64) -> Result<Tensor> {
        let Some(dropout) = self.dropout_for(Mode::Train { seed }) else {
            return Ok(x.clone());
        };
        let mask: Vec<f64> = (0..x.elem_count()).map(|i| dropout.factor(i)).collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x.contiguous()?.mul(&mask)
    }

    /// The dropout this module applies in `mode` (none in evaluation or when p = 0).
    pub fn dropout_for(&self, mode: Mode) -> Option<Dropout> {
        match mode {
            Mode::Train { seed } if self.dropout > 0.0 => Some(Dropout {
                p: self.dropout,
                seed: mix(seed, self.stream),
            }),
            _ => None,
        }
    }
}

/// The stream id of one module of one layer (stable across runs and attach orders).
pub fn stream_id(layer: usize, module: TargetModule) -> u64 {
    (layer as u64) * 16 + module as u64
}

/// splitmix64 of `seed` and `stream`: independent-looking seeds from structured inputs.
fn mix(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dropout: f64) -> LoraConfig {
        LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout,
            target_modules: TargetModule::ALL.to_vec(),
            use_rslora: false,
            seed: 7,
        }
    }

    #[test]
    fn init_matches_peft_a_bounded_b_zero_and_is_seeded() -> Result<()> {
        let dev = Device::Cpu;
        let l1 = LoraLayer::init(&config(0.0), (6, 100), 3, DType::F64, &dev)?;
        let l2 = LoraLayer::init(&config(0.0), (6, 100), 3, DType::F64, &dev)?;
        let a = l1.a().as_tensor().flatten_all()?.to_vec1::<f64>()?;
        assert_eq!(a, l2.a().as_tensor().flatten_all()?.to_vec1::<f64>()?);
        assert!(a.iter().all(|v| v.abs() < 0.1) && a.iter().any(|v| v.abs() > 0.05));
        let b = l1.b().as_tensor().flatten_all()?.to_vec1::<f64>()?;
        assert!(b.iter().all(|&v| v == 0.0));
        let other = LoraLayer::init(&config(0.0), (6, 100), 4, DType::F64, &dev)?;
        assert_ne!(a, other.a().as_tensor().flatten_all()?.to_vec1::<f64>()?);
        Ok(())
    }

    #[test]
    fn dropout_only_in_training_and_reproducible() -> Result<()> {
        let dev = Device::Cpu;
        let layer = LoraLayer::init(&config(0.5), (3, 8), 0, DType::F64, &dev)?;
        layer.b().set(&Tensor::ones((3, 4), DType::F64, &dev)?)?;
        let x = Tensor::ones((2, 8), DType::F64, &dev)?;
        let eval1 = layer
            .forward(&x, Mode::Eval)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let eval2 = layer
            .forward(&x, Mode::Eval)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        assert_eq!(eval1, eval2);
        let t1 = layer
            .forward(&x, Mode::Train { seed: 1 })?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let t1b = layer
            .forward(&x, Mode::Train { seed: 1 })?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let t2 = layer
            .forward(&x, Mode::Train { seed: 2 })?
            .flatten_all()?
            .to_vec1::<f64>()?;
        assert_eq!(t1, t1b);
        assert_ne!(t1, eval1);
        assert_ne!(t1, t2);
        Ok(())
    }
}
