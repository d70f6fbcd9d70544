//! The worker threads the kernels run on.
//!
//! Large matrix products, attention (one task per sequence) and the element-wise kernels run
//! on rayon's global pool. By default it has one thread per logical CPU (or as many as the
//! `RAYON_NUM_THREADS` environment variable says); [`set_num_threads`] chooses another count.
//!
//! [`Gpt`](crate::Gpt)'s forward and backward run whole on one of the pool's threads, so
//! that each parallel kernel inside hands work to the other threads through the pool's own
//! queues instead of waking the pool from outside (one wake-up per pass instead of one per
//! kernel: about 20% of a `tiny` step on two threads).

use crate::{Error, Result};

/// Sets the number of worker threads, once, before the first parallel kernel runs.
///
/// # Errors
/// [`Error::InvalidConfig`] when `n` is zero or the pool was already started (by an earlier
/// call, or by a kernel that already ran).
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidConfig {
            layer: "threads",
            reason: "the thread count must be positive".into(),
        });
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| Error::InvalidConfig {
            layer: "threads",
            reason: format!(
                "cannot set {n} threads: {e} (call set_num_threads before any training)"
            ),
        })
}

/// Runs `f` on one of the pool's threads (in place when already on one) and waits for it.
pub(crate) fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// The number of worker threads the kernels use.
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}
