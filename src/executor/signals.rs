//! Ctrl-C and SIGTERM while a submitter waits for its jobs: noted, so that it cancels the jobs
//! it submitted before it exits (the jobs would otherwise run on without anyone watching).

use std::sync::atomic::{AtomicI32, Ordering};

/// The last signal caught (0: none).
static CAUGHT: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(signal: libc::c_int) {
    CAUGHT.store(signal, Ordering::SeqCst);
}

/// SIGINT and SIGTERM are noted while this lives; the previous handlers come back on drop.
pub struct Interrupts {
    previous: Vec<(libc::c_int, libc::sighandler_t)>,
}

const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

impl Interrupts {
    pub fn install() -> Self {
        CAUGHT.store(0, Ordering::SeqCst);
        let handler = note as extern "C" fn(libc::c_int) as libc::sighandler_t;
        let previous = SIGNALS
            .iter()
            // SAFETY: `note` only stores into an atomic, which is async-signal-safe.
            .map(|&s| (s, unsafe { libc::signal(s, handler) }))
            .collect();
        Self { previous }
    }

    /// The signal caught since installation, by name.
    pub fn raised(&self) -> Option<&'static str> {
        match CAUGHT.load(Ordering::SeqCst) {
            0 => None,
            libc::SIGINT => Some("Ctrl-C"),
            _ => Some("SIGTERM"),
        }
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        for &(signal, handler) in &self.previous {
            // SAFETY: restores the handler that was installed before.
            unsafe {
                libc::signal(signal, handler);
            }
        }
    }
}
