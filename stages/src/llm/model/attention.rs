//! Grouped-query self-attention of a Llama-family layer: fused CPU kernels for rope and
//! attention (see `kernels`), or a composition of differentiable primitives elsewhere
//! (candle's `sdpa` and fused softmax record no backward).

use candle_core::{Result, Tensor};

use crate::llm::decode::kv_cache::KvCache;
use crate::llm::model::kernels::{self, attention::attention_fused, rope_heads::rope_heads_fused};
use crate::llm::model::lora::Mode;
use crate::llm::model::ops::softmax_last_dim;
use crate::llm::model::projection::Projection;
use crate::llm::model::rope::RopeAngles;

/// q/k/v/o projections and the head layout.
#[derive(Debug, Clone)]
pub struct Attention {
    pub(crate) q_proj: Projection,
    pub(crate) k_proj: Projection,
    pub(crate) v_proj: Projection,
    pub(crate) o_proj: Projection,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
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
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        Self {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            num_heads,
            num_kv_heads,
            head_dim,
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
        let q = self.rotated_heads(&self.q_proj, x, cx, self.num_heads, fused)?;
        let k = self.rotated_heads(&self.k_proj, x, cx, self.num_kv_heads, fused)?;
        let v = self.heads(&self.v_proj, x, cx.mode, self.num_kv_heads)?;
        let (k, v) = match cache {
            Some((cache, layer)) => cache.extend(layer, &k, &v)?,
            None => (k, v),
        };
        let merged = if fused {
            attention_fused(&q, &k, &v, cx.mask)?
        } else {
            // Cached keys are views into larger buffers, which not every matmul takes.
            self.attend(&q, &k.contiguous()?, &v.contiguous()?, cx.mask)?
                .transpose(1, 2)?
                .reshape((batch, seq, self.num_heads * self.head_dim))?
        };
        self.o_proj.forward(&merged, cx.mode)
    }

    /// Projects, splits into heads `[batch, heads, seq, head_dim]` and applies rope: one fused
    /// kernel on the CPU, the composition elsewhere.
    fn rotated_heads(
        &self,
        proj: &Projection,
        x: &Tensor,
        cx: &AttentionContext<'_>,
        heads: usize,
        fused: bool,
    ) -> Result<Tensor> {
        if fused {
            let projected = proj.forward(x, cx.mode)?;
            rope_heads_fused(&projected, cx.angles.cos(), cx.angles.sin(), heads)
        } else {
            cx.angles.apply(&self.heads(proj, x, cx.mode, heads)?)
        }
    }

    /// Projects and splits into heads: `[batch, heads, seq, head_dim]`, contiguous.
    fn heads(&self, proj: &Projection, x: &Tensor, mode: Mode, heads: usize) -> Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        proj.forward(x, mode)?
            .reshape((batch, seq, heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// softmax(q·kᵀ/sqrt(d) + mask)·v without materialising repeated kv heads: the query heads
    /// sharing one kv head (HF's `repeat_kv` order) are stacked along the query axis.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, _, queries, dim) = q.dims4()?;
        let keys = k.dim(2)?;
        let group = self.num_heads / self.num_kv_heads;
        let q = q.reshape((batch, self.num_kv_heads, group * queries, dim))?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (dim as f64).sqrt()))?;
        let scores = scores
            .reshape((batch, self.num_kv_heads, group, queries, keys))?
            .broadcast_add(mask)?;
        let probs = softmax_last_dim(&scores)?.reshape((
            batch,
            self.num_kv_heads,
            group * queries,
            keys,
        ))?;
        probs
            .matmul(v)?
            .reshape((batch, self.num_heads, queries, dim))
    }
}
