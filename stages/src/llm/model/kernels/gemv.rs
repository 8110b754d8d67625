//! Skinny products `y = x·Wᵀ` for the few rows a decode step has (one per sequence), with the
//! weights in f32 or in 8-bit blocks. A decode step streams every weight once per token, so it
//! is bound by memory bandwidth: the 8-bit format (per 32-weight block an f32 scale and
//! minimum, `w ≈ d·q + m`) moves 1.25 bytes per weight instead of 4. Output rows are split
//! over all threads, each weight is loaded once for up to 8 input rows, and the inner loops
//! are compiled for AVX-512 and AVX2+FMA and chosen at run time.

use rayon::prelude::*;

/// Weights per quantization block.
pub const BLOCK: usize = 32;
/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 64;
/// Input rows handled together (each weight is loaded once for all of them).
pub const MAX_GROUP: usize = 8;

/// A `[rows, cols]` matrix in 8-bit blocks: `w[r][c] ≈ d·q + m` with `(d, m)` per block of 32.
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    q: Vec<u8>,
    /// `[d, m]` per block, row-major.
    scales: Vec<[f32; 2]>,
}

impl Q8Matrix {
    /// Quantizes a row-major f32 matrix; `None` when `cols` is not a positive multiple of 32.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || w.len() != rows * cols {
            return None;
        }
        let mut q = vec![0u8; w.len()];
        let mut scales = vec![[0f32; 2]; w.len() / BLOCK];
        q.par_chunks_mut(BLOCK)
            .zip(scales.par_iter_mut())
            .zip(w.par_chunks(BLOCK))
            .for_each(|((qb, sm), wb)| *sm = quantize_block(wb, qb));
        Some(Q8Matrix {
            rows,
            cols,
            q,
            scales,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.q.len() + self.scales.len() * 8
    }

    /// The f32 matrix these blocks stand for.
    pub fn dequantize(&self) -> Vec<f32> {
        self.q
            .chunks(BLOCK)
            .zip(&self.scales)
            .flat_map(|(qb, &[d, m])| qb.iter().map(move |&v| d * f32::from(v) + m))
            .collect()
    }

    /// `y[i][r] = Σ_c x[i][c]·w[r][c]` for every row `i` of `x` `[m, cols]`; `y` is `[m, rows]`.
    pub fn matmul_t(&self, x: &[f32], y: &mut [f32]) {
        let sums: Vec<f32> = x.chunks(BLOCK).map(|b| b.iter().sum()).collect();
        let weights = Weights::Q8 {
            q: &self.q,
            scales: &self.scales,
            sums: &sums,
        };
        skinny(weights, self.rows, self.cols, x, y);
    }
}

/// `y[i][r] = Σ_c x[i][c]·w[r][c]` with `w` `[rows, cols]` f32 row-major, `x` `[m, cols]`,
/// `y` `[m, rows]`.
pub fn matmul_t_f32(w: &[f32], rows: usize, cols: usize, x: &[f32], y: &mut [f32]) {
    skinny(Weights::F32(w), rows, cols, x, y);
}

/// Min/max quantization of one block: `m = min` and `d = (max-min)/255`, or the step of the
/// grid the values already lie on (see [`grid_step`]).
fn quantize_block(w: &[f32], q: &mut [u8]) -> [f32; 2] {
    let (lo, hi) = w
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let d = grid_step(w, lo, hi).unwrap_or((hi - lo) / 255.0);
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(w) {
        *q = round_non_negative(((v - lo) * inv).clamp(0.0, 255.0)) as u8;
    }
    [d, lo]
}

/// `x.round()` for `x >= 0` below 2^31, without the libm call `round` compiles to on baseline
/// x86-64 (it took 10% of packing a model).
#[inline(always)]
fn round_non_negative(x: f32) -> f32 {
    (x + 0.5) as i32 as f32
}

/// How far from a grid point (in steps) a value may be and still count as on it (the f32
/// rounding of a dequantized `d·q + m`).
const GRID_TOLERANCE: f32 = 1e-3;

