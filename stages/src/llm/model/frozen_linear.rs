//! A linear layer whose weight never trains. candle's backward for `Op::Matmul` always computes
//! the gradient of both operands, so a frozen base weight would still cost one extra matmul
//! per projection per step (about a third of a LoRA step); this op's backward returns only the
//! input gradient.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, Layout, MetalStorage, Result, Shape, Storage, Tensor, D,
};

use std::sync::Arc;

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::model::kernels::gemv::Q8Matrix;
use crate::llm::model::kernels::skinny_linear::{LowRank, SkinnyLinear};

/// `y = x·Wᵀ (+ b)` with `W` `[out, in]` held as a constant.
#[derive(Debug, Clone)]
pub struct FrozenLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// An 8-bit copy of the weight for decode steps ([`FrozenLinear::pack_for_decode`]).
    packed: Option<Arc<Q8Matrix>>,
    /// A LoRA's factors that decode steps add to the packed product
    /// ([`FrozenLinear::forward_with_low_rank`]).
    low_rank: Option<Arc<LowRank>>,
}

impl FrozenLinear {
    /// Checks that `weight` is `[out, in]` and `bias` (if any) is `[out]`; `name` is the HF
    /// tensor name used in error messages.
    pub fn new(name: &str, weight: Tensor, bias: Option<Tensor>) -> LlmResult<Self> {
        let (out_features, _) = weight.dims2().map_err(|_| LlmError::Tensor {
            name: name.to_string(),
            message: format!(
                "expected a 2-d weight [out, in], got shape {:?}",
                weight.dims()
            ),
        })?;
        if let Some(b) = &bias {
            if b.dims() != [out_features] {
                return Err(LlmError::Tensor {
                    name: name.replace(".weight", ".bias"),
                    message: format!("expected shape [{out_features}], got {:?}", b.dims()),
                });
            }
        }
        // Detached so that even a weight that came out of a graph (e.g. a merge) is a leaf.
        Ok(Self {
            weight: weight.detach(),
            bias: bias.map(|b| b.detach()),
            packed: None,
            low_rank: None,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Replaces the weight (same shape), e.g. after merging an adapter into it.
    pub fn set_weight(&mut self, weight: Tensor) -> Result<()> {
        if weight.dims() != self.weight.dims() {
            candle_core::bail!(
                "new weight shape {:?} differs from {:?}",
                weight.dims(),
                self.weight.dims()
            )
        }
        self.weight = weight.detach();
        // A packed copy of the old weight would be stale.
        self.packed = None;
        self.low_rank = None;
        Ok(())
    }

    /// Keeps an 8-bit copy of the weight (1.25 bytes per weight instead of 4) that decode
    /// steps read instead: they are bound by how fast weights stream from memory. Returns
    /// whether it was packed (f32 CPU weights whose rows split into 32-element blocks).
    pub fn pack_for_decode(&mut self) -> Result<bool> {
        if !self.weight.device().is_cpu() || self.weight.dtype() != candle_core::DType::F32 {
            return Ok(false);
        }
        let (rows, cols) = self.weight.dims2()?;
        // Read in place: a copy of every weight would cost a fresh, zeroed allocation each.
        let weight = self.weight.contiguous()?;
        let packed =
            crate::llm::model::kernels::with_slice::<f32, _>(&weight, "pack for decode", |w| {
                Ok(Q8Matrix::quantize(w, rows, cols))
            })?;
        self.packed = packed.map(Arc::new);
        Ok(self.packed.is_some())
    }

    /// Drops the 8-bit copy: decode steps use the exact weight again.
    pub fn unpack(&mut self) {
        self.packed = None;
        self.low_rank = None;
    }

    /// Keeps (or with `None` drops) a LoRA's factors for [`FrozenLinear::forward_with_low_rank`].
    pub fn set_low_rank(&mut self, low_rank: Option<LowRank>) {
        self.low_rank = low_rank.map(Arc::new);
    }

    /// `x·Wᵀ (+ b) + scale·x·Aᵀ·Bᵀ` from the 8-bit copy and the kept factors, for a decode-sized
    /// input; `None` when there is no such copy or factors, or `x` is not decode-sized.
    pub fn forward_with_low_rank(&self, x: &Tensor) -> Option<Result<Tensor>> {
        let low_rank = self.low_rank.as_ref()?;
        if self.packed.is_none() || !self.skinny_takes(x) {
            return None;
        }
        Some(self.skinny(x, Some(low_rank.clone())))
    }

    fn skinny_takes(&self, x: &Tensor) -> bool {
        SkinnyLinear::takes(x)
            && self.weight.dtype() == candle_core::DType::F32
            && x.dim(D::Minus1).ok() == Some(self.in_features())
    }

    /// The skinny kernels' product plus the bias.
    fn skinny(&self, x: &Tensor, low_rank: Option<Arc<LowRank>>) -> Result<Tensor> {
        let y = SkinnyLinear {
            weight: self.weight.clone(),
            packed: self.packed.clone(),
            low_rank,
        }
        .forward(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// Bytes of the 8-bit copy, if any.
    pub fn packed_bytes(&self) -> usize {
        self.packed.as_ref().map_or(0, |p| p.bytes())
    }

    /// `x` is `[..., in]`; the result is `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let in_features = x.dim(D::Minus1)?;
        if in_features != self.in_features() {
            candle_core::bail!(
                "linear input has {in_features} features, weight {:?} expects {}",
                self.weight.dims(),
                self.in_features()
            )
        }
        #[cfg(test)]
        if bench::plain_matmul() {
            return self.plain_forward(x);
        }
        if self.skinny_takes(x) {
            return self.skinny(x, None);
        }
        let y = x.contiguous()?.apply_op1(FrozenMatmul {
            weight: self.weight.clone(),
        })?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

#[cfg(test)]
impl FrozenLinear {
    /// What a `candle_nn::Linear` would do: a plain matmul, whose backward also forms `dW`.
    fn plain_forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let x2 = x.reshape(((), self.in_features()))?;
        let y = x2.matmul(&self.weight.t()?)?;
        if let Some(last) = dims.last_mut() {
            *last = self.out_features();
        }
        let y = y.reshape(dims)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Test-only switch to the plain matmul, to measure what the custom op saves.
#[cfg(test)]
pub(crate) mod bench {
    use std::cell::Cell;

    thread_local! {
        static PLAIN: Cell<bool> = const { Cell::new(false) };
    }

    pub(crate) fn plain_matmul() -> bool {
        PLAIN.with(Cell::get)
    }

    pub(crate) fn set_plain_matmul(on: bool) {
        PLAIN.with(|p| p.set(on));
    }
}

/// The custom op: forward `x·Wᵀ` over the flattened leading dimensions, backward `g·W` only.
struct FrozenMatmul {
    weight: Tensor,
}

impl FrozenMatmul {
    /// One GEMM `[m, k] x [k, n]` where the right operand is `W` seen through a transposed
    /// layout (no copy), generic over backends so CUDA/Metal builds work too.
    fn fwd<S: BackendStorage>(
        &self,
        x: &S,
        x_layout: &Layout,
        w: &S,
        w_layout: &Layout,
    ) -> Result<(S, Shape)> {
        if !x_layout.is_contiguous() {
            candle_core::bail!("frozen-matmul: input must be contiguous")
        }
        let dims = x_layout.dims();
        let k = *dims.last().unwrap_or(&0);
        let (n, wk) = w_layout.shape().dims2()?;
        if k != wk {
            candle_core::bail!("frozen-matmul: input has {k} features, weight expects {wk}")
        }
        let m = x_layout.shape().elem_count().checked_div(k).unwrap_or(0);
        let lhs = Layout::contiguous_with_offset((m, k), x_layout.start_offset());
        let rhs = w_layout.transpose(0, 1)?;
        let out = x.matmul(w, (1, m, n, k), &lhs, &rhs)?;
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = n;
        }
        Ok((out, Shape::from(out_dims)))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        match &*w_storage {
            Storage::Cpu(w) => self.fwd(storage, layout, w, w_layout),
            _ => candle_core::bail!("frozen-matmul: weight and input are on different devices"),
        }
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        match &*w_storage {
            Storage::Cuda(w) => self.fwd(storage, layout, w, w_layout),
            _ => candle_core::bail!("frozen-matmul: weight and input are on different devices"),
        }
    }

    fn metal_fwd(&self, storage: &MetalStorage, layout: &Layout) -> Result<(MetalStorage, Shape)> {
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        match &*w_storage {
            Storage::Metal(w) => self.fwd(storage, layout, w, w_layout),
            _ => candle_core::bail!("frozen-matmul: weight and input are on different devices"),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // dL/dx = dL/dy · W; the weight is frozen so dL/dW is never formed.
        let out = self.weight.dim(0)?;
        let grad_2d = grad_res.contiguous()?.reshape(((), out))?;
        let grad_x = grad_2d.matmul(&self.weight)?;
        Ok(Some(grad_x.reshape(arg.shape())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn output_and_input_gradient_equal_plain_matmul_and_weight_gets_none() -> LlmResult<()> {
        let dev = Device::Cpu;
        let w = Var::randn(0f64, 1.0, (5, 3), &dev)?;
        let b = Tensor::randn(0f64, 1.0, 5, &dev)?;
        let x = Var::randn(0f64, 1.0, (2, 4, 3), &dev)?;
        let upstream = Tensor::randn(0f64, 1.0, (2, 4, 5), &dev)?;

        let frozen = FrozenLinear::new("w", w.as_tensor().clone(), Some(b.clone()))?;
        let ours = frozen.forward(x.as_tensor())?;
        let plain = x
            .as_tensor()
            .broadcast_matmul(&w.as_tensor().t()?)?
            .broadcast_add(&b)?;
        assert!(max_abs_diff(&ours, &plain) < 1e-12);

        let g_ours = (&ours * &upstream)?.sum_all()?.backward()?;
        let g_plain = (&plain * &upstream)?.sum_all()?.backward()?;
        let gx_ours = g_ours.get(&x).expect("input gradient");
        let gx_plain = g_plain.get(&x).expect("input gradient");
        assert!(max_abs_diff(gx_ours, gx_plain) < 1e-12);
        assert!(g_plain.get(&w).is_some(), "plain matmul does form dW");
        assert!(g_ours.get(&w).is_none(), "frozen linear must not form dW");
        Ok(())
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((5, 3), DType::F32, &dev).unwrap();
        let bad_bias = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let err = FrozenLinear::new("model.x.weight", w.clone(), Some(bad_bias)).unwrap_err();
        assert!(err.to_string().contains("model.x.bias"), "{err}");
        let lin = FrozenLinear::new("w", w, None).unwrap();
        let x = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        assert!(lin.forward(&x).is_err());
    }
}
