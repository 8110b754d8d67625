//! Rotary position embedding as HF applies it (`rotate_half` convention, llama3 frequency
//! scaling), composed from differentiable primitives because candle's fused `rope*` kernels
//! record no backward.

use candle_core::{DType, Device, Result, Tensor};

use crate::llm::model::config::{ModelConfig, RopeScaling};
use crate::llm::model::ops::rotate_half;

/// The rotation frequencies of one model; cos/sin are computed for the positions at hand
/// (cheap next to attention, and no table sized by `max_position_embeddings`).
#[derive(Debug, Clone)]
pub struct Rope {
    /// `head_dim / 2` inverse frequencies, in f64 so the angles are at least as accurate as
    /// HF's f32 ones.
    inv_freq: Vec<f64>,
}

/// cos/sin for one batch of positions, shaped `[batch, 1, seq, head_dim]` to broadcast over
/// heads; shared by the queries and keys of every layer.
#[derive(Debug, Clone)]
pub struct RopeAngles {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(config: &ModelConfig) -> Self {
        Self {
            inv_freq: inverse_frequencies(config),
        }
    }

    /// Angles for `positions`, row-major `[batch, seq]`.
    pub fn angles(
        &self,
        positions: &[u32],
        (batch, seq): (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<RopeAngles> {
        if positions.len() != batch * seq {
            candle_core::bail!(
                "rope: {} positions for a [{batch}, {seq}] batch",
                positions.len()
            )
        }
        let half = self.inv_freq.len();
        let dim = 2 * half;
        let mut cos = Vec::with_capacity(positions.len() * dim);
        let mut sin = Vec::with_capacity(positions.len() * dim);
        for &pos in positions {
            // HF: emb = cat(freqs, freqs), so both halves of a head share frequencies.
            for i in 0..dim {
                let angle = pos as f64 * self.inv_freq[i % half];
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = (batch, 1, seq, dim);
        Ok(RopeAngles {
            cos: Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
        })
    }
}

impl RopeAngles {
    /// `[batch, 1, seq, head_dim]`.
    pub fn cos(&self) -> &Tensor {
        &self.cos
    }

    /// `[batch, 1, seq, head_dim]`.
    pub fn sin(&self) -> &Tensor {
        &self.sin
    }

    /// Rotates `x` `[batch, heads, seq, head_dim]`: `x·cos + rotate_half(x)·sin`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.cos)? + rotate_half(x)?.broadcast_mul(&self.sin)?
    }
}

/// `1 / theta^(2i/d)`, with llama3 scaling applied when the config asks for it.
fn inverse_frequencies(config: &ModelConfig) -> Vec<f64> {
    let dim = config.head_dim;
    let base: Vec<f64> = (0..dim / 2)
        .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / dim as f64))
        .collect();
    match &config.rope_scaling {
        Some(scaling) => base.iter().map(|&f| llama3_scaled(f, scaling)).collect(),
        None => base,
    }
}

/// HF `_compute_llama3_parameters`: long wavelengths are slowed by `factor`, short ones kept,
/// and the band between is interpolated smoothly.
fn llama3_scaled(inv_freq: f64, s: &RopeScaling) -> f64 {
    let old_len = s.original_max_position_embeddings as f64;
    let low_freq_wavelen = old_len / s.low_freq_factor;
    let high_freq_wavelen = old_len / s.high_freq_factor;
    let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
    if wavelen < high_freq_wavelen {
        inv_freq
    } else if wavelen > low_freq_wavelen {
        inv_freq / s.factor
    } else {
        let smooth =
            (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * inv_freq / s.factor + smooth * inv_freq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_slows_low_frequencies() {
        let s = RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        // Wavelength 2π: far below the high-frequency threshold (2048) → unchanged.
        assert_eq!(llama3_scaled(1.0, &s), 1.0);
        // Wavelength ~ 62832 > 8192 → divided by the factor.
        let low = 1e-4;
        assert!((llama3_scaled(low, &s) - low / 8.0).abs() < 1e-18);
        // In the band, between the two.
        let mid = 2.0 * std::f64::consts::PI / 4000.0;
        let scaled = llama3_scaled(mid, &s);
        assert!(scaled < mid && scaled > mid / 8.0);
    }
}