/// The step `s` of a grid `min + k·s` (`k` = 0..=255) holding every value of the block, when
/// there is one: weights dequantized from a GGUF's 4- to 8-bit blocks lie on such grids, and
/// with `s` as the step their 8-bit copy is exact (the plain `(max-min)/255` step would move
/// a Q8_0 weight by up to half a step, 1.6e-2 on SmolLM2's logits). The step divides the
/// smallest distance above the minimum; its divisors are tried largest step first (a failed
/// try usually ends at the first value, so this costs little next to sorting the block).
fn grid_step(w: &[f32], lo: f32, hi: f32) -> Option<f32> {
    let nearest = w
        .iter()
        .map(|&v| v - lo)
        .filter(|&g| g > 0.0)
        .fold(f32::INFINITY, f32::min);
    if !nearest.is_finite() {
        return None;
    }
    let step = (1..=255)
        .map(|k| nearest / k as f32)
        .take_while(|&s| (hi - lo) / s <= 255.0 + GRID_TOLERANCE)
        .find(|&s| {
            let inv = 1.0 / s;
            w.iter().all(|&v| {
                let k = (v - lo) * inv;
                (k - round_non_negative(k)).abs() <= GRID_TOLERANCE
            })
        })?;
    // `nearest` is a difference of two rounded values; the whole range gives the step to f32
    // precision.
    Some((hi - lo) / ((hi - lo) / step).round())
}

/// The whole weight matrix in one of the formats.
#[derive(Clone, Copy)]
enum Weights<'a> {
    F32(&'a [f32]),
    /// `sums`: per input row, the sum of each 32-element block (the `m` term of each block).
    Q8 {
        q: &'a [u8],
        scales: &'a [[f32; 2]],
        sums: &'a [f32],
    },
}

/// Groups of up to 8 input rows; within a group, tasks of 64 output rows on all threads.
fn skinny(w: Weights<'_>, rows: usize, cols: usize, x: &[f32], y: &mut [f32]) {
    let m = x.len() / cols.max(1);
    let blocks = cols / BLOCK;
    for g0 in (0..m).step_by(MAX_GROUP) {
        let group = MAX_GROUP.min(m - g0);
        let xg = &x[g0 * cols..(g0 + group) * cols];
        let wg = match w {
            Weights::Q8 { q, scales, sums } => Weights::Q8 {
                q,
                scales,
                sums: &sums[g0 * blocks..(g0 + group) * blocks],
            },
            f => f,
        };
        // `yt` is `[rows, group]` so tasks own contiguous pieces; transposed into `y` below.
        let mut yt = vec![0f32; rows * group];
        yt.par_chunks_mut(ROWS_PER_TASK * group)
            .enumerate()
            .for_each(|(t, out)| {
                let r0 = t * ROWS_PER_TASK;
                dispatch(wg, r0, out.len() / group, cols, xg, group, out);
            });
        for (r, vals) in yt.chunks(group).enumerate() {
            for (i, &v) in vals.iter().enumerate() {
                y[(g0 + i) * rows + r] = v;
            }
        }
    }
}

/// Picks the instantiation for the group size and the CPU.
fn dispatch(
    w: Weights<'_>,
    r0: usize,
    n: usize,
    cols: usize,
    x: &[f32],
    group: usize,
    out: &mut [f32],
) {
    macro_rules! for_group {
        ($($g:literal)*) => {
            match group {
                $($g => run_task::<$g>(w, r0, n, cols, x, out),)*
                _ => unreachable!("groups hold 1 to 8 rows"),
            }
        };
    }
    for_group!(1 2 3 4 5 6 7 8)
}

