//! Rotary position embedding as HF applies it (`rotate_half` convention; linear, llama3 and
//! dynamic-NTK frequency scaling), composed from differentiable primitives because candle's
//! fused `rope*` kernels record no backward.

use candle_core::{DType, Device, Result, Tensor};

use crate::llm::model::config::{Llama3Scaling, ModelConfig, RopeScaling};
use crate::llm::model::ops::rotate_half;

/// The rotation frequencies of one model; cos/sin are computed for the positions at hand
/// (cheap next to attention, and no table sized by `max_position_embeddings`).
#[derive(Debug, Clone)]
pub struct Rope {
    /// `head_dim / 2` inverse frequencies, in f64 so the angles are at least as accurate as
    /// HF's f32 ones.
    inv_freq: Vec<f64>,
    /// Dynamic NTK scaling recomputes the frequencies from the longest position of a call.
    dynamic: Option<DynamicNtk>,
}

/// HF `_compute_dynamic_ntk_parameters`: past `original` positions the base grows to
/// `theta·(factor·len/original − (factor − 1))^(d/(d−2))`.
#[derive(Debug, Clone)]
struct DynamicNtk {
    theta: f64,
    factor: f64,
    original: usize,
    dim: usize,
}

/// cos/sin for one batch of positions, shaped `[batch, 1, seq, head_dim]` to broadcast over
/// heads; shared by the queries and keys of every layer.
#[derive(Debug, Clone)]
pub struct RopeAngles {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// The rope of the full-attention layers: `rope_theta` with `rope_scaling`.
    pub fn new(config: &ModelConfig) -> Self {
        let dynamic = match &config.rope_scaling {
            Some(RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings,
            }) => Some(DynamicNtk {
                theta: config.rope_theta,
                factor: *factor,
                original: *original_max_position_embeddings,
                dim: config.head_dim,
            }),
            _ => None,
        };
        Self {
            inv_freq: inverse_frequencies(config),
            dynamic,
        }
    }

    /// The rope of the sliding-window layers when they have their own base (Gemma-3's
    /// `rope_local_base_freq`, unscaled).
    pub fn local(config: &ModelConfig) -> Option<Self> {
        config.rope_local_theta.map(|theta| Self {
            inv_freq: base_frequencies(theta, config.head_dim),
            dynamic: None,
        })
    }

    /// The frequencies for a call whose longest position is `max_position`.
    fn frequencies(&self, max_position: Option<u32>) -> std::borrow::Cow<'_, [f64]> {
        match (&self.dynamic, max_position) {
            (Some(d), Some(max)) if max as usize + 1 > d.original => {
                let len = max as f64 + 1.0;
                let dim = d.dim as f64;
                let base = d.theta
                    * (d.factor * len / d.original as f64 - (d.factor - 1.0))
                        .powf(dim / (dim - 2.0));
                std::borrow::Cow::Owned(base_frequencies(base, d.dim))
            }
            _ => std::borrow::Cow::Borrowed(&self.inv_freq),
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
        let inv_freq = self.frequencies(positions.iter().copied().max());
        let half = inv_freq.len();
        let dim = 2 * half;
        let mut cos = Vec::with_capacity(positions.len() * dim);
        let mut sin = Vec::with_capacity(positions.len() * dim);
        for &pos in positions {
            // HF: emb = cat(freqs, freqs), so both halves of a head share frequencies.
            for i in 0..dim {
                let angle = pos as f64 * inv_freq[i % half];
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

/// `1 / theta^(2i/d)`.
fn base_frequencies(theta: f64, dim: usize) -> Vec<f64> {
    (0..dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64))
        .collect()
}

/// The frequencies of `rope_theta`, scaled as the config asks (dynamic NTK is applied per
/// call, see [`Rope::frequencies`]).
fn inverse_frequencies(config: &ModelConfig) -> Vec<f64> {
    let base = base_frequencies(config.rope_theta, config.head_dim);
    match &config.rope_scaling {
        Some(RopeScaling::Llama3(scaling)) => {
            base.iter().map(|&f| llama3_scaled(f, scaling)).collect()
        }
        Some(RopeScaling::Linear { factor }) => base.iter().map(|&f| f / factor).collect(),
        Some(RopeScaling::Dynamic { .. }) | None => base,
    }
}

/// HF `_compute_llama3_parameters`: long wavelengths are slowed by `factor`, short ones kept,
/// and the band between is interpolated smoothly.
fn llama3_scaled(inv_freq: f64, s: &Llama3Scaling) -> f64 {
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
        let s = Llama3Scaling {
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

    #[test]
    fn dynamic_ntk_grows_the_base_only_past_the_original_length() {
        let mut config = crate::llm::testing::micro::micro_config(
            crate::llm::model::config::Architecture::Llama,
        );
        config.rope_scaling = Some(RopeScaling::Dynamic {
            factor: 2.0,
            original_max_position_embeddings: 8,
        });
        let rope = Rope::new(&config);
        let plain = base_frequencies(config.rope_theta, config.head_dim);
        assert_eq!(&*rope.frequencies(Some(7)), plain.as_slice());
        let grown = rope.frequencies(Some(15));
        // len 16 = 2 × original: base × (2·2 − 1)^(d/(d−2)).
        let d = config.head_dim as f64;
        let want = base_frequencies(
            config.rope_theta * 3f64.powf(d / (d - 2.0)),
            config.head_dim,
        );
        for (g, w) in grown.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-15 * w.abs().max(1e-30), "{g} vs {w}");
        }
        assert!(grown[1] < plain[1]);
    }

    #[test]
    fn linear_scaling_divides_every_frequency() {
        let mut config = crate::llm::testing::micro::micro_config(
            crate::llm::model::config::Architecture::Llama,
        );
        let plain = inverse_frequencies(&config);
        config.rope_scaling = Some(RopeScaling::Linear { factor: 4.0 });
        let scaled = inverse_frequencies(&config);
        for (s, p) in scaled.iter().zip(&plain) {
            assert_eq!(*s, p / 4.0);
        }
    }
}
