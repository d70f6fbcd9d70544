//! The worker threads the kernels run on.
//!
//! Large matrix products, attention (one task per sequence) and the element-wise kernels run
//! on rayon's global pool. By default it has one thread per logical CPU (or as many as the
//! `RAYON_NUM_THREADS` environment variable says); [`set_num_threads`] chooses another count.
//!
//! A small [`Gpt`](crate::Gpt)'s forward and backward run whole on one of the pool's threads,
//! so that each parallel kernel inside hands work to the other threads through the pool's own
//! queues instead of waking the pool from outside (one wake-up per pass instead of one per
//! kernel: about 20% of a `tiny` step on two threads). Larger passes stay on the calling
//! thread: their kernels are long enough that the wake-ups do not show, and allocating their
//! activations from the pool's threads spreads them over more of the allocator's per-thread
//! arenas, which raised the peak memory of a `char-6l` step by about half.

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

/// Activations (elements of one `(B, T, C)` array) up to which a whole pass runs on a pool
/// thread: `tiny` (16 K) and `gpt2-small` (196 K) do, `baregpt` (524 K) and `char-6l` (786 K)
/// do not.
const POOL_PASS_MAX_ACTIVATIONS: usize = 1 << 18;

/// Runs `f` on one of the pool's threads (in place when already on one) when the pass has at
/// most [`POOL_PASS_MAX_ACTIVATIONS`] activations per `(B, T, C)` array, otherwise on the
/// calling thread; see the module documentation.
pub(crate) fn in_pool_if_small<R: Send>(activations: usize, f: impl FnOnce() -> R + Send) -> R {
    if activations <= POOL_PASS_MAX_ACTIVATIONS {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

/// The number of worker threads the kernels use.
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}