fn run_task<const G: usize>(
    w: Weights<'_>,
    r0: usize,
    n: usize,
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { task_avx512::<G>(w, r0, n, cols, x, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { task_avx2::<G>(w, r0, n, cols, x, out) };
        }
    }
    task::<G, SCALAR>(w, r0, n, cols, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn task_avx512<const G: usize>(
    w: Weights<'_>,
    r0: usize,
    n: usize,
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) {
    task::<G, AVX512>(w, r0, n, cols, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2<const G: usize>(
    w: Weights<'_>,
    r0: usize,
    n: usize,
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) {
    task::<G, AVX2>(w, r0, n, cols, x, out)
}

/// Which hand-written row kernel the 8-bit weights use (the caller checked the CPU).
const SCALAR: u8 = 0;
const AVX2: u8 = 1;
const AVX512: u8 = 2;

/// Output rows `r0..r0+n` for the `G` input rows of `x`; `out` is `[n, G]`. `SIMD` names the
/// instruction set the caller checked, for the 8-bit rows' intrinsics path.
#[inline(always)]
fn task<const G: usize, const SIMD: u8>(
    w: Weights<'_>,
    r0: usize,
    n: usize,
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) {
    for (k, o) in out.chunks_exact_mut(G).take(n).enumerate() {
        let r = r0 + k;
        let dots = match w {
            Weights::F32(w) => row_f32::<G>(&w[r * cols..(r + 1) * cols], x, cols),
            Weights::Q8 { q, scales, sums } => {
                let blocks = cols / BLOCK;
                let (qr, sr) = (
                    &q[r * cols..(r + 1) * cols],
                    &scales[r * blocks..(r + 1) * blocks],
                );
                #[cfg(target_arch = "x86_64")]
                match SIMD {
                    // SAFETY: `SIMD` is set only by callers that checked these features.
                    AVX512 => unsafe { row_q8_avx512::<G>(qr, sr, x, sums, cols) },
                    AVX2 => unsafe { row_q8_avx2::<G>(qr, sr, x, sums, cols) },
                    _ => row_q8::<G>(qr, sr, x, sums, cols),
                }
                #[cfg(not(target_arch = "x86_64"))]
                row_q8::<G>(qr, sr, x, sums, cols)
            }
        };
        o.copy_from_slice(&dots);
    }
}

/// One f32 weight row against `G` input rows: 32 independent lanes per row keep the FMA
/// units busy (a single accumulator would wait on each FMA's latency).
#[inline(always)]
fn row_f32<const G: usize>(w: &[f32], x: &[f32], cols: usize) -> [f32; G] {
    let mut acc = [[0f32; BLOCK]; G];
    let full = cols / BLOCK * BLOCK;
    for (c, wc) in w[..full].chunks_exact(BLOCK).enumerate() {
        for (i, a) in acc.iter_mut().enumerate() {
            let xc = &x[i * cols + c * BLOCK..][..BLOCK];
            for l in 0..BLOCK {
                a[l] = wc[l].mul_add(xc[l], a[l]);
            }
        }
    }
    let mut dots = [0f32; G];
    for (i, d) in dots.iter_mut().enumerate() {
        let tail: f32 = (full..cols).map(|c| w[c] * x[i * cols + c]).sum();
        *d = acc[i].iter().sum::<f32>() + tail;
    }
    dots
}

/// One 8-bit weight row against `G` input rows: each block is widened to f32 and scaled once,
/// then used for every input row; the block minimum multiplies the input's block sum.
#[inline(always)]
fn row_q8<const G: usize>(
    q: &[u8],
    scales: &[[f32; 2]],
    x: &[f32],
    sums: &[f32],
    cols: usize,
) -> [f32; G] {
    let blocks = cols / BLOCK;
    let mut acc = [[0f32; BLOCK]; G];
    let mut mins = [0f32; G];
    for (b, (qb, &[d, m])) in q.chunks_exact(BLOCK).zip(scales).enumerate() {
        let mut wv = [0f32; BLOCK];
        for l in 0..BLOCK {
            wv[l] = f32::from(qb[l]) * d;
        }
        for (i, a) in acc.iter_mut().enumerate() {
            let xb = &x[i * cols + b * BLOCK..][..BLOCK];
            for l in 0..BLOCK {
                a[l] = wv[l].mul_add(xb[l], a[l]);
            }
            mins[i] = m.mul_add(sums[i * blocks + b], mins[i]);
        }
    }
    let mut dots = [0f32; G];
    for (i, dot) in dots.iter_mut().enumerate() {
        *dot = acc[i].iter().sum::<f32>() + mins[i];
    }
    dots
}

/// [`row_q8`] with AVX2 intrinsics: the compiler leaves the u8 → f32 widening scalar (one
/// byte at a time), which made 8-bit decoding slower than f32. Eight weights are widened per
/// instruction here, and two accumulators per input row (for 1–3 rows) hide the FMA latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_q8_avx2<const G: usize>(
    q: &[u8],
    scales: &[[f32; 2]],
    x: &[f32],
    sums: &[f32],
    cols: usize,
) -> [f32; G] {
    use std::arch::x86_64::*;
    let blocks = cols / BLOCK;
    debug_assert!(q.len() >= blocks * BLOCK && x.len() >= G * cols);
    let mut acc = [[_mm256_setzero_ps(); 2]; G];
    let mut mins = [0f32; G];
    for (b, &[d, m]) in scales.iter().enumerate().take(blocks) {
        let dv = _mm256_set1_ps(d);
        for k in 0..BLOCK / 8 {
            // SAFETY: `b * BLOCK + 8k + 8 <= blocks * BLOCK <= q.len()`; an unaligned 8-byte load.
            let bytes = _mm_loadl_epi64(q.as_ptr().add(b * BLOCK + 8 * k) as *const __m128i);
            let wv = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)), dv);
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: `i * cols + b * BLOCK + 8k + 8 <= G * cols <= x.len()`.
                let xv = _mm256_loadu_ps(x.as_ptr().add(i * cols + b * BLOCK + 8 * k));
                // With 4+ input rows their independent chains already hide the latency, and
                // a second accumulator each would spill registers.
                let slot = if G >= 4 { 0 } else { k & 1 };
                a[slot] = _mm256_fmadd_ps(wv, xv, a[slot]);
            }
        }
        for (i, mn) in mins.iter_mut().enumerate() {
            *mn = m.mul_add(sums[i * blocks + b], *mn);
        }
    }
    let mut dots = [0f32; G];
    for (i, dot) in dots.iter_mut().enumerate() {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[i][0], acc[i][1]));
        *dot = lanes.iter().sum::<f32>() + mins[i];
    }
    dots
}

