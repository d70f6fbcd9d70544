//! How the kernels execute: the worker threads, when work is split across them, and every
//! tuning constant of the crate (parallel thresholds, chunk and block sizes, SIMD lanes).
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
//!
//! The tuning constants here are crate-private; each one's documentation says what it tunes
//! and how its value was chosen, and `docs/performance.md` records the measurements. They
//! change only speed, except where a fixed split sets the order of a floating-point sum (the
//! gradient norm's chunks and lanes, the column sums' blocks, the softmax's lanes, attention's
//! query blocks, the tiled attention's tiles): there another value can change the last bits of
//! a result. None depends on
//! the thread count.

use std::cell::Cell;

use crate::{Error, Result};

// The pool.

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

/// The number of worker threads the kernels use.
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}

// Whole passes on a pool thread.

/// Activations (elements of one `(B, T, C)` array) up to which a whole pass runs on a pool
/// thread: `tiny` (16 K) and `gpt2-small` (196 K) do, `baregpt` (524 K) and `char-6l` (786 K)
/// do not.
///
/// Chosen between those presets: on a pool thread `tiny` is 10–20% faster, while at
/// `char-6l` it raised the peak memory of a step from about 615 to about 900 MiB (glibc's
/// per-thread arenas) for no measurable speed (`docs/performance.md`).
pub(crate) const POOL_PASS_MAX_ACTIVATIONS: usize = 1 << 18;

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

// Element-wise and row-wise work.

/// Element-wise kernels (and row loops doing about this many scalar operations) split across
/// the worker threads from this size on: below it, waking the pool costs more than it saves
/// (and gradient checks run many tiny forwards).
///
/// Used by [`worth_parallel`] (and so [`for_each_split!`], the column sums, the gradient norm
/// and `Adam`) and by the slice maps, residual additions and `zero_grad` of
/// `kernels::elementwise`. A power of two set with the first parallel kernels; no
/// measurement of other values is recorded.
pub(crate) const PARALLEL_MIN_LEN: usize = 1 << 15;

/// Elements per parallel task of the element-wise maps, residual additions and `zero_grad`
/// (`kernels::elementwise`). Each element is computed on its own, so results do not depend on
/// it. A power of two set with the first parallel maps; no measurement of other values is
/// recorded.
pub(crate) const ELEMENTWISE_CHUNK: usize = 1 << 13;

/// Elements per parallel task of `Adam`'s update over contiguous tensors (`optim::adam`).
/// Each element's update is independent, so the result does not depend on it. The same size
/// as [`ELEMENTWISE_CHUNK`]; no measurement of other values is recorded.
pub(crate) const UPDATE_CHUNK: usize = 1 << 13;

/// Whether a kernel doing about `work` scalar operations should split across threads: below
/// [`PARALLEL_MIN_LEN`], waking the pool costs more than it saves (and gradient checks run
/// many tiny forwards).
pub(crate) fn worth_parallel(work: usize) -> bool {
    work >= PARALLEL_MIN_LEN
}

/// Runs an ndarray `Zip` with `for_each`, or with `par_for_each` when
/// [`worth_parallel`]`(work)`: `for_each_split!(work, zip, closure)`.
macro_rules! for_each_split {
    ($work:expr, $zip:expr, $body:expr) => {
        if $crate::exec::worth_parallel($work) {
            $zip.par_for_each($body)
        } else {
            $zip.for_each($body)
        }
    };
}
pub(crate) use for_each_split;

// Matrix products.

/// Products smaller than this many multiply-adds (about 4 M) run on the calling thread:
/// splitting them costs more than it saves.
///
/// Raised from `64³` to `256·128·128` because thread wake-ups cost more than they saved at the
/// `tiny` preset's sizes; the parallel-path tests are sized above it.
pub(crate) const PARALLEL_MIN_MACS: usize = 256 * 128 * 128;

thread_local! {
    /// The threads a product issued on this thread may use, while inside [`join_products`]
    /// or [`on_one_thread`].
    static THREAD_BUDGET: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs two independent products at once, each on half of the pool's threads.
///
/// On two cores, two single-threaded products side by side beat the same two products each
/// split across both cores (no synchronisation inside either product): 10–30% on the
/// linear backward's `dW` and `dx` (`docs/performance.md`). Small products (`macs`, the
/// multiply-adds of each, below [`PARALLEL_MIN_MACS`]), one-thread pools and calls already
/// inside a join run the two in turn.
pub(crate) fn join_products<A: Send, B: Send>(
    macs: usize,
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    let threads = rayon::current_num_threads();
    if threads < 2 || macs < PARALLEL_MIN_MACS || THREAD_BUDGET.get().is_some() {
        return (a(), b());
    }
    let half = threads / 2;
    rayon::join(|| with_budget(half, a), || with_budget(threads - half, b))
}

/// Runs `f` with its products on the calling thread only: for work that is already one of
/// many parallel tasks (attention's per-sequence work), where splitting each product again
/// would only add hand-offs.
pub(crate) fn on_one_thread<R>(f: impl FnOnce() -> R) -> R {
    with_budget(1, f)
}

fn with_budget<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    let outer = THREAD_BUDGET.replace(Some(threads));
    let result = f();
    THREAD_BUDGET.set(outer);
    result
}

