//! Matrix products on plain slices through the `gemm` crate (the GEMM candle itself uses), for
//! the products inside fused kernels, where going through tensors would allocate and record.

use candle_core::Result;
use gemm::Parallelism;

use super::Real;

/// A read-only matrix view: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T: Real> MatRef<'a, T> {
    /// A row-major `rows x cols` matrix at the start of `data`.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// A row-major matrix whose rows are `row_stride` elements apart (a column block of a
    /// wider matrix).
    pub fn strided(data: &'a [T], rows: usize, cols: usize, row_stride: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Whether every element the view addresses lies inside `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
        last < self.data.len()
    }
}

/// A mutable row-major destination whose rows are `row_stride` apart.
pub struct MatMut<'a, T> {
    data: &'a mut [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a, T: Real> MatMut<'a, T> {
    pub fn new(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        MatMut {
            data,
            rows,
            cols,
            row_stride: cols,
        }
    }

    pub fn strided(data: &'a mut [T], rows: usize, cols: usize, row_stride: usize) -> Self {
        MatMut {
            data,
            rows,
            cols,
            row_stride,
        }
    }
}

/// Whether a product runs on the thread pool or the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Inside a task that is itself one of many parallel ones.
    Single,
    /// All of candle's threads.
    All,
}

/// The thread count, looked up once (candle's lookup can re-read /proc/cpuinfo each call).
pub fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| rayon::current_num_threads().max(1))
}

/// `dst = (accumulate ? dst : 0) + scale · a·b`.
pub fn matmul<T: Real>(
    dst: MatMut<'_, T>,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    accumulate: bool,
    scale: T,
    threads: Threads,
) -> Result<()> {
    if a.cols != b.rows || dst.rows != a.rows || dst.cols != b.cols {
        candle_core::bail!(
            "matmul: [{}x{}] · [{}x{}] into [{}x{}]",
            a.rows,
            a.cols,
            b.rows,
            b.cols,
            dst.rows,
            dst.cols
        )
    }
    let dst_ok = dst.rows == 0
        || dst.cols == 0
        || (dst.rows - 1) * dst.row_stride + dst.cols - 1 < dst.data.len();
    if !(a.in_bounds() && b.in_bounds() && dst_ok) {
        candle_core::bail!("matmul: a view reaches past its data")
    }
    if dst.rows == 0 || dst.cols == 0 {
        return Ok(());
    }
    if a.cols == 0 {
        if !accumulate {
            for r in 0..dst.rows {
                let row = &mut dst.data[r * dst.row_stride..r * dst.row_stride + dst.cols];
                row.iter_mut().for_each(|v| *v = T::zero());
            }
        }
        return Ok(());
    }
    let parallelism = match threads {
        Threads::All if a.rows * a.cols * b.cols >= 1 << 15 => Parallelism::Rayon(self::threads()),
        _ => Parallelism::None,
    };
    // SAFETY: every view was checked to stay inside its slice above; `dst` is borrowed
    // mutably and cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            a.cols,
            dst.data.as_mut_ptr(),
            1,
            dst.row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            T::one(),
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn products_with_transposes_strides_and_accumulation() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.91).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut dst = vec![1.0; m * n];
        matmul(
            MatMut::new(&mut dst, m, n),
            MatRef::new(&a, m, k),
            MatRef::new(&b, k, n),
            false,
            1.0,
            Threads::All,
        )
        .unwrap();
        assert!(dst.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-12));
        // bᵀ stored as [n, k], read transposed; accumulate 2·a·b onto a·b.
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        matmul(
            MatMut::new(&mut dst, m, n),
            MatRef::new(&a, m, k),
            MatRef::new(&bt, n, k).t(),
            true,
            2.0,
            Threads::Single,
        )
        .unwrap();
        assert!(dst
            .iter()
            .zip(&want)
            .all(|(x, y)| (x - 3.0 * y).abs() < 1e-12));
        // A column block of a wider destination.
        let mut wide = vec![0.0; m * (n + 2)];
        matmul(
            MatMut::strided(&mut wide[1..], m, n, n + 2),
            MatRef::new(&a, m, k),
            MatRef::new(&b, k, n),
            false,
            1.0,
            Threads::All,
        )
        .unwrap();
        assert!((wide[1] - want[0]).abs() < 1e-12 && wide[0] == 0.0);
    }

    #[test]
    fn mismatched_or_out_of_bounds_views_are_errors() {
        let a = vec![0f32; 6];
        let mut d = vec![0f32; 4];
        assert!(matmul(
            MatMut::new(&mut d, 2, 2),
            MatRef::new(&a, 2, 3),
            MatRef::new(&a, 2, 3),
            false,
            1.0,
            Threads::Single
        )
        .is_err());
        assert!(matmul(
            MatMut::new(&mut d, 2, 2),
            MatRef::new(&a, 2, 4),
            MatRef::new(&a, 4, 2),
            false,
            1.0,
            Threads::Single
        )
        .is_err());
    }
}
