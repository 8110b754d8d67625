//! NEFTune (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning"):
//! uniform noise of magnitude `alpha/sqrt(seq_len·hidden)` added to the input embeddings
//! during training only, as TRL's `neftune_noise_alpha` does (seq_len is the padded length of
//! the batch, like transformers' hook).

use candle_core::{DType, Device, Result, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Noise `[batch, seq, hidden]` for one micro-batch, reproducible from `seed`.
pub fn noise(
    (batch, seq, hidden): (usize, usize, usize),
    alpha: f64,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let magnitude = (alpha / ((seq * hidden) as f64).sqrt()) as f32;
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..batch * seq * hidden)
        .map(|_| rng.random_range(-1.0f32..=1.0) * magnitude)
        .collect();
    Tensor::from_vec(values, (batch, seq, hidden), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magnitude_and_reproducibility() -> Result<()> {
        let dev = Device::Cpu;
        let n = noise((2, 8, 32), 5.0, 1, DType::F32, &dev)?;
        let bound = 5.0 / (8.0f32 * 32.0).sqrt();
        let v = n.flatten_all()?.to_vec1::<f32>()?;
        assert!(v.iter().all(|x| x.abs() <= bound + 1e-6));
        assert!(v.iter().any(|x| x.abs() > bound * 0.9));
        let again = noise((2, 8, 32), 5.0, 1, DType::F32, &dev)?;
        assert_eq!(v, again.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}
