//! Fused, multi-threaded CPU kernels for the training and generation hot paths, each a candle
//! custom op with a hand-written backward and tested against the plain candle composition it
//! replaces (values and gradients). Why they exist:
//!
//! - candle's fused CPU ops (`rms_norm`, `rope`, `softmax_last_dim`) record no backward;
//! - the compositions they replace allocate one full tensor per primitive and candle's graph
//!   keeps every one alive until the backward pass ends: fusing is what bounds peak memory;
//! - candle runs most element-wise primitives on one thread.
//!
//! Every kernel works on contiguous f32/f64 CPU tensors; [`applies`] says when the fused path
//! is taken, and the model falls back to the composition everywhere else (GPU, half types),
//! or everywhere when `PIPE_PLAIN_KERNELS=1` (to measure what the kernels bring).

pub mod attention;
pub mod gemv;
pub mod lm_head_loss;
pub mod lora_linear;
pub mod matmul;
pub mod rms_norm;
pub mod rope_heads;
pub mod skinny_linear;
pub mod swiglu;

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{CpuStorage, DType, Layout, Result, Tensor, WithDType};

/// The float types the kernels are written for.
pub trait Real:
    WithDType + num_traits::Float + num_traits::NumAssignOps + Send + Sync + std::iter::Sum
{
}
impl Real for f32 {}
impl Real for f64 {}

/// 0 = not decided yet, 1 = fused kernels, 2 = plain compositions.
static MODE: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// A per-thread override, so tests can compare both paths without touching other tests.
    static OVERRIDE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the fused kernels switched `on` or off on this thread only.
pub fn with_kernels<R>(on: bool, f: impl FnOnce() -> R) -> R {
    let before = OVERRIDE.with(|o| o.replace(Some(on)));
    let out = f();
    OVERRIDE.with(|o| o.set(before));
    out
}

/// Whether the fused kernels are on (default), unless `PIPE_PLAIN_KERNELS=1` or
/// [`set_enabled`] turned them off.
pub fn enabled() -> bool {
    if let Some(on) = OVERRIDE.with(std::cell::Cell::get) {
        return on;
    }
    match MODE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let plain = std::env::var("PIPE_PLAIN_KERNELS").is_ok_and(|v| v == "1");
            MODE.store(if plain { 2 } else { 1 }, Ordering::Relaxed);
            !plain
        }
    }
}

/// Switches the fused kernels on or off for the whole process (benchmarks compare both).
pub fn set_enabled(on: bool) {
    MODE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether the fused kernels handle tensors like `t`: kernels on, CPU, f32 or f64.
pub fn applies(t: &Tensor) -> bool {
    enabled() && t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// CPU storage owning `v`.
pub(crate) fn into_storage<T: Real>(v: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(v)
}

/// The larger of two values (`num_traits` and candle both define a `max`; NaN loses).
pub(crate) fn larger<T: Real>(a: T, b: T) -> T {
    if b > a {
        b
    } else {
        a
    }
}

/// The contiguous elements of a CPU tensor's storage as seen through `layout`.
pub(crate) fn contiguous_slice<'a, T: Real>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{what}: input must be contiguous")
    };
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// Whether `t` is `[b, h, n, d]` with each `[n, d]` block contiguous and the blocks equally
/// spaced, as the first `n` slots of a `[b, h, capacity, d]` KV-cache buffer are.
pub(crate) fn slabbed(t: &Tensor) -> bool {
    slab_stride(t.layout()).is_some()
}

/// The distance between the `[n, d]` blocks of a [`slabbed`] layout.
fn slab_stride(layout: &Layout) -> Option<usize> {
    let (dims, stride) = (layout.dims(), layout.stride());
    let [b, h, n, d] = *dims else { return None };
    let inner = stride[3] == 1 && (n <= 1 || stride[2] == d);
    // A size-1 axis carries any stride (candle keeps the view's after a transpose): with one
    // kv head the blocks are the sequences, with one of each there is a single block.
    let block = match (b, h) {
        (_, 2..) => stride[1],
        (2.., _) => stride[0],
        _ => n * d,
    };
    let heads = block >= n * d && (b <= 1 || h <= 1 || stride[0] == stride[1] * h);
    (inner && heads).then_some(block)
}

/// The elements a [`slabbed`] (or contiguous) CPU layout spans, and its block stride.
pub(crate) fn slab_slice<'a, T: Real>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<(&'a [T], usize)> {
    let Some(block) = slab_stride(layout) else {
        candle_core::bail!("{what}: input must be [b, h, n, d] with contiguous [n, d] blocks")
    };
    let dims = layout.dims();
    let blocks = dims[0] * dims[1];
    let span = match blocks {
        0 => 0,
        _ => (blocks - 1) * block + dims[2] * dims[3],
    };
    let start = layout.start_offset();
    let data = storage.as_slice::<T>()?;
    match data.get(start..start + span) {
        Some(slice) => Ok((slice, block)),
        None => candle_core::bail!("{what}: layout reaches past its storage"),
    }
}

/// The elements of a (contiguous) CPU tensor held by an op, e.g. a frozen weight.
pub(crate) fn with_slice<T: Real, R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => f(contiguous_slice(cpu, layout, what)?),
        _ => candle_core::bail!("{what}: tensor is not on the CPU"),
    }
}

/// Runs `f` on the CPU storage of `s` typed as f32 or f64, returning new storage.
macro_rules! dispatch_real {
    ($storage:expr, $what:expr, |$slice:ident : $t:ident| $body:expr) => {
        match $storage {
            candle_core::CpuStorage::F32(_) => {
                type $t = f32;
                let $slice: &candle_core::CpuStorage = $storage;
                $body
            }
            candle_core::CpuStorage::F64(_) => {
                type $t = f64;
                let $slice: &candle_core::CpuStorage = $storage;
                $body
            }
            _ => candle_core::bail!("{}: only f32 and f64 tensors are supported", $what),
        }
    };
}
pub(crate) use dispatch_real;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
pub(crate) mod testing;
