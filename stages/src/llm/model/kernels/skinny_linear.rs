//! `y = x·Wᵀ` for decode steps (a few rows of `x`) through the skinny kernels of
//! [`super::gemv`]: the weights in f32 or, when the model was packed for decoding, in 8-bit
//! blocks, plus optionally a LoRA's low-rank term in f32. Evaluation only: it records no
//! backward.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};

use super::gemv::{matmul_t_f32, Q8Matrix};
use super::{contiguous_slice, with_slice};

/// At most this many rows go through the skinny kernels; more is a prefill, for the GEMM.
pub const MAX_ROWS: usize = 16;

/// The weight of a frozen linear as the skinny kernels read it.
#[derive(Debug, Clone)]
pub struct SkinnyLinear {
    /// `[out, in]` f32; used when `packed` is absent.
    pub weight: Tensor,
    pub packed: Option<Arc<Q8Matrix>>,
    /// A LoRA kept beside the 8-bit copy instead of merged into it: the copy then holds a GGUF
    /// base's weights exactly, and only the small factors are added, in f32.
    pub low_rank: Option<Arc<LowRank>>,
}

/// `scale·B·A` of a LoRA as plain f32 rows: `a` `[rank, in]`, `bt` = `(scale·B)ᵀ`
/// `[rank, out]`.
#[derive(Debug)]
pub struct LowRank {
    rank: usize,
    a: Vec<f32>,
    bt: Vec<f32>,
}

impl LowRank {
    /// From a LoRA's `A` `[rank, in]`, `B` `[out, rank]` and scale.
    pub fn new(a: &Tensor, b: &Tensor, scale: f64) -> Result<Self> {
        let (rank, _) = a.dims2()?;
        let (_, b_rank) = b.dims2()?;
        if b_rank != rank {
            candle_core::bail!("low rank: A {:?} and B {:?} do not fit", a.dims(), b.dims())
        }
        let flat = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
        let scaled_t = (b.to_dtype(DType::F64)? * scale)?.t()?.contiguous()?;
        Ok(Self {
            rank,
            a: flat(a)?,
            bt: flat(&scaled_t)?,
        })
    }

    /// `y[i] += B·(A·x[i])` for every row `i`, on the calling thread: rank-8 factors are too
    /// little work to pay for waking the pool once more per projection.
    fn add_to(&self, x: &[f32], in_f: usize, y: &mut [f32], out_f: usize) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports the feature the function is compiled for.
            return unsafe { low_rank_avx2(self, x, in_f, y, out_f) };
        }
        low_rank(self, x, in_f, y, out_f);
    }
}

/// `t = A·x[i]` (dot products), then `y[i] += Σ_j t_j·Bᵀ_j` (contiguous passes), row by row.
#[inline(always)]
fn low_rank(lr: &LowRank, x: &[f32], in_f: usize, y: &mut [f32], out_f: usize) {
    let mut t = vec![0f32; lr.rank];
    for (yi, xi) in y.chunks_mut(out_f).zip(x.chunks(in_f)) {
        for (tj, a) in t.iter_mut().zip(lr.a.chunks_exact(in_f)) {
            *tj = dot(a, xi);
        }
        for (&tj, bj) in t.iter().zip(lr.bt.chunks_exact(out_f)) {
            for (yo, &b) in yi.iter_mut().zip(bj) {
                *yo += tj * b;
            }
        }
    }
}

/// Sixteen independent partial sums, so the loop vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += xa[l] * xb[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// [`low_rank`] compiled for AVX2 (the baseline build vectorises 4 wide only).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn low_rank_avx2(lr: &LowRank, x: &[f32], in_f: usize, y: &mut [f32], out_f: usize) {
    low_rank(lr, x, in_f, y, out_f)
}

impl SkinnyLinear {
    /// Whether `x` is a decode-sized, untracked f32 CPU input these kernels take.
    pub fn takes(x: &Tensor) -> bool {
        let rows = x.elem_count() / x.dim(D::Minus1).unwrap_or(1).max(1);
        super::applies(x) && x.dtype() == DType::F32 && !x.track_op() && rows <= MAX_ROWS
    }

    /// `x` `[..., in]` → `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for SkinnyLinear {
    fn name(&self) -> &'static str {
        "skinny-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out_f, in_f) = self.weight.dims2()?;
        if layout.dims().last() != Some(&in_f) {
            candle_core::bail!(
                "skinny-linear: input {:?} for weight [{out_f}, {in_f}]",
                layout.dims()
            )
        }
        let x = contiguous_slice::<f32>(storage, layout, "skinny-linear")?;
        let rows = x.len() / in_f.max(1);
        let mut y = vec![0f32; rows * out_f];
        match &self.packed {
            Some(q) => q.matmul_t(x, &mut y),
            None => with_slice::<f32, _>(&self.weight, "skinny-linear weight", |w| {
                matmul_t_f32(w, out_f, in_f, x, &mut y);
                Ok(())
            })?,
        }
        if let Some(low_rank) = &self.low_rank {
            if low_rank.a.len() != low_rank.rank * in_f
                || low_rank.bt.len() != low_rank.rank * out_f
            {
                candle_core::bail!("skinny-linear: low-rank factors do not fit [{out_f}, {in_f}]")
            }
            low_rank.add_to(x, in_f, &mut y, out_f);
        }
        let mut dims = layout.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = out_f;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The product with a low-rank term equals `x·Wᵀ + scale·x·Aᵀ·Bᵀ` (f32 and packed
    /// weights, one and several rows, input widths with and without a tail of 16).
    #[test]
    fn low_rank_term_is_the_lora_product() -> Result<()> {
        let dev = Device::Cpu;
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7919 + seed * 131) % 1000) as f32 / 500.0) - 1.0)
                .collect()
        };
        for (out_f, in_f, rank) in [(48, 64, 4), (40, 96, 8)] {
            let w = Tensor::from_vec(values(out_f * in_f, 1), (out_f, in_f), &dev)?;
            let a = Tensor::from_vec(values(rank * in_f, 2), (rank, in_f), &dev)?;
            let b = Tensor::from_vec(values(out_f * rank, 3), (out_f, rank), &dev)?;
            for rows in [1, 5] {
                let x = Tensor::from_vec(values(rows * in_f, 4), (rows, in_f), &dev)?;
                let want = (x.matmul(&w.t()?)? + (x.matmul(&a.t()?)?.matmul(&b.t()?)? * 0.5)?)?;
                let plain = SkinnyLinear {
                    weight: w.clone(),
                    packed: None,
                    low_rank: Some(Arc::new(LowRank::new(&a, &b, 0.5)?)),
                };
                let diff = (plain.forward(&x)? - &want)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                assert!(
                    diff < 1e-4,
                    "{out_f}x{in_f} rank {rank}, {rows} rows: {diff}"
                );
            }
        }
        Ok(())
    }
}