/// The threads a product of `macs` multiply-adds issued from this thread runs on: the
/// budget of an enclosing [`join_products`] or [`on_one_thread`], else the whole pool; 1 for a
/// one-thread budget or a product below [`PARALLEL_MIN_MACS`].
pub(crate) fn product_threads(macs: usize) -> usize {
    let threads = match THREAD_BUDGET.get() {
        Some(budget) => budget,
        None => rayon::current_num_threads(),
    };
    if threads < 2 || macs < PARALLEL_MIN_MACS {
        1
    } else {
        threads
    }
}

// Fixed splits that set the order of sums.

/// Elements per chunk of a contiguous gradient in the gradient norm (`optim::clip`). The
/// chunking is fixed, so the order of the summation, and hence the norm, depends only on the
/// gradients, never on the thread count; another value changes the norm's last bits. A
/// power of two (16 K) set with the chunked norm; no measurement of other values is
/// recorded.
pub(crate) const NORM_CHUNK: usize = 1 << 14;

/// Rows per block of the parallel column sums (`kernels::reduce`: the bias, `gamma` and
/// `beta` gradients). The block size does not depend on the thread count, so the sums are the
/// same, bit for bit, on any number of threads; another value changes their last bits. No
/// measurement of other values is recorded.
pub(crate) const SUM_ROWS_PER_BLOCK: usize = 128;

/// Independent accumulators of the vectorised reductions: the running maximum and sum of the
/// causal softmax (`kernels::softmax`), and the interleaved partial sums of the gradient norm
/// within a chunk (`optim::clip`: element `i` goes to lane `i % LANES`). Independent lanes let
/// those loops run in vector registers without reassociating any one sum; another value
/// changes the order of the sums, and so their last bits. 16 `f32` lanes fill one AVX-512
/// register (the widest unit `run_widest` compiles for), 16 `f64` lanes two.
pub(crate) const LANES: usize = 16;

// Blocking.

/// Query rows per block of attention (`kernels::attention`). A block of queries sees only the
/// keys up to its last query's position, so the products skip the keys the causal mask hides
/// from the whole block (a quarter of the work at `T = 128`, three eighths at `T = 256`); 64
/// rows match the height of the GEMM's widest micro-kernel. `char-6l` ran 4–8% faster than
/// with one block (`docs/performance.md`); results agree with one block to rounding.
pub(crate) const QUERY_BLOCK: usize = 64;

/// Query rows per tile of the tiled attention (`kernels::flash_attention`): twice the height
/// of the GEMM's widest micro-kernel. A tile of scores is `FLASH_QUERY_BLOCK ×
/// FLASH_KEY_BLOCK`; see [`FLASH_KEY_BLOCK`] for the measurements.
pub(crate) const FLASH_QUERY_BLOCK: usize = 128;

/// Keys per tile of the tiled attention (`kernels::flash_attention`): a query block meets up
/// to this many keys in one tile, so up to `T = 4096` the number of tile products per step
/// (and with it the GEMM's per-call allocations) does not grow with `T` at a fixed number of
/// tokens, and each product is `Bq × T_k × D` rather than many `Bq × 128 × D`. The first
/// tiling (`128 × 128`, chosen among 32–256 query rows and 64–512 keys by single-thread
/// timings at `C = 384`, 6 heads, `T` = 64 to 2048, where 64-row tiles were about 10% slower
/// in the backward at `T = 2048` and an undivided diagonal a quarter to a third slower at
/// `T = 128`) issued `B·H·(T/128)²/2` of each product: at `char-6l`'s width and 4,096 tokens
/// per step a warmed step made 77,566 allocations at `T = 1024` and 242,697 at `T = 4096`,
/// against 23,998 and 25,401 with this block, and the whole step ran 0.97× as long at
/// `T = 1024` (median of five alternated runs, 2-core AMD EPYC; `docs/performance.md`). A
/// `128 × 4096` tile of `f32` is 2 MiB, lent from the thread's scratch, not allocated per
/// call. Results agree with any other tiling to rounding.
pub(crate) const FLASH_KEY_BLOCK: usize = 4096;

/// Query rows per block of the tiles the causal mask cuts, in the tiled attention
/// (`kernels::flash_attention`): such a tile is taken in blocks of this many rows, each
/// with only the keys its last row sees, as the plain kernel's [`QUERY_BLOCK`] does.
pub(crate) const FLASH_DIAGONAL_BLOCK: usize = 64;

/// Keys from which an `Attention` layer left at `AttentionKernel::Auto` runs the tiled
/// kernel instead of the plain one (`AttentionKernel::TILED_MIN_KEYS`). Measured with
/// `benches/layers.rs`' `attention_length` group (`C = 384`, 6 heads, `B·T = 2048`, two
/// threads; `docs/performance.md`): the layer's forward and backward were 6% and 2% slower on
/// the tiled kernel at `T = 64` and 128, even at 256, and 20–23% faster from 512 to 2048.
pub(crate) const FLASH_MIN_KEYS: usize = 256;
