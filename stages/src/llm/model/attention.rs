//! Grouped-query self-attention of a decoder layer (optional per-head q/k norm, any score
//! scale): fused CPU kernels for rope and attention (see `kernels`), or a composition of
//! differentiable primitives elsewhere (candle's `sdpa` and fused softmax record no backward).

use candle_core::{Result, Tensor};

use crate::llm::decode::kv_cache::KvCache;
use crate::llm::model::kernels::{self, attention::attention_fused, rope_heads::rope_heads_fused};
use crate::llm::model::lora::Mode;
use crate::llm::model::ops::{rms_norm, softmax_last_dim};
use crate::llm::model::projection::Projection;
use crate::llm::model::rope::RopeAngles;

/// q/k/v/o projections, the optional per-head q/k norms and the head layout.
#[derive(Debug, Clone)]
pub struct Attention {
    pub(crate) q_proj: Projection,
    pub(crate) k_proj: Projection,
    pub(crate) v_proj: Projection,
    pub(crate) o_proj: Projection,
    /// RMSNorm over each query head before rope (Qwen3, Gemma-3), weight as applied.
    pub(crate) q_norm: Option<Tensor>,
    /// RMSNorm over each key head before rope.
    pub(crate) k_norm: Option<Tensor>,
    shape: HeadShape,
}

/// The head layout and score scale of one attention.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// The factor on `q·kᵀ` (`head_dim^-1/2` unless the family says otherwise).
    pub scale: f64,
    /// Epsilon of the q/k norms.
    pub norm_eps: f64,
}

/// What one attention call needs besides its input.
pub struct AttentionContext<'a> {
    pub angles: &'a RopeAngles,
    /// Additive `[batch, 1, 1, queries, keys]`.
    pub mask: &'a Tensor,
    pub mode: Mode,
}

impl Attention {
    pub fn new(
        [q_proj, k_proj, v_proj, o_proj]: [Projection; 4],
        [q_norm, k_norm]: [Option<Tensor>; 2],
        shape: HeadShape,
    ) -> Self {
        Self {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm,
            k_norm,
            shape,
        }
    }

    /// `x` `[batch, seq, hidden]` -> `[batch, seq, hidden]`. With a cache, this step's keys and
    /// values are appended to it and the queries attend to everything cached.
    pub fn forward(
        &self,
        x: &Tensor,
        cx: &AttentionContext<'_>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        let fused = kernels::applies(x);
        let HeadShape {
            num_heads,
            num_kv_heads,
            head_dim,
            scale,
            ..
        } = self.shape;
        let q = self.rotated_heads(&self.q_proj, self.q_norm.as_ref(), x, cx, num_heads, fused)?;
        let k = self.rotated_heads(
            &self.k_proj,
            self.k_norm.as_ref(),
            x,
            cx,
            num_kv_heads,
            fused,
        )?;
        let v = self.heads(&self.v_proj, x, cx.mode, num_kv_heads)?;
        let (k, v) = match cache {
            Some((cache, layer)) => cache.extend(layer, &k, &v)?,
            None => (k, v),
        };
        let merged = if fused {
            attention_fused(&q, &k, &v, cx.mask, scale)?
        } else {
            // Cached keys are views into larger buffers, which not every matmul takes.
            self.attend(&q, &k.contiguous()?, &v.contiguous()?, cx.mask)?
                .transpose(1, 2)?
                .reshape((batch, seq, num_heads * head_dim))?
        };
        self.o_proj.forward(&merged, cx.mode)
    }

    /// Projects, splits into heads `[batch, heads, seq, head_dim]`, applies the per-head norm
    /// if any, then rope: one fused kernel on the CPU, the composition elsewhere.
    fn rotated_heads(
        &self,
        proj: &Projection,
        norm: Option<&Tensor>,
        x: &Tensor,
        cx: &AttentionContext<'_>,
        heads: usize,
        fused: bool,
    ) -> Result<Tensor> {
        let eps = self.shape.norm_eps;
        if fused {
            let mut projected = proj.forward(x, cx.mode)?;
            if let Some(w) = norm {
                let (batch, seq, width) = projected.dims3()?;
                projected = rms_norm(
                    &projected.reshape((batch, seq, heads, self.shape.head_dim))?,
                    w,
                    eps,
                )?
                .reshape((batch, seq, width))?;
            }
            rope_heads_fused(&projected, cx.angles.cos(), cx.angles.sin(), heads)
        } else {
            let mut split = self.heads(proj, x, cx.mode, heads)?;
            if let Some(w) = norm {
                split = rms_norm(&split, w, eps)?;
            }
            cx.angles.apply(&split)
        }
    }

    /// Projects and splits into heads: `[batch, heads, seq, head_dim]`, contiguous.
    fn heads(&self, proj: &Projection, x: &Tensor, mode: Mode, heads: usize) -> Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        proj.forward(x, mode)?
            .reshape((batch, seq, heads, self.shape.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// softmax(q·kᵀ·scale + mask)·v without materialising repeated kv heads: the query heads
    /// sharing one kv head (HF's `repeat_kv` order) are stacked along the query axis.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, _, queries, dim) = q.dims4()?;
        let keys = k.dim(2)?;
        let (heads, kv_heads) = (self.shape.num_heads, self.shape.num_kv_heads);
        let group = heads / kv_heads;
        let q = q.reshape((batch, kv_heads, group * queries, dim))?;
        let scores = (q.matmul(&k.t()?)? * self.shape.scale)?;
        let scores = scores
            .reshape((batch, kv_heads, group, queries, keys))?
            .broadcast_add(mask)?;
        let probs = softmax_last_dim(&scores)?.reshape((batch, kv_heads, group * queries, keys))?;
        probs.matmul(v)?.reshape((batch, heads, queries, dim))
    }
}
