//! Grouped-query attention `softmax(q·kᵀ·scale + mask)·v` as one op, one parallel task per
//! (sequence, kv head), writing the merged-heads layout `[b, t, heads·d]` the output
//! projection reads. Like FlashAttention, nothing score-sized survives the forward: the
//! backward recomputes the probabilities from q and k, so the graph holds only the inputs and
//! the output, where the composition holds four `[b, heads, t, keys]` tensors per layer.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::{matmul, MatMut, MatRef, Threads};
use super::{
    contiguous_slice, dispatch_real, into_storage, larger, slab_slice, slabbed, with_slice, Real,
};

/// `q` `[b, heads, t, d]`, `k`/`v` `[b, kv_heads, keys, d]` (rope applied), `mask` additive
/// `[b, 1, 1, t, keys]`, scores scaled by `scale` (`1/sqrt(d)` for most families) →
/// `[b, t, heads·d]`. `k` and `v` may be views of the first slots of
/// KV-cache buffers (see [`slabbed`]); they are read in place. The query heads of kv head `j` are
/// `j·group .. (j+1)·group` (HF's `repeat_kv` order).
pub fn attention_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (kb, hkv, keys, kd) = k.dims4()?;
    if kb != b || kd != d || v.dims() != k.dims() || hkv == 0 || !h.is_multiple_of(hkv) {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    if mask.dims() != [b, 1, 1, t, keys] {
        candle_core::bail!(
            "attention: mask is {:?}, expected [{b}, 1, 1, {t}, {keys}]",
            mask.dims()
        )
    }
    let op = Attention {
        mask: mask.contiguous()?,
        scale,
        dims: Dims {
            b,
            h,
            hkv,
            t,
            keys,
            d,
        },
    };
    let in_place = |t: &Tensor| {
        if slabbed(t) {
            Ok(t.clone())
        } else {
            t.contiguous()
        }
    };
    q.contiguous()?.apply_op3(&in_place(k)?, &in_place(v)?, op)
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    hkv: usize,
    t: usize,
    keys: usize,
    d: usize,
}

impl Dims {
    fn group(&self) -> usize {
        self.h / self.hkv
    }
    /// Rows of one task's score matrix: every query of every head in the group.
    fn rows(&self) -> usize {
        self.group() * self.t
    }
}

struct Attention {
    mask: Tensor,
    scale: f64,
    dims: Dims,
}

/// `k` and `v` with the distance between the starts of two heads' rows (`keys·d` when
/// contiguous, more in a KV-cache buffer).
struct KeysValues<'a, T> {
    k: &'a [T],
    v: &'a [T],
    head_stride: usize,
}

/// The inputs of one (sequence, kv head) task.
struct Task<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    mask: &'a [T],
}

fn task<'a, T: Real>(
    n: &Dims,
    i: usize,
    q: &'a [T],
    kv: &KeysValues<'a, T>,
    mask: &'a [T],
) -> Task<'a, T> {
    let (bi, _) = (i / n.hkv, i % n.hkv);
    let qs = n.rows() * n.d;
    let (start, kvs) = (i * kv.head_stride, n.keys * n.d);
    Task {
        q: &q[i * qs..(i + 1) * qs],
        k: &kv.k[start..start + kvs],
        v: &kv.v[start..start + kvs],
        mask: &mask[bi * n.t * n.keys..(bi + 1) * n.t * n.keys],
    }
}

/// `softmax(q·kᵀ·scale + mask)` of one task, `[rows, keys]`.
fn probabilities<T: Real>(n: &Dims, x: &Task<'_, T>, scale: T) -> Result<Vec<T>> {
    let (rows, keys) = (n.rows(), n.keys);
    let mut p = vec![T::zero(); rows * keys];
    matmul(
        MatMut::new(&mut p, rows, keys),
        MatRef::new(x.q, rows, n.d),
        MatRef::new(x.k, keys, n.d).t(),
        false,
        scale,
        Threads::Single,
    )?;
    for (r, row) in p.chunks_mut(keys).enumerate() {
        let m = &x.mask[(r % n.t) * keys..(r % n.t + 1) * keys];
        let mut max = T::neg_infinity();
        for (s, &mv) in row.iter_mut().zip(m) {
            *s += mv;
            max = larger(max, *s);
        }
        let mut sum = T::zero();
        for s in row.iter_mut() {
            *s = exp_shifted(*s - max);
            sum += *s;
        }
        let inv = T::one() / sum;
        row.iter_mut().for_each(|s| *s *= inv);
    }
    Ok(p)
}

