//! `cargo bench -p pipe-stages --bench kernels`: each fused CPU kernel against the plain candle
//! composition it replaces, forward and forward+backward, at SmolLM2-135M's sizes for a
//! 4x256-token training batch, so a regression in either shows. Prints one table (median of
//! a few repetitions, milliseconds); `PIPE_BENCH_REPS` changes the repetitions.

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var, D};
use pipe_stages::llm::kernels::attention::attention_fused;
use pipe_stages::llm::kernels::gemv::{matmul_t_f32, Q8Matrix};
use pipe_stages::llm::kernels::lm_head_loss::{target_logprobs_fused, DEFAULT_CHUNK};
use pipe_stages::llm::kernels::lora_linear::{Dropout, LoraLinear};
use pipe_stages::llm::kernels::rms_norm::rms_norm_fused;
use pipe_stages::llm::kernels::rope_heads::rope_heads_fused;
use pipe_stages::llm::kernels::swiglu::swiglu_fused;
use pipe_stages::llm::loss::log_prob_of;
use pipe_stages::llm::ops::{rms_norm_composed, rotate_half, softmax_composed, MASK_VALUE};

const BATCH: usize = 4;
const SEQ: usize = 256;
const HIDDEN: usize = 576;
const INTER: usize = 1536;
const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const VOCAB: usize = 49152;
const RANK: usize = 16;