/// [`row_q8_avx2`] with AVX-512: sixteen weights widened per instruction and twice the
/// registers, so 8 input rows keep two accumulators each without spilling.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn row_q8_avx512<const G: usize>(
    q: &[u8],
    scales: &[[f32; 2]],
    x: &[f32],
    sums: &[f32],
    cols: usize,
) -> [f32; G] {
    use std::arch::x86_64::*;
    let blocks = cols / BLOCK;
    debug_assert!(q.len() >= blocks * BLOCK && x.len() >= G * cols);
    let mut acc = [[_mm512_setzero_ps(); 2]; G];
    let mut mins = [0f32; G];
    for (b, &[d, m]) in scales.iter().enumerate().take(blocks) {
        let dv = _mm512_set1_ps(d);
        for k in 0..BLOCK / 16 {
            // SAFETY: `b * BLOCK + 16k + 16 <= blocks * BLOCK <= q.len()`; an unaligned load.
            let bytes = _mm_loadu_si128(q.as_ptr().add(b * BLOCK + 16 * k) as *const __m128i);
            let wv = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)), dv);
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: `i * cols + b * BLOCK + 16k + 16 <= G * cols <= x.len()`.
                let xv = _mm512_loadu_ps(x.as_ptr().add(i * cols + b * BLOCK + 16 * k));
                a[k] = _mm512_fmadd_ps(wv, xv, a[k]);
            }
        }
        for (i, mn) in mins.iter_mut().enumerate() {
            *mn = m.mul_add(sums[i * blocks + b], *mn);
        }
    }
    let mut dots = [0f32; G];
    for (i, dot) in dots.iter_mut().enumerate() {
        *dot = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][0], acc[i][1])) + mins[i];
    }
    dots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn naive(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
        let m = x.len() / cols;
        let mut y = vec![0f32; m * rows];
        for i in 0..m {
            for r in 0..rows {
                y[i * rows + r] = (0..cols)
                    .map(|c| w[r * cols + c] as f64 * x[i * cols + c] as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn f32_products_match_for_every_group_size() {
        let (rows, cols) = (150, 100); // not multiples of the task or block sizes
        let w = data(rows * cols, 1);
        for m in [1, 3, 8, 11] {
            let x = data(m * cols, 2);
            let mut y = vec![0f32; m * rows];
            matmul_t_f32(&w, rows, cols, &x, &mut y);
            let want = naive(&w, rows, cols, &x);
            assert!(
                y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4),
                "m = {m}"
            );
        }
    }

    #[test]
    fn q8_products_equal_the_dequantized_product_and_quantization_is_close() {
        let (rows, cols) = (130, 96);
        let w = data(rows * cols, 3);
        let q = Q8Matrix::quantize(&w, rows, cols).unwrap();
        let deq = q.dequantize();
        // Each weight is within half a step (range/255/2) of the original.
        assert!(w
            .iter()
            .zip(&deq)
            .all(|(a, b)| (a - b).abs() <= 2.0 / 255.0 / 2.0 + 1e-6));
        for m in [1, 2, 9] {
            let x = data(m * cols, 4);
            let mut y = vec![0f32; m * rows];
            q.matmul_t(&x, &mut y);
            let want = naive(&deq, rows, cols, &x);
            assert!(
                y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-3),
                "m = {m}"
            );
        }
        assert!(
            Q8Matrix::quantize(&w, rows * 2, cols / 2).is_none(),
            "48 columns do not fill blocks"
        );
        assert_eq!(q.bytes(), rows * cols + rows * cols / 32 * 8);
    }

    /// Weights already on a grid of at most 256 levels per block (dequantized Q8_0 and Q4_1
    /// blocks) are held exactly; others fall back to the min/max step.
    #[test]
    fn blocks_on_a_grid_are_held_exactly() {
        let q8_0 = |b: usize| -> Vec<f32> {
            let d = 0.0123f32 * (b + 1) as f32;
            (0..BLOCK)
                .map(|i| d * (((i * 37 + b * 11) % 255) as f32 - 127.0))
                .collect()
        };
        let q4_1 = |b: usize| -> Vec<f32> {
            let (d, m) = (0.031f32 * (b + 1) as f32, -0.27f32);
            (0..BLOCK)
                .map(|i| d * ((i * 7 + b) % 16) as f32 + m)
                .collect()
        };
        for (name, block) in [
            ("q8_0 0", q8_0(0)),
            ("q8_0 3", q8_0(3)),
            ("q4_1 0", q4_1(0)),
            ("q4_1 5", q4_1(5)),
        ] {
            let q = Q8Matrix::quantize(&block, 1, BLOCK).unwrap();
            // f32 rounding only; the min/max step would be off by up to range/510.
            let scale = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = block
                .iter()
                .zip(q.dequantize())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err <= 1e-6 * scale, "{name}: error {err} of {scale}");
        }
        // Random values: no grid, the min/max step.
        let w = data(BLOCK, 9);
        let (lo, hi) = (
            w.iter().copied().fold(f32::INFINITY, f32::min),
            w.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        );
        assert_eq!(grid_step(&w, lo, hi), None);
        assert_eq!(grid_step(&[0.5; BLOCK], 0.5, 0.5), None, "a constant block");
    }

    /// Every instruction-set path of the 8-bit rows against the scalar one, for every group
    /// size (the dispatcher only exercises the best path of the machine running the tests).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn q8_row_kernels_agree_with_the_scalar_rows() {
        fn check<const G: usize>(q: &Q8Matrix, x: &[f32], sums: &[f32]) {
            let cols = q.cols;
            let blocks = cols / BLOCK;
            for r in 0..q.rows {
                let (qr, sr) = (
                    &q.q[r * cols..(r + 1) * cols],
                    &q.scales[r * blocks..(r + 1) * blocks],
                );
                let want = row_q8::<G>(qr, sr, x, sums, cols);
                let close =
                    |got: [f32; G]| got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4);
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: the features were just checked.
                    assert!(
                        close(unsafe { row_q8_avx2::<G>(qr, sr, x, sums, cols) }),
                        "avx2 G={G}"
                    );
                }
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    assert!(
                        close(unsafe { row_q8_avx512::<G>(qr, sr, x, sums, cols) }),
                        "avx512 G={G}"
                    );
                }
            }
        }
        let (rows, cols) = (5, 96);
        let q = Q8Matrix::quantize(&data(rows * cols, 5), rows, cols).unwrap();
        let x = data(8 * cols, 6);
        let sums: Vec<f32> = x.chunks(BLOCK).map(|c| c.iter().sum()).collect();
        check::<1>(&q, &x, &sums);
        check::<3>(&q, &x, &sums);
        check::<4>(&q, &x, &sums);
        check::<8>(&q, &x, &sums);
    }
}
