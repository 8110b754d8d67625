//! `y = x·Wᵀ` for decode steps (a few rows of `x`) through the skinny kernels of
//! [`super::gemv`]: the weights in f32 or, when the model was packed for decoding, in 8-bit
//! blocks. Evaluation only: it records no backward.

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
        let mut dims = layout.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = out_f;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}