fn reps() -> usize {
    std::env::var("PIPE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// Median wall time of `f` in milliseconds, after one warm-up.
fn time(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut samples = Vec::new();
    for _ in 0..reps() {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn randn(shape: &[usize], std: f64) -> Result<Tensor> {
    Tensor::randn(0f32, std as f32, shape, &Device::Cpu)
}

fn var(shape: &[usize], std: f64) -> Result<Var> {
    Var::from_tensor(&randn(shape, std)?)
}

/// Times `op` forward only and forward + backward of `sum(out)` w.r.t. `wrt`.
fn row(
    name: &str,
    wrt: &[&Var],
    fused: impl Fn() -> Result<Tensor>,
    plain: impl Fn() -> Result<Tensor>,
) -> Result<()> {
    let fwd = |f: &dyn Fn() -> Result<Tensor>| time(|| f().map(drop));
    let both = |f: &dyn Fn() -> Result<Tensor>| {
        time(|| {
            let grads = f()?.sum_all()?.backward()?;
            for v in wrt {
                let _ = grads.get(v);
            }
            Ok(())
        })
    };
    let (ff, pf) = (fwd(&fused)?, fwd(&plain)?);
    let (fb, pb) = (both(&fused)?, both(&plain)?);
    println!(
        "{name:<14} {ff:>10.2} {pf:>10.2} {:>7.2}x {fb:>10.2} {pb:>10.2} {:>7.2}x",
        pf / ff,
        pb / fb
    );
    Ok(())
}

fn rope_angles() -> Result<(Tensor, Tensor)> {
    let pos: Vec<f32> = (0..BATCH * SEQ * HEAD_DIM)
        .map(|i| ((i / HEAD_DIM) % SEQ) as f32 * 0.01 * (1 + i % (HEAD_DIM / 2)) as f32)
        .collect();
    let angles = Tensor::from_vec(pos, (BATCH, 1, SEQ, HEAD_DIM), &Device::Cpu)?;
    Ok((angles.cos()?, angles.sin()?))
}

fn causal_mask() -> Result<Tensor> {
    let m: Vec<f32> = (0..BATCH * SEQ * SEQ)
        .map(|i| {
            let (q, k) = ((i / SEQ) % SEQ, i % SEQ);
            if k > q {
                MASK_VALUE as f32
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(m, (BATCH, 1, 1, SEQ, SEQ), &Device::Cpu)
}

fn plain_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let g = HEADS / KV_HEADS;
    let q = q.reshape((BATCH, KV_HEADS, g * SEQ, HEAD_DIM))?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (HEAD_DIM as f64).sqrt()))?
        .reshape((BATCH, KV_HEADS, g, SEQ, SEQ))?
        .broadcast_add(mask)?;
    softmax_composed(&scores)?
        .reshape((BATCH, KV_HEADS, g * SEQ, SEQ))?
        .matmul(v)?
        .reshape((BATCH, HEADS, SEQ, HEAD_DIM))?
        .transpose(1, 2)?
        .reshape((BATCH, SEQ, HEADS * HEAD_DIM))
}

fn plain_lora(op: &LoraLinear, x: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let in_f = x.dim(D::Minus1)?;
    let y = x.broadcast_matmul(&op.weight.t()?)?;
    let d = op.dropout.expect("bench uses dropout");
    let mask: Vec<f32> = (0..x.elem_count()).map(|i| d.factor(i) as f32).collect();
    let xd = (x * Tensor::from_vec(mask, x.shape(), x.device())?)?;
    let low = xd.reshape(((), in_f))?.matmul(&a.t()?)?.matmul(&b.t()?)?;
    let shape = y.shape().clone();
    y + (low * op.scale)?.reshape(shape)?
}

fn main() -> Result<()> {
    let rows = BATCH * SEQ;
    println!(
        "kernels at SmolLM2-135M sizes, batch {BATCH}x{SEQ}, f32, {} threads, median of {} (ms)",
        candle_core::utils::get_num_threads(),
        reps()
    );
    println!(
        "{:<14} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}",
        "kernel", "fwd fused", "fwd plain", "speedup", "f+b fused", "f+b plain", "speedup"
    );

    let x = var(&[BATCH, SEQ, HIDDEN], 1.0)?;
    let w = randn(&[HIDDEN], 0.1)?.affine(1.0, 1.0)?;
    row(
        "rms_norm",
        &[&x],
        || rms_norm_fused(x.as_tensor(), &w, 1e-5),
        || rms_norm_composed(x.as_tensor(), &w, 1e-5),
    )?;

    let (cos, sin) = rope_angles()?;
    row(
        "rope+heads",
        &[&x],
        || rope_heads_fused(x.as_tensor(), &cos, &sin, HEADS),
        || {
            let h = x
                .as_tensor()
                .reshape((BATCH, SEQ, HEADS, HEAD_DIM))?
                .transpose(1, 2)?
                .contiguous()?;
            h.broadcast_mul(&cos)? + rotate_half(&h)?.broadcast_mul(&sin)?
        },
    )?;

    let gate = var(&[BATCH, SEQ, INTER], 1.0)?;
    let up = var(&[BATCH, SEQ, INTER], 1.0)?;
    row(
        "swiglu",
        &[&gate, &up],
        || swiglu_fused(gate.as_tensor(), up.as_tensor()),
        || gate.as_tensor().silu()? * up.as_tensor(),
    )?;

    let q = var(&[BATCH, HEADS, SEQ, HEAD_DIM], 1.0)?;
    let k = var(&[BATCH, KV_HEADS, SEQ, HEAD_DIM], 1.0)?;
    let v = var(&[BATCH, KV_HEADS, SEQ, HEAD_DIM], 1.0)?;
    let mask = causal_mask()?;
    row(
        "attention",
        &[&q, &k, &v],
        || {
            let scale = 1.0 / (HEAD_DIM as f64).sqrt();
            attention_fused(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, scale)
        },
        || plain_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask),
    )?;

    let a = var(&[RANK, HIDDEN], 0.05)?;
    let b = var(&[INTER, RANK], 0.05)?;
    let lora = LoraLinear {
        weight: randn(&[INTER, HIDDEN], 0.04)?,
        bias: None,
        scale: 2.0,
        dropout: Some(Dropout { p: 0.05, seed: 1 }),
    };
    row(
        "lora_linear",
        &[&x, &a, &b],
        || lora.forward(x.as_tensor(), a.as_tensor(), b.as_tensor()),
        || plain_lora(&lora, x.as_tensor(), a.as_tensor(), b.as_tensor()),
    )?;

    let hidden = var(&[rows, HIDDEN], 1.0)?;
    let embed = randn(&[VOCAB, HIDDEN], 0.05)?;
    let targets: Vec<u32> = (0..rows as u32)
        .map(|i| (i * 7919) % VOCAB as u32)
        .collect();
    let t = Tensor::new(targets.as_slice(), &Device::Cpu)?;
    row(
        "lm_head+ce",
        &[&hidden],
        || target_logprobs_fused(hidden.as_tensor(), &embed, &targets, DEFAULT_CHUNK),
        || {
            // The plain path also chunks (512 positions) to bound its logits.
            let mut parts = Vec::new();
            for start in (0..rows).step_by(512) {
                let n = 512.min(rows - start);
                let logits = hidden
                    .as_tensor()
                    .narrow(0, start, n)?
                    .matmul(&embed.t()?)?;
                let lp = log_prob_of(&logits, &t.narrow(0, start, n)?)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                parts.push(lp);
            }
            Tensor::cat(&parts, 0)
        },
    )?;
    decode_products()
}

/// Decode-step products `[m, in] x [out, in]ᵀ`: candle's matmul (the GEMM crate's GEMV), the
/// skinny f32 kernel and the 8-bit one.
fn decode_products() -> Result<()> {
    println!();
    println!(
        "{:<22} {:>12} {:>12} {:>12}",
        "decode product (ms)", "candle", "skinny f32", "skinny q8"
    );
    for (name, m, in_f, out_f) in [
        ("mlp up 1x576->1536", 1, HIDDEN, INTER),
        ("mlp up 8x576->1536", 8, HIDDEN, INTER),
        ("lm_head 1x576->49152", 1, HIDDEN, VOCAB),
        ("lm_head 8x576->49152", 8, HIDDEN, VOCAB),
    ] {
        let w = randn(&[out_f, in_f], 0.05)?;
        let x = randn(&[m, in_f], 1.0)?;
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let q = Q8Matrix::quantize(&wv, out_f, in_f).expect("block-aligned");
        let mut y = vec![0f32; m * out_f];
        let candle = time(|| x.matmul(&w.t()?).map(drop))?;
        let f32_ms = time(|| {
            matmul_t_f32(&wv, out_f, in_f, &xv, &mut y);
            Ok(())
        })?;
        let q8_ms = time(|| {
            q.matmul_t(&xv, &mut y);
            Ok(())
        })?;
        println!("{name:<22} {candle:>12.3} {f32_ms:>12.3} {q8_ms:>12.3}");
    }
    Ok(())
}