/// `exp(x)` for `x <= 0`; arguments past the underflow point give 0 directly (masked scores
/// are -1e9: libm's underflow path is slow and they would all land there).
fn exp_shifted<T: Real>(x: T) -> T {
    if x < T::from_f64(-80.0) {
        T::zero()
    } else {
        x.exp()
    }
}

fn forward<T: Real>(
    n: Dims,
    q: &[T],
    kv: &KeysValues<'_, T>,
    mask: &[T],
    scale: f64,
) -> Result<Vec<T>> {
    let scale = T::from_f64(scale);
    // Per task: the group's context rows `[group, t, d]`.
    let blocks = (0..n.b * n.hkv)
        .into_par_iter()
        .map(|i| {
            let x = task(&n, i, q, kv, mask);
            let p = probabilities(&n, &x, scale)?;
            let mut ctx = vec![T::zero(); n.rows() * n.d];
            matmul(
                MatMut::new(&mut ctx, n.rows(), n.d),
                MatRef::new(&p, n.rows(), n.keys),
                MatRef::new(x.v, n.keys, n.d),
                false,
                T::one(),
                Threads::Single,
            )?;
            Ok(ctx)
        })
        .collect::<Result<Vec<_>>>()?;
    // Scatter into `[b, t, heads·d]`: row (b, t) holds head h's context at columns h·d.
    let (g, width) = (n.group(), n.h * n.d);
    let mut out = vec![T::zero(); n.b * n.t * width];
    out.par_chunks_mut(width).enumerate().for_each(|(bt, row)| {
        let (bi, ti) = (bt / n.t, bt % n.t);
        for hi in 0..n.h {
            let (j, gi) = (hi / g, hi % g);
            let src = &blocks[bi * n.hkv + j][(gi * n.t + ti) * n.d..][..n.d];
            row[hi * n.d..(hi + 1) * n.d].copy_from_slice(src);
        }
    });
    Ok(out)
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = self.dims;
        let out = dispatch_real!(qs, "attention", |s: T| {
            let q = contiguous_slice::<T>(s, ql, "attention q")?;
            let (k, head_stride) = slab_slice::<T>(ks, kl, "attention k")?;
            let (v, v_stride) = slab_slice::<T>(vs, vl, "attention v")?;
            if v_stride != head_stride {
                candle_core::bail!("attention: k and v are laid out differently")
            }
            let kv = KeysValues { k, v, head_stride };
            with_slice::<T, _>(&self.mask, "attention mask", |mask| {
                Ok(into_storage(forward(n, q, &kv, mask, self.scale)?))
            })?
        });
        Ok((out, Shape::from((n.b, n.t, n.h * n.d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = self.dims;
        let back = AttentionBackward {
            mask: self.mask.clone(),
            scale: self.scale,
            dims: n,
            q: q.clone(),
            out: res.clone(),
        };
        // Training never reads a KV cache, but a view of one would need copying here.
        let packed =
            k.contiguous()?
                .apply_op3_no_bwd(&v.contiguous()?, &grad.contiguous()?, &back)?;
        let (qn, kn) = (n.b * n.h * n.t * n.d, n.b * n.hkv * n.keys * n.d);
        let dq = packed.narrow(0, 0, qn)?.reshape(q.shape())?;
        let dk = packed.narrow(0, qn, kn)?.reshape(k.shape())?;
        let dv = packed.narrow(0, qn + kn, kn)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The backward, as an op over (k, v, d_out) holding q and the forward's output: returns
/// `dq`, `dk`, `dv` flattened one after the other.
struct AttentionBackward {
    mask: Tensor,
    scale: f64,
    dims: Dims,
    q: Tensor,
    out: Tensor,
}

/// Gathers the group's rows of a `[b, t, heads·d]` tensor into `[group·t, d]`.
fn group_rows<T: Real>(n: &Dims, merged: &[T], i: usize) -> Vec<T> {
    let (bi, j, g) = (i / n.hkv, i % n.hkv, n.group());
    let width = n.h * n.d;
    let mut rows = Vec::with_capacity(n.rows() * n.d);
    for gi in 0..g {
        let hi = j * g + gi;
        for ti in 0..n.t {
            let at = (bi * n.t + ti) * width + hi * n.d;
            rows.extend_from_slice(&merged[at..at + n.d]);
        }
    }
    rows
}

struct Grads<'a, T> {
    dq: &'a mut [T],
    dk: &'a mut [T],
    dv: &'a mut [T],
}

#[allow(clippy::too_many_arguments)]
fn backward_task<T: Real>(
    n: &Dims,
    i: usize,
    x: &Task<'_, T>,
    out: &[T],
    d_out: &[T],
    scale: T,
    grads: Grads<'_, T>,
) -> Result<()> {
    let (rows, keys, d) = (n.rows(), n.keys, n.d);
    let p = probabilities(n, x, scale)?;
    let o = group_rows(n, out, i);
    let d_o = group_rows(n, d_out, i);
    // dV = Pᵀ·dO
    matmul(
        MatMut::new(grads.dv, keys, d),
        MatRef::new(&p, rows, keys).t(),
        MatRef::new(&d_o, rows, d),
        false,
        T::one(),
        Threads::Single,
    )?;
    // dP = dO·Vᵀ, then dS = P ⊙ (dP − rowsum(dO ⊙ O)) in place.
    let mut ds = vec![T::zero(); rows * keys];
    matmul(
        MatMut::new(&mut ds, rows, keys),
        MatRef::new(&d_o, rows, d),
        MatRef::new(x.v, keys, d).t(),
        false,
        T::one(),
        Threads::Single,
    )?;
    for r in 0..rows {
        let delta: T = o[r * d..(r + 1) * d]
            .iter()
            .zip(&d_o[r * d..(r + 1) * d])
            .map(|(&a, &b)| a * b)
            .sum();
        let (dsr, pr) = (
            &mut ds[r * keys..(r + 1) * keys],
            &p[r * keys..(r + 1) * keys],
        );
        for (s, &pv) in dsr.iter_mut().zip(pr) {
            *s = pv * (*s - delta);
        }
    }
    // dQ = scale·dS·K, dK = scale·dSᵀ·Q
    matmul(
        MatMut::new(grads.dq, rows, d),
        MatRef::new(&ds, rows, keys),
        MatRef::new(x.k, keys, d),
        false,
        scale,
        Threads::Single,
    )?;
    matmul(
        MatMut::new(grads.dk, keys, d),
        MatRef::new(&ds, rows, keys).t(),
        MatRef::new(x.q, rows, d),
        false,
        scale,
        Threads::Single,
    )
}

impl AttentionBackward {
    fn run<T: Real>(&self, k: &[T], v: &[T], d_out: &[T]) -> Result<Vec<T>> {
        let n = self.dims;
        let scale = T::from_f64(self.scale);
        let (qn, kn) = (n.b * n.h * n.t * n.d, n.b * n.hkv * n.keys * n.d);
        let mut packed = vec![T::zero(); qn + 2 * kn];
        let (dq, rest) = packed.split_at_mut(qn);
        let (dk, dv) = rest.split_at_mut(kn);
        with_slice::<T, _>(&self.q, "attention q", |q| {
            with_slice::<T, _>(&self.out, "attention out", |out| {
                with_slice::<T, _>(&self.mask, "attention mask", |mask| {
                    dq.par_chunks_mut(n.rows() * n.d)
                        .zip(dk.par_chunks_mut(n.keys * n.d))
                        .zip(dv.par_chunks_mut(n.keys * n.d))
                        .enumerate()
                        .try_for_each(|(i, ((dq, dk), dv))| {
                            let kv = KeysValues {
                                k,
                                v,
                                head_stride: n.keys * n.d,
                            };
                            let x = task(&n, i, q, &kv, mask);
                            backward_task(&n, i, &x, out, d_out, scale, Grads { dq, dk, dv })
                        })
                })
            })
        })?;
        Ok(packed)
    }
}

impl CustomOp3 for AttentionBackward {
    fn name(&self) -> &'static str {
        "attention-backward"
    }

    fn cpu_fwd(
        &self,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch_real!(ks, "attention-backward", |s: T| {
            let k = contiguous_slice::<T>(s, kl, "attention-backward k")?;
            let v = contiguous_slice::<T>(vs, vl, "attention-backward v")?;
            let g = contiguous_slice::<T>(gs, gl, "attention-backward grad")?;
            into_storage(self.run(k, v, g)?)
        });
        let n = self.dims;
        let len = n.b * n.h * n.t * n.d + 2 * n.b * n.hkv * n.keys * n.d;
        Ok((out, Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::model::kernels::testing::{assert_same_fn_and_grads, randn};
    use crate::llm::model::ops::{softmax_composed, MASK_VALUE};
    use candle_core::{Device, Var};

    /// The model's composition (see `Attention::attend`) plus the head merge.
    fn plain(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, h, t, d) = q.dims4()?;
        let (_, hkv, keys, _) = k.dims4()?;
        let g = h / hkv;
        let q = q.reshape((b, hkv, g * t, d))?;
        let scores = (q.matmul(&k.t()?)? * scale)?
            .reshape((b, hkv, g, t, keys))?
            .broadcast_add(mask)?;
        let p = softmax_composed(&scores)?.reshape((b, hkv, g * t, keys))?;
        p.matmul(v)?
            .reshape((b, h, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, h * d))
    }

    /// Causal with left padding on row 1 and a fully masked (padding) query.
    fn mask(b: usize, t: usize, keys: usize) -> Result<Tensor> {
        let mut m = vec![0f64; b * t * keys];
        for bi in 0..b {
            for ti in 0..t {
                for ki in 0..keys {
                    let q_pos = keys - t + ti;
                    let padded = bi == 1 && ki < 2;
                    if ki > q_pos || padded {
                        m[(bi * t + ti) * keys + ki] = MASK_VALUE;
                    }
                }
            }
        }
        Tensor::from_vec(m, (b, 1, 1, t, keys), &Device::Cpu)
    }

    #[test]
    fn matches_the_composition_in_value_and_gradients() -> Result<()> {
        let (b, h, hkv, t, d) = (2, 6, 2, 5, 8);
        // The head-dim scale, and Gemma's `query_pre_attn_scalar` one that differs from it.
        for (keys, scale) in [(5, 1.0 / (d as f64).sqrt()), (9, 1.0 / 3.0)] {
            let q = Var::from_tensor(&randn(&[b, h, t, d], 1.5, 1)?)?;
            let k = Var::from_tensor(&randn(&[b, hkv, keys, d], 1.5, 2)?)?;
            let v = Var::from_tensor(&randn(&[b, hkv, keys, d], 1.0, 3)?)?;
            let m = mask(b, t, keys)?;
            assert_same_fn_and_grads(
                &[&q, &k, &v],
                |x| attention_fused(x[0], x[1], x[2], &m, scale),
                |x| plain(x[0], x[1], x[2], &m, scale),
                1e-12,
            )?;
        }
        Ok(())
    }

    /// Keys and values read in place from the first slots of larger buffers (a KV cache)
    /// give exactly what their contiguous copies give; the backward copies them and agrees.
    #[test]
    fn reads_views_of_cache_buffers_in_place() -> Result<()> {
        let (b, h, hkv, t, d, keys, capacity) = (2, 6, 2, 3, 8, 9, 16);
        let q = randn(&[b, h, t, d], 1.5, 1)?;
        let k = randn(&[b, hkv, capacity, d], 1.5, 2)?.narrow(2, 0, keys)?;
        let v = randn(&[b, hkv, capacity, d], 1.0, 3)?.narrow(2, 0, keys)?;
        assert!(slabbed(&k) && !k.is_contiguous());
        let m = mask(b, t, keys)?;
        let viewed = attention_fused(&q, &k, &v, &m, 0.25)?;
        let copied = attention_fused(&q, &k.contiguous()?, &v.contiguous()?, &m, 0.25)?;
        let diff = (viewed - copied)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert_eq!(diff, 0.0);
        // A transposed view is not a cache layout: it is copied, not misread.
        let kt = randn(&[b, keys, hkv, d], 1.5, 2)?.transpose(1, 2)?;
        assert!(!slabbed(&kt));
        let plain_out = plain(&q, &kt.contiguous()?, &kt.contiguous()?, &m, 0.25)?;
        let fused_out = attention_fused(&q, &kt, &kt, &m, 0.25)?;
        let diff = (plain_out - fused_out)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert!(diff < 1e-12, "{diff}");
        Ok(())
    }

    #[test]
    fn refuses_shapes_that_do_not_fit() {
        let q = randn(&[1, 3, 2, 4], 1.0, 1).unwrap();
        let k = randn(&[1, 2, 2, 4], 1.0, 2).unwrap();
        let m = mask(1, 2, 2).unwrap();
        assert!(
            attention_fused(&q, &k, &k, &m, 0.5).is_err(),
            "3 heads over 2 kv heads"
        );
    }
}
