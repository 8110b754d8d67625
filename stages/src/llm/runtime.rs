//! Process-wide settings for model work on the CPU, applied once by the binary at startup
//! (before any thread exists, since they go through the environment and the allocator).

/// candle 0.11 parallelises element-wise ops on its own "barrier pool" whose threads spin
/// while they wait; next to rayon (which the GEMM and our kernels use) and on a machine with
/// other load, the spinning took 40% of a training step and halved its speed. One candle
/// thread disables that pool; matrix products and the fused kernels still use every core.
const CANDLE_THREADS_ENV: &str = "CANDLE_NUM_THREADS";

/// candle and gemm size their thread pools with `get_num_threads()`, which (without this
/// variable) re-reads /proc/cpuinfo on every matrix product: 15% of a decode step went to the
/// kernel formatting that file. Setting it once fixes the count for rayon and candle alike.
const RAYON_THREADS_ENV: &str = "RAYON_NUM_THREADS";

/// Allocations up to this size are served from the heap instead of fresh `mmap`s: a training
/// step allocates and frees thousands of multi-megabyte tensors, and every fresh mapping costs
/// page faults and zeroing (12% of a step before this). 32 MiB is glibc's ceiling.
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Keep freed heap memory for reuse instead of returning it after every step.
const TRIM_THRESHOLD: i32 = 256 << 20;

/// Applies the settings (each unless the user set its variable). Call it first thing in
/// `main`.
pub fn configure_process() {
    if std::env::var_os(RAYON_THREADS_ENV).is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var(RAYON_THREADS_ENV, threads.to_string());
    }
    if std::env::var_os(CANDLE_THREADS_ENV).is_none() {
        std::env::set_var(CANDLE_THREADS_ENV, "1");
    }
    tune_allocator();
}

/// Stack of the pool's threads: the whole command runs on one of them (see [`on_pool`]), so it
/// gets the main thread's usual 8 MiB rather than rayon's 2 MiB default.
const WORKER_STACK: usize = 8 << 20;

/// Runs `f` on a thread of the global rayon pool and waits for it. The kernels split their
/// work over that pool; when the code between those parallel regions ran on the main thread,
/// the idle workers spun on the same cores it needed (on 2 cores, 3 runnable threads), and a
/// quarter of a decode step went to the scheduler. On a worker, the calling thread takes its
/// share of each region and no thread competes with it.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // Fails only when a pool exists already (tests, embedding); then that one is used.
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(WORKER_STACK)
        .build_global();
    // From outside the pool, `join` hands both closures to its workers and blocks until done.
    rayon::join(f, || ()).0
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes glibc malloc parameters; it is called before other threads
    // exist. A refused value (return 0) just leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}
