//! Tiled causal attention in the flash-attention manner: the same function as
//! [`grouped_attention_forward`](super::grouped_attention_forward) (and, with a mask,
//! [`attention_dropout_forward`](super::attention_dropout_forward)), computed one tile of
//! queries × keys at a time, so that neither pass holds the `(B, H, T_q, T_k)` probabilities.
//!
//! Shapes as in [`attention`](super::attention): `q (B, T_q, H·D)`, `k, v (B, T_k, H_kv·D)`,
//! `T_q ≤ T_k`, query `i` at absolute position `T_k − T_q + i` seeing keys `0..=T_k − T_q + i`,
//! query head `h` using key/value head `h / (H / H_kv)`. The forward returns the context
//! `ctx (B, T_q, H·D)` and the log-sum-exp of each query's scores, `lse (B, H, T_q)`; the
//! backward recomputes the probabilities tile by tile from `q`, `k` and `lse`.
//!
//! # Forward: the online softmax
//!
//! Per batch `b` and head `h` (key/value head `g`), `S = Q·Kᵀ/√D` and, for one query row,
//! `P_j = exp(S_j − L)` with `L = log Σ_{j visible} exp(S_j)` and `ctx = Σ_j P_j·V_j`. The keys
//! are visited in blocks `J₁, J₂, …`; after the blocks up to `J_t` the row keeps
//!
//! ```text
//! m_t = max_{j ∈ J₁..J_t} S_j                       the running maximum
//! l_t = Σ_{j ∈ J₁..J_t} exp(S_j − m_t)               the running sum
//! a_t = Σ_{j ∈ J₁..J_t} exp(S_j − m_t)·M_j·V_j       the unnormalised context (D values)
//! ```
//!
//! and a new block updates them with `m_{t+1} = max(m_t, max_{j ∈ J_{t+1}} S_j)`,
//! `α = exp(m_t − m_{t+1}) ≤ 1` and `p̂_j = exp(S_j − m_{t+1})`:
//!
//! ```text
//! l_{t+1} = α·l_t + Σ_{j ∈ J_{t+1}} p̂_j                                       (online)
//! a_{t+1} = α·a_t + Σ_{j ∈ J_{t+1}} p̂_j·M_j·V_j           (rescale), then (ctx)
//! ```
//!
//! because every earlier term `exp(S_j − m_t)` is `exp(S_j − m_{t+1})/α`. After the last block
//! `m = max_j S_j`, `l = Σ_j exp(S_j − m)`, so `ctx = a/l` is the softmax-weighted sum, and
//! `L = m + ln l` *(lse)*. Every exponent is `≤ 0`, as in the one-pass softmax. `M` is the
//! dropout mask (all ones without one): the context uses `P ⊙ M` while `l` sums the undropped
//! `P`, exactly as `attention_dropout_forward` does, and `M` is indexed over the
//! `(B, H, T_q, T_k)` probabilities in row-major order (element `((b·H + h)·T_q + i)·T_k + j`),
//! so the same mask gives the same result.
//!
//! # Backward: recomputation and the `Δ` term
//!
//! See [`flash_attention_backward`]. With the probabilities rebuilt from `lse`, the terms are
//! those of the plain kernel's backward; only the softmax's row sum `Σ_j P_ij dP_ij` is taken
//! in another form, `Δ_i = dO_i · O_i`, which needs no row of `P` in full.
//!
//! # Memory
//!
//! The forward keeps `lse`, `B·H·T_q` numbers, where the plain kernel keeps `B·H·T_q·T_k`
//! probabilities; the backward also needs `ctx`, which a layer keeps anyway (its output
//! projection's backward reads it). Each task borrows its tiles from its thread's scratch
//! buffers, which outlive the call: one `(Bq, Bk)` scores tile (three in the backward, with
//! dropout) and a few `Bq`-long vectors, `Bq`, `Bk` the query and key block sizes, so a
//! warmed-up step allocates no tiles at all.
//!
//! # Work and threads
//!
//! Queries are taken in blocks of `Bq = 128` rows and keys in blocks of `Bk = 4096`: up to
//! 4,096 keys a query block meets all the keys it sees in one tile, so a step issues the same
//! number of products whatever `T` (at a fixed number of tokens), each `Bq × T_k × D`, and the
//! online softmax's rescaling only starts beyond 4,096 keys. A query block takes only the keys
//! its last query sees; a tile the causal mask cuts is taken in
//! row blocks of 64, each with only the keys its last row sees (so the hidden triangle costs
//! about what it costs the plain kernel), and within a tile a row's hidden keys get an exact
//! zero. The forward runs one
//! task per `(b, h)`; the backward one task per `(b, g)` (the query heads sharing a key/value
//! head in turn, adding into that head's `dk`, `dv` columns, so no two tasks write the same
//! element). Products are the crate's GEMM on the tiles, on the task's thread.

use std::ops::Range;

use ndarray::{
    Array3, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut1, ArrayViewMut2, ArrayViewMut3,
    ArrayViewMut4, Axis, Zip, s,
};

use super::attention::{Dims, check_dims, query_blocks};
use super::dropout::DropoutMask;
use super::elementwise::{WideLoop, run_widest};
use super::fast_math::exp_nonpositive;
use super::matmul::matmul_into;
use super::scratch::with_scratch;
use crate::error::check_shape;
use crate::exec::{
    FLASH_DIAGONAL_BLOCK, FLASH_KEY_BLOCK, FLASH_QUERY_BLOCK, LANES, for_each_split, on_one_thread,
};
use crate::limits::{MAX_ALLOC_BYTES, check_alloc};
use crate::{Error, Float, Result};

const KERNEL: &str = "flash_attention";

/// What [`flash_attention_forward`] returns: the context and each query's log-sum-exp.
#[derive(Clone, Debug, PartialEq)]
pub struct FlashOutput<F> {
    /// The context `(B, T_q, H·D)`, as [`grouped_attention_forward`](super::grouped_attention_forward)'s.
    pub ctx: Array3<F>,
    /// `lse (B, H, T_q)`: `lse[b, h, i] = log Σ_{j ≤ T_k − T_q + i} exp(S_ij)` over the visible
    /// scores `S = Q_h·K_gᵀ/√D` of query `i` (before dropout). It is all the backward needs to
    /// rebuild the probabilities, `P_ij = exp(S_ij − lse_i)`.
    pub lse: Array3<F>,
}

impl<F> FlashOutput<F> {
    /// Borrows both arrays, as [`flash_attention_backward`] takes them.
    pub fn view(&self) -> FlashView<'_, F> {
        FlashView {
            ctx: self.ctx.view(),
            lse: self.lse.view(),
        }
    }
}

/// Borrowed forward results for [`flash_attention_backward`]: `ctx (B, T_q, H·D)` and
/// `lse (B, H, T_q)` of the same forward (a layer that keeps its context as rows can view
/// them as `(B, T_q, H·D)`).
#[derive(Clone, Copy, Debug)]
pub struct FlashView<'a, F> {
    /// The forward's context `(B, T_q, H·D)` (with dropout, the dropped one it returned).
    pub ctx: ArrayView3<'a, F>,
    /// The forward's log-sum-exp `(B, H, T_q)`.
    pub lse: ArrayView3<'a, F>,
}

/// Query rows and key columns per tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tiles {
    /// Query rows per block (`Bq`).
    pub(crate) query: usize,
    /// Keys per block (`Bk`).
    pub(crate) key: usize,
    /// Query rows per block of a tile the causal mask cuts.
    pub(crate) diagonal: usize,
}

impl Tiles {
    /// The crate's tile sizes, [`FLASH_QUERY_BLOCK`] × [`FLASH_KEY_BLOCK`].
    pub(crate) const DEFAULT: Self = Self {
        query: FLASH_QUERY_BLOCK,
        key: FLASH_KEY_BLOCK,
        diagonal: FLASH_DIAGONAL_BLOCK,
    };

    /// The sizes for `t_q` queries and `t_k` keys: at least 1, at most the whole axis (and
    /// the diagonal blocks at most a query block).
    fn fit(self, t_q: usize, t_k: usize) -> Self {
        let query = self.query.clamp(1, t_q.max(1));
        Self {
            query,
            key: self.key.clamp(1, t_k.max(1)),
            diagonal: self.diagonal.clamp(1, query),
        }
    }
}

/// Tiled causal grouped-query attention: `q (B, T_q, H·D)` over `k, v (B, T_k, H_kv·D)`;
/// returns the context `(B, T_q, H·D)` and `lse (B, H, T_q)` ([`FlashOutput`]).
///
/// The context equals [`grouped_attention_forward`](super::grouped_attention_forward)'s (to
/// rounding), or with `mask` [`attention_dropout_forward`](super::attention_dropout_forward)'s
/// with the same mask, but no `(B, H, T_q, T_k)` array is built. Per `(b, h)` and block of
/// query rows, the visible keys are taken a block at a time (the derivation is in the
/// [module documentation](self)):
///
/// * `S = Q_rows·K_blockᵀ/√D` — *(S)*
/// * per row, the running maximum `m` and sum `l` of `exp(S − m)` — *(online)*
/// * the accumulator `a` scaled by `α = exp(m_old − m_new)` — *(rescale)*
/// * `a += (exp(S − m) ⊙ M)·V_block` — *(ctx)*
/// * at the end, `ctx = a/l` and `lse = m + ln l` — *(lse)*
///
/// # Errors
/// [`Error::InvalidConfig`] when `n_heads` does not divide `C` or `n_kv_heads` does not divide
/// `n_heads`; [`Error::ShapeMismatch`] when `k`, `v` are not `(B, T_k, H_kv·D)` or
/// `T_q > T_k`; [`Error::TooLarge`] when `ctx`, `lse` or a tile would exceed
/// [`MAX_ALLOC_BYTES`], or, with a mask, when the probabilities' element indices
/// `B·H·T_q·T_k` (what the mask is indexed by) do not fit in `u64`.
///
/// ```
/// use baregpt::kernels::{flash_attention_forward, grouped_attention_forward};
/// use ndarray::Array3;
///
/// let q = Array3::from_shape_fn((2, 5, 8), |(b, t, c)| ((b + 3 * t + c) as f64).sin());
/// let kv = Array3::from_shape_fn((2, 5, 4), |(b, t, c)| ((2 * b + t + c) as f64).cos());
/// // 4 query heads of size 2 on 2 key/value heads.
/// let tiled = flash_attention_forward(q.view(), kv.view(), kv.view(), 4, 2, None)?;
/// let (ctx, _probs) = grouped_attention_forward(q.view(), kv.view(), kv.view(), 4, 2)?;
/// assert!((&tiled.ctx - &ctx).iter().all(|e| e.abs() < 1e-12));
/// assert_eq!(tiled.lse.shape(), &[2, 4, 5]);
/// # Ok::<(), baregpt::Error>(())
/// ```
pub fn flash_attention_forward<F: Float>(
    q: ArrayView3<'_, F>,
    k: ArrayView3<'_, F>,
    v: ArrayView3<'_, F>,
    n_heads: usize,
    n_kv_heads: usize,
    mask: Option<&DropoutMask>,
) -> Result<FlashOutput<F>> {
    forward_tiled(q, k, v, n_heads, n_kv_heads, mask, Tiles::DEFAULT)
}

/// Backward of [`flash_attention_forward`], given its `ctx` and `lse` and the same `mask`;
/// returns `(dq, dk, dv)` shaped like `q`, `k`, `v`. The number of query heads `H` is read
/// from `lse (B, H, T_q)`.
///
/// Per `(b, h)` with key/value head `g`, `G = dO` the head's slice of `d_ctx` and `O` its
/// slice of `ctx`, for each block of query rows and each block of the keys they see:
///
/// * `P = exp(Q_rows·K_blockᵀ/√D − lse_rows)`, the forward's probabilities rebuilt, `0` for
///   hidden keys — *(P)*
/// * `dV_g[block] += (P ⊙ M)ᵀ·G_rows`, as in the plain backward (with `P ⊙ M` under
///   dropout) — *(dv)*
/// * `dP = (G_rows·V_blockᵀ) ⊙ M` (the product's backward, then the mask's) — *(dP)*
/// * `dS = P ⊙ (dP − Δ)`, the softmax backward — *(dS)*
/// * `dQ_h[rows] += dS·K_block/√D` and `dK_g[block] += dSᵀ·Q_rows/√D` — *(dq, dk)*
///
/// where `Δ_i = Σ_j P_ij·dP_ij` is the softmax backward's row sum, which no tile sees whole.
/// It is computed once per row from the context instead *(Δ)*: with `P̃ = P ⊙ M` and
/// `O_i = Σ_j P̃_ij·V_j`,
///
/// `Δ_i = Σ_j P_ij·M_ij·(G_i·V_j) = G_i·(Σ_j P̃_ij·V_j) = G_i·O_i = rowsum(dO ⊙ O)_i`,
///
/// so under dropout `O` must be the dropped context the forward returned (it is). `dk` and
/// `dv` sum over the query blocks and over the query heads sharing `g`; `dq` over the key
/// blocks.
///
/// # Errors
/// As [`flash_attention_forward`], plus [`Error::ShapeMismatch`] when `ctx` or `d_ctx` is
/// not `(B, T_q, H·D)` or `lse` not `(B, H, T_q)`.
pub fn flash_attention_backward<F: Float>(
    q: ArrayView3<'_, F>,
    k: ArrayView3<'_, F>,
    v: ArrayView3<'_, F>,
    saved: FlashView<'_, F>,
    d_ctx: ArrayView3<'_, F>,
    n_kv_heads: usize,
    mask: Option<&DropoutMask>,
) -> Result<(Array3<F>, Array3<F>, Array3<F>)> {
    backward_tiled(q, k, v, saved, d_ctx, n_kv_heads, mask, Tiles::DEFAULT)
}

/// Refuses a mask over more probabilities than `u64` can index.
fn check_mask_indices(b: usize, n_heads: usize, t_q: usize, t_k: usize) -> Result<()> {
    let count = [b, n_heads, t_q, t_k]
        .iter()
        .try_fold(1u64, |acc, &n| acc.checked_mul(n as u64));
    match count {
        Some(_) => Ok(()),
        None => Err(Error::TooLarge {
            layer: KERNEL,
            what: "dropout mask indices",
            shape: vec![b, n_heads, t_q, t_k],
            bytes: None,
            limit: MAX_ALLOC_BYTES,
        }),
    }
}

/// Where one head's probabilities sit in the mask's index space.
#[derive(Clone, Copy)]
struct MaskSite<'m> {
    mask: &'m DropoutMask,
    /// The index of element `(b, h, 0, 0)` of the `(B, H, T_q, T_k)` probabilities.
    head_start: u64,
    t_k: u64,
}

impl MaskSite<'_> {
    /// Multiplies row `row` (a query index) of a tile starting at key `first_key` by the
    /// mask, over the row's `seen` visible entries.
    fn apply<F: Float>(&self, values: &mut [F], row: usize, first_key: usize) {
        // No overflow: checked against u64 by `check_mask_indices`.
        let index = self.head_start + row as u64 * self.t_k + first_key as u64;
        self.mask.apply_in_place(ArrayViewMut1::from(values), index);
    }
}

/// The visible keys of a tile's rows: row `i` (query `rows.start + i`) sees keys
/// `..offset + rows.start + i + 1`, of which the tile holds those from `first_key` on.
#[derive(Clone, Copy)]
struct Visible {
    /// `offset + rows.start + 1`: the end of the visible keys of the tile's first row.
    first_end: usize,
    /// The tile's first key.
    first_key: usize,
}

impl Visible {
    fn new(offset: usize, rows: &Range<usize>, first_key: usize) -> Self {
        Self {
            first_end: offset + rows.start + 1,
            first_key,
        }
    }

    /// How many of the tile's `width` keys row `i` sees.
    #[inline(always)]
    fn seen(self, i: usize, width: usize) -> usize {
        (self.first_end + i)
            .saturating_sub(self.first_key)
            .min(width)
    }
}

/// Runs `f` on the row as a slice: tiles are in standard layout, so their rows always are
/// contiguous; a strided row would be copied in and out.
///
/// The vectorised loops below call their row functions directly on the slice instead (a
/// closure handed through here is not reliably inlined into [`run_widest`]'s wide variants)
/// and come here only for the strided case.
#[inline(always)]
fn on_slice<F: Float, R>(mut row: ArrayViewMut1<'_, F>, f: impl FnOnce(&mut [F]) -> R) -> R {
    if let Some(values) = row.as_slice_mut() {
        return f(values);
    }
    strided_row(row, f)
}

/// [`on_slice`]'s fallback for a strided row: copies it into a vector for `f`, and back.
/// Never taken for the tiles, kept so that no layout can panic.
#[cold]
#[inline(never)]
fn strided_row<F: Float, R>(mut row: ArrayViewMut1<'_, F>, f: impl FnOnce(&mut [F]) -> R) -> R {
    let mut values = row.to_vec();
    let result = f(&mut values);
    row.assign(&ArrayView1::from(&values[..]));
    result
}

/// *(online)* on one tile of scores: per row, updates the running maximum and sum with the
/// visible entries, overwrites them with `exp(S − m_new)` and the hidden ones with 0, and
/// stores the factor `α = exp(m_old − m_new)` the row's accumulator must be scaled by.
struct OnlineTile<'a, F> {
    scores: ArrayViewMut2<'a, F>,
    visible: Visible,
    max: &'a mut [F],
    sum: &'a mut [F],
    alpha: &'a mut [F],
}

impl<F: Float> WideLoop for OnlineTile<'_, F> {
    type Output = ();

    #[inline(always)]
    fn run(mut self) {
        let width = self.scores.ncols();
        let rows = self.scores.rows_mut().into_iter();
        let stats = self.max.iter_mut().zip(self.sum.iter_mut());
        for (i, ((row, (max, sum)), alpha)) in
            rows.zip(stats).zip(self.alpha.iter_mut()).enumerate()
        {
            let seen = self.visible.seen(i, width);
            let mut row = row;
            *alpha = match row.as_slice_mut() {
                Some(values) => online_row(values, seen, max, sum),
                None => strided_row(row, |values| online_row(values, seen, max, sum)),
            };
        }
    }
}

/// One row of [`OnlineTile`]; returns `α`. A row that sees none of the tile's keys keeps its
/// statistics (`α = 1`).
#[inline(always)]
fn online_row<F: Float>(values: &mut [F], seen: usize, max: &mut F, sum: &mut F) -> F {
    let (visible, hidden) = values.split_at_mut(seen);
    hidden.fill(F::zero());
    if visible.is_empty() {
        return F::one();
    }
    let new_max = lane_max(visible).max(*max);
    let mut lanes = [F::zero(); LANES];
    let mut chunks = visible.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *v = exp_nonpositive(*v - new_max);
            *lane += *v;
        }
    }
    let mut block_sum = F::zero();
    for v in chunks.into_remainder() {
        *v = exp_nonpositive(*v - new_max);
        block_sum += *v;
    }
    let block_sum = lanes.iter().fold(block_sum, |acc, &lane| acc + lane);
    // A row's first visible tile has nothing to rescale (m_old = −∞, l_old = 0, a = 0): α is
    // taken as 1, which leaves them as they are.
    let alpha = if *max == F::neg_infinity() {
        F::one()
    } else {
        exp_nonpositive(*max - new_max)
    };
    *sum = alpha * *sum + block_sum;
    *max = new_max;
    alpha
}

/// The maximum of a non-empty slice, in [`LANES`] independent lanes so the loop vectorises.
#[inline(always)]
fn lane_max<F: Float>(values: &[F]) -> F {
    let mut lanes = [F::neg_infinity(); LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v);
        }
    }
    (chunks.remainder().iter().chain(&lanes)).fold(F::neg_infinity(), |m, &v| m.max(v))
}

/// *(P)* on one tile of scores: the visible entries of row `i` become `exp(S − lse_i)`, the
/// hidden ones 0.
struct RecomputeTile<'a, F> {
    scores: ArrayViewMut2<'a, F>,
    visible: Visible,
    lse: ArrayView1<'a, F>,
}

impl<F: Float> WideLoop for RecomputeTile<'_, F> {
    type Output = ();

    #[inline(always)]
    fn run(mut self) {
        let width = self.scores.ncols();
        for (i, (mut row, &lse)) in self.scores.rows_mut().into_iter().zip(self.lse).enumerate() {
            let seen = self.visible.seen(i, width);
            match row.as_slice_mut() {
                Some(values) => recompute_row(values, seen, lse),
                None => strided_row(row, |values| recompute_row(values, seen, lse)),
            }
        }
    }
}

/// One row of [`RecomputeTile`].
#[inline(always)]
fn recompute_row<F: Float>(values: &mut [F], seen: usize, lse: F) {
    let (visible, hidden) = values.split_at_mut(seen);
    // S ≤ lse up to rounding, so the exponent is at most a few ulps above 0.
    for v in visible {
        *v = exp_nonpositive(*v - lse);
    }
    hidden.fill(F::zero());
}

/// *(dS)* on one tile: `dP` becomes `P ⊙ (dP − Δ_i)` row by row.
struct SoftmaxBackwardTile<'a, F> {
    probs: ArrayView2<'a, F>,
    d_probs: ArrayViewMut2<'a, F>,
    delta: &'a [F],
}

impl<F: Float> WideLoop for SoftmaxBackwardTile<'_, F> {
    type Output = ();

    #[inline(always)]
    fn run(mut self) {
        let rows = self.probs.rows().into_iter().zip(self.d_probs.rows_mut());
        for ((p, mut dp), &delta) in rows.zip(self.delta) {
            match (p.as_slice(), dp.as_slice_mut()) {
                (Some(p), Some(dp)) => softmax_backward_row(p, dp, delta),
                _ => strided_row(dp, |dp| softmax_backward_row(&p.to_vec(), dp, delta)),
            }
        }
    }
}

/// One row of [`SoftmaxBackwardTile`].
#[inline(always)]
fn softmax_backward_row<F: Float>(p: &[F], dp: &mut [F], delta: F) {
    for (dp, &p) in dp.iter_mut().zip(p) {
        *dp = p * (*dp - delta);
    }
}

/// The per-head arguments both passes share.
#[derive(Clone, Copy)]
struct Head<'m> {
    /// `1/√D`.
    scale: f64,
    offset: usize,
    tiles: Tiles,
    mask: Option<MaskSite<'m>>,
}

impl<'m> Head<'m> {
    /// Head `h` of sequence `bi` of a call with `Dims` and `n_heads` heads.
    fn new(
        (bi, h): (usize, usize),
        dims: (usize, usize, usize, usize),
        tiles: Tiles,
        mask: Option<&'m DropoutMask>,
    ) -> Self {
        let (n_heads, t_q, t_k, d) = dims;
        // No overflow: checked against u64 by `check_mask_indices` whenever there is a mask.
        let head_start = || ((bi * n_heads + h) as u64) * t_q as u64 * t_k as u64;
        Self {
            scale: 1.0 / (d as f64).sqrt(),
            offset: t_k - t_q,
            tiles,
            mask: mask.map(|mask| MaskSite {
                mask,
                head_start: head_start(),
                t_k: t_k as u64,
            }),
        }
    }

    fn scale<F: Float>(&self) -> F {
        F::of(self.scale)
    }
}

/// [`flash_attention_forward`] with tiles of `tiles` rows × keys.
pub(crate) fn forward_tiled<F: Float>(
    q: ArrayView3<'_, F>,
    k: ArrayView3<'_, F>,
    v: ArrayView3<'_, F>,
    n_heads: usize,
    n_kv_heads: usize,
    mask: Option<&DropoutMask>,
    tiles: Tiles,
) -> Result<FlashOutput<F>> {
    let Dims {
        b,
        t_q,
        t_k,
        c,
        d,
        group,
    } = check_dims(KERNEL, &q, &k, &v, n_heads, n_kv_heads)?;
    check_alloc::<F>(KERNEL, "ctx", &[b, t_q, c])?;
    check_alloc::<F>(KERNEL, "lse", &[b, n_heads, t_q])?;
    let tiles = tiles.fit(t_q, t_k);
    check_alloc::<F>(KERNEL, "scores tile", &[tiles.query, tiles.key])?;
    if mask.is_some() {
        check_mask_indices(b, n_heads, t_q, t_k)?;
    }
    // The accumulators are the context itself, so it starts at zero.
    let mut ctx = super::recycle::zeros((b, t_q, c));
    let mut lse = Array3::<F>::zeros((b, n_heads, t_q));
    if b == 0 || t_q == 0 || d == 0 {
        return Ok(FlashOutput { ctx, lse });
    }
    // Head h of sequence b: ctx[b, .., h·D..(h+1)·D] and lse[b, h, ..], as one producer of
    // (B, 1, H, 1) chunks each.
    let mut ctx_heads = split_heads(ctx.view_mut(), n_heads);
    let mut lse_heads = lse.view_mut().permuted_axes([0, 2, 1]).insert_axis(Axis(3));
    for_each_split!(
        b * t_q * t_k * c,
        Zip::indexed(ctx_heads.exact_chunks_mut((1, t_q, 1, d)))
            .and(lse_heads.exact_chunks_mut((1, t_q, 1, 1))),
        |(bi, _, h, _), ctx, lse| on_one_thread(|| {
            let ctx = squeeze(ctx);
            let lse = lse
                .index_axis_move(Axis(3), 0)
                .index_axis_move(Axis(2), 0)
                .index_axis_move(Axis(0), 0);
            let g = h / group;
            forward_head(
                q.slice(s![bi, .., h * d..(h + 1) * d]),
                k.slice(s![bi, .., g * d..(g + 1) * d]),
                v.slice(s![bi, .., g * d..(g + 1) * d]),
                ctx,
                lse,
                Head::new((bi, h), (n_heads, t_q, t_k, d), tiles, mask),
            );
        })
    );
    Ok(FlashOutput { ctx, lse })
}

/// A new standard-layout `(B, T, G·W)` array's view as `(B, T, G, W)`: `G` heads of `W`
/// columns each.
fn split_heads<F>(a: ArrayViewMut3<'_, F>, heads: usize) -> ArrayViewMut4<'_, F> {
    let (b, t, width) = a.dim();
    match a.into_shape_with_order((b, t, heads, width / heads)) {
        Ok(view) => view,
        Err(e) => unreachable!("a new (B, T, G·W) array splits into heads: {e}"),
    }
}

/// One `(1, T, 1, W)` chunk of [`split_heads`] as `(T, W)`.
fn squeeze<F>(a: ArrayViewMut4<'_, F>) -> ArrayViewMut2<'_, F> {
    a.index_axis_move(Axis(2), 0).index_axis_move(Axis(0), 0)
}

/// The forward of one head: `q (T_q, D)`, `k, v (T_k, D)` into `ctx (T_q, D)` (zero on entry)
/// and `lse (T_q)`.
fn forward_head<F: Float>(
    q: ArrayView2<'_, F>,
    k: ArrayView2<'_, F>,
    v: ArrayView2<'_, F>,
    ctx: ArrayViewMut2<'_, F>,
    lse: ArrayViewMut1<'_, F>,
    head: Head<'_>,
) {
    let Tiles {
        query: bq, key: bk, ..
    } = head.tiles;
    with_scratch::<F, _>(bq * bk + 3 * bq, |buffer| {
        let (scores, stats) = buffer.split_at_mut(bq * bk);
        let (max, stats) = stats.split_at_mut(bq);
        let (sum, alpha) = stats.split_at_mut(bq);
        let scores = tile_view((bq, bk), scores);
        forward_blocks(q, k, v, (ctx, lse), head, scores, (max, sum, alpha));
    });
}

/// A `(Bq, Bk)` tile over the first `Bq·Bk` elements of a scratch slice carved to hold it.
fn tile_view<F>((bq, bk): (usize, usize), values: &mut [F]) -> ArrayViewMut2<'_, F> {
    ArrayViewMut2::from_shape((bq, bk), values)
        .unwrap_or_else(|e| unreachable!("the scratch holds whole tiles: {e}"))
}

/// [`forward_head`]'s loop over query blocks, with its scratch: the `(Bq, Bk)` scores tile
/// and the `Bq`-long running maximum, sum and rescaling factor.
fn forward_blocks<F: Float>(
    q: ArrayView2<'_, F>,
    k: ArrayView2<'_, F>,
    v: ArrayView2<'_, F>,
    (mut ctx, mut lse): (ArrayViewMut2<'_, F>, ArrayViewMut1<'_, F>),
    head: Head<'_>,
    mut scores: ArrayViewMut2<'_, F>,
    (max, sum, alpha): (&mut [F], &mut [F], &mut [F]),
) {
    let bq = head.tiles.query;
    let scale = head.scale::<F>();
    for (rows, keys) in query_blocks(q.nrows(), head.offset, bq) {
        let n = rows.len();
        let (max, sum) = (&mut max[..n], &mut sum[..n]);
        max.fill(F::neg_infinity());
        sum.fill(F::zero());
        // Each row meets its keys in increasing order, as the recurrence needs.
        for (sub, cols) in tile_units(&rows, keys, head.offset, head.tiles) {
            let local = sub.start - rows.start..sub.end - rows.start;
            let (max, sum) = (&mut max[local.clone()], &mut sum[local]);
            let alpha = &mut alpha[..sub.len()];
            let mut acc = ctx.slice_mut(s![sub.clone(), ..]);
            let mut tile = scores.slice_mut(s![..sub.len(), ..cols.len()]);
            // (S)
            let k_block = k.slice(s![cols.clone(), ..]);
            let q_rows = q.slice(s![sub.clone(), ..]);
            matmul_into(scale, q_rows, k_block.t(), F::zero(), &mut tile);
            let visible = Visible::new(head.offset, &sub, cols.start);
            // (online)
            run_widest(OnlineTile {
                scores: tile.view_mut(),
                visible,
                max,
                sum,
                alpha,
            });
            // (rescale), skipped where α = 1 (the maximum did not move, or the row's first tile).
            for (mut row, &a) in acc.rows_mut().into_iter().zip(alpha.iter()) {
                if a != F::one() {
                    row.mapv_inplace(|x| x * a);
                }
            }
            if let Some(site) = head.mask {
                for (i, row) in tile.rows_mut().into_iter().enumerate() {
                    let seen = visible.seen(i, cols.len());
                    on_slice(row, |values| {
                        site.apply(&mut values[..seen], sub.start + i, cols.start);
                    });
                }
            }
            // (ctx)
            let v_block = v.slice(s![cols, ..]);
            matmul_into(F::one(), tile.view(), v_block, F::one(), &mut acc);
        }
        // (lse), and the division by the sum. Every row saw key 0, so l ≥ 1.
        let mut acc = ctx.slice_mut(s![rows.clone(), ..]);
        for ((mut row, &l), (m, lse)) in acc
            .rows_mut()
            .into_iter()
            .zip(sum.iter())
            .zip(max.iter().zip(lse.slice_mut(s![rows]).iter_mut()))
        {
            let inv = F::one() / l;
            row.mapv_inplace(|x| x * inv);
            *lse = *m + l.ln();
        }
    }
}

/// The tiles of one block of query rows that sees `keys` keys: `(rows, keys)` pairs, the
/// key blocks of `tiles.key` in order. A tile that every row sees whole is taken at the
/// block's full height; a tile the causal mask cuts (the block's last, or last two) is split
/// into row blocks of `tiles.diagonal`, each with only the keys its last row sees, so the
/// products skip most of the hidden triangle.
fn tile_units(
    rows: &Range<usize>,
    keys: usize,
    offset: usize,
    tiles: Tiles,
) -> impl Iterator<Item = (Range<usize>, Range<usize>)> {
    let (rows, bk) = (rows.clone(), tiles.key.max(1));
    (0..keys).step_by(bk).flat_map(move |start| {
        let end = (start + bk).min(keys);
        // Row r sees keys ..offset + r + 1: all of the tile from the first row on?
        let whole = end <= offset + rows.start + 1;
        let height = if whole { rows.len() } else { tiles.diagonal };
        (rows.start..rows.end)
            .step_by(height.max(1))
            .filter_map(move |first| {
                let sub = first..(first + height).min(rows.end);
                let seen_end = end.min(offset + sub.end);
                (seen_end > start).then_some((sub, start..seen_end))
            })
    })
}

/// [`flash_attention_backward`] with tiles of `tiles` rows × keys.
// The public function's arguments plus the tile sizes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_tiled<F: Float>(
    q: ArrayView3<'_, F>,
    k: ArrayView3<'_, F>,
    v: ArrayView3<'_, F>,
    saved: FlashView<'_, F>,
    d_ctx: ArrayView3<'_, F>,
    n_kv_heads: usize,
    mask: Option<&DropoutMask>,
    tiles: Tiles,
) -> Result<(Array3<F>, Array3<F>, Array3<F>)> {
    let FlashView { ctx, lse } = saved;
    let n_heads = lse.len_of(Axis(1));
    let Dims {
        b,
        t_q,
        t_k,
        c,
        d,
        group,
    } = check_dims(KERNEL, &q, &k, &v, n_heads, n_kv_heads)?;
    let expected = [Some(b), Some(t_q), Some(c)];
    check_shape(KERNEL, "ctx", ctx.shape(), &expected)?;
    check_shape(KERNEL, "d_ctx", d_ctx.shape(), &expected)?;
    check_shape(
        KERNEL,
        "lse",
        lse.shape(),
        &[Some(b), Some(n_heads), Some(t_q)],
    )?;
    let c_kv = k.dim().2;
    check_alloc::<F>(KERNEL, "dq", &[b, t_q, c])?;
    check_alloc::<F>(KERNEL, "dk", &[b, t_k, c_kv])?;
    let tiles = tiles.fit(t_q, t_k);
    check_alloc::<F>(KERNEL, "scores tile", &[tiles.query, tiles.key])?;
    if mask.is_some() {
        check_mask_indices(b, n_heads, t_q, t_k)?;
    }
    // All three accumulate over tiles (dq over key blocks, dk and dv over query blocks and
    // heads), so they start at zero.
    let mut dq = super::recycle::zeros((b, t_q, c));
    let mut dk = super::recycle::zeros((b, t_k, c_kv));
    let mut dv = super::recycle::zeros((b, t_k, c_kv));
    if b == 0 || t_q == 0 || d == 0 {
        return Ok((dq, dk, dv));
    }
    // Key/value head g of sequence b: its query heads' dq columns and its dk, dv columns.
    let mut dq_groups = split_heads(dq.view_mut(), n_kv_heads);
    let mut dk_groups = split_heads(dk.view_mut(), n_kv_heads);
    let mut dv_groups = split_heads(dv.view_mut(), n_kv_heads);
    for_each_split!(
        b * t_q * t_k * c,
        Zip::indexed(dq_groups.exact_chunks_mut((1, t_q, 1, group * d)))
            .and(dk_groups.exact_chunks_mut((1, t_k, 1, d)))
            .and(dv_groups.exact_chunks_mut((1, t_k, 1, d))),
        |(bi, _, g, _), dq, dk, dv| on_one_thread(|| {
            let (mut dq, mut dk, mut dv) = (squeeze(dq), squeeze(dk), squeeze(dv));
            let kv = s![bi, .., g * d..(g + 1) * d];
            let (k, v) = (k.slice(kv), v.slice(kv));
            let masked = mask.is_some();
            with_scratch::<F, _>(
                Scratch::<F>::len((tiles.query, tiles.key), masked),
                |buffer| {
                    let mut scratch = Scratch::new(buffer, (tiles.query, tiles.key), masked);
                    for j in 0..group {
                        let h = g * group + j;
                        let cols = s![bi, .., h * d..(h + 1) * d];
                        backward_head(
                            HeadInputs {
                                q: q.slice(cols),
                                k,
                                v,
                                o: ctx.slice(cols),
                                d_o: d_ctx.slice(cols),
                                lse: lse.slice(s![bi, h, ..]),
                            },
                            HeadGrads {
                                dq: dq.slice_mut(s![.., j * d..(j + 1) * d]),
                                dk: dk.view_mut(),
                                dv: dv.view_mut(),
                            },
                            &mut scratch,
                            Head::new((bi, h), (n_heads, t_q, t_k, d), tiles, mask),
                        );
                    }
                },
            );
        })
    );
    Ok((dq, dk, dv))
}

/// The tiles of one backward task, lent once (from the thread's [scratch](with_scratch)) and
/// reused by every block and head.
struct Scratch<'a, F> {
    /// `P` of the current tile.
    probs: ArrayViewMut2<'a, F>,
    /// `dP`, then `dS`, of the current tile.
    d_probs: ArrayViewMut2<'a, F>,
    /// `P ⊙ M` under dropout.
    dropped: Option<ArrayViewMut2<'a, F>>,
    /// `Δ` of the current block's rows.
    delta: &'a mut [F],
}

impl<'a, F: Float> Scratch<'a, F> {
    /// The elements a task's scratch takes: two or three `(Bq, Bk)` tiles and `Bq` values.
    fn len((bq, bk): (usize, usize), masked: bool) -> usize {
        (2 + usize::from(masked)) * bq * bk + bq
    }

    /// The task's tiles carved from `buffer` of at least [`Scratch::len`] elements.
    fn new(buffer: &'a mut [F], (bq, bk): (usize, usize), masked: bool) -> Self {
        let tile = |values| tile_view((bq, bk), values);
        let (probs, rest) = buffer.split_at_mut(bq * bk);
        let (d_probs, rest) = rest.split_at_mut(bq * bk);
        let (dropped, delta) = if masked {
            let (dropped, rest) = rest.split_at_mut(bq * bk);
            (Some(tile(dropped)), rest)
        } else {
            (None, rest)
        };
        Self {
            probs: tile(probs),
            d_probs: tile(d_probs),
            dropped,
            delta: &mut delta[..bq],
        }
    }
}

/// One head's forward arrays: `q (T_q, D)`, `k, v (T_k, D)`, `o = ctx`, `d_o = d_ctx`
/// `(T_q, D)`, `lse (T_q)`.
struct HeadInputs<'a, F> {
    q: ArrayView2<'a, F>,
    k: ArrayView2<'a, F>,
    v: ArrayView2<'a, F>,
    o: ArrayView2<'a, F>,
    d_o: ArrayView2<'a, F>,
    lse: ArrayView1<'a, F>,
}

/// One head's gradients: its own `dq (T_q, D)` and its key/value head's `dk, dv (T_k, D)`,
/// all added into.
struct HeadGrads<'a, F> {
    dq: ArrayViewMut2<'a, F>,
    dk: ArrayViewMut2<'a, F>,
    dv: ArrayViewMut2<'a, F>,
}

/// The backward of one head, adding into `grads`.
fn backward_head<F: Float>(
    x: HeadInputs<'_, F>,
    mut grads: HeadGrads<'_, F>,
    scratch: &mut Scratch<F>,
    head: Head<'_>,
) {
    let Tiles { query: bq, .. } = head.tiles;
    let scale = head.scale::<F>();
    for (rows, keys) in query_blocks(x.q.nrows(), head.offset, bq) {
        // (Δ) = rowsum(dO ⊙ O)
        let delta = &mut scratch.delta[..rows.len()];
        let o_rows = x.o.slice(s![rows.clone(), ..]);
        let g_rows = x.d_o.slice(s![rows.clone(), ..]);
        for ((d, g), o) in delta.iter_mut().zip(g_rows.rows()).zip(o_rows.rows()) {
            *d = Zip::from(&g)
                .and(&o)
                .fold(F::zero(), |acc, &g, &o| acc + g * o);
        }
        for (sub, cols) in tile_units(&rows, keys, head.offset, head.tiles) {
            let (n, width) = (sub.len(), cols.len());
            let delta = &delta[sub.start - rows.start..sub.end - rows.start];
            let q_rows = x.q.slice(s![sub.clone(), ..]);
            let g_rows = x.d_o.slice(s![sub.clone(), ..]);
            let (k_block, v_block) = (
                x.k.slice(s![cols.clone(), ..]),
                x.v.slice(s![cols.clone(), ..]),
            );
            let visible = Visible::new(head.offset, &sub, cols.start);
            let mut probs = scratch.probs.slice_mut(s![..n, ..width]);
            // (P): the scores, then exp(S − lse).
            matmul_into(scale, q_rows, k_block.t(), F::zero(), &mut probs);
            run_widest(RecomputeTile {
                scores: probs.view_mut(),
                visible,
                lse: x.lse.slice(s![sub.clone()]),
            });
            let mut d_probs = scratch.d_probs.slice_mut(s![..n, ..width]);
            // (dP) = dO·V_blockᵀ, masked below.
            matmul_into(F::one(), g_rows, v_block.t(), F::zero(), &mut d_probs);
            let mut dv_block = grads.dv.slice_mut(s![cols.clone(), ..]);
            match (head.mask, scratch.dropped.as_mut()) {
                (Some(site), Some(dropped)) => {
                    let mut dropped = dropped.slice_mut(s![..n, ..width]);
                    dropped.assign(&probs);
                    let tiles = dropped.rows_mut().into_iter().zip(d_probs.rows_mut());
                    for (i, (pm, dp)) in tiles.enumerate() {
                        let seen = visible.seen(i, width);
                        let row = sub.start + i;
                        on_slice(pm, |pm| site.apply(&mut pm[..seen], row, cols.start));
                        on_slice(dp, |dp| site.apply(&mut dp[..seen], row, cols.start));
                    }
                    // (dv) with P ⊙ M
                    matmul_into(F::one(), dropped.t(), g_rows, F::one(), &mut dv_block);
                }
                // (dv)
                _ => matmul_into(F::one(), probs.t(), g_rows, F::one(), &mut dv_block),
            }
            // (dS) in place of dP
            run_widest(SoftmaxBackwardTile {
                probs: probs.view(),
                d_probs: d_probs.view_mut(),
                delta,
            });
            // (dq, dk)
            let mut dq_rows = grads.dq.slice_mut(s![sub.clone(), ..]);
            matmul_into(scale, d_probs.view(), k_block, F::one(), &mut dq_rows);
            let mut dk_block = grads.dk.slice_mut(s![cols, ..]);
            matmul_into(scale, d_probs.t(), q_rows, F::one(), &mut dk_block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention::{attention_dropout_backward, grouped_attention_backward};
    use crate::kernels::{attention_dropout_forward, grouped_attention_forward};
    use approx::assert_abs_diff_eq;

    fn inputs(
        b: usize,
        (t_q, t_k): (usize, usize),
        (h, h_kv, d): (usize, usize, usize),
    ) -> [Array3<f64>; 4] {
        let f = |seed: f64, scale: f64| {
            move |(i, j, l): (usize, usize, usize)| {
                ((i * 31 + j * 7 + l * 3) as f64 * seed).sin() * scale
            }
        };
        [
            Array3::from_shape_fn((b, t_q, h * d), f(0.37, 2.0)),
            Array3::from_shape_fn((b, t_k, h_kv * d), f(0.53, 2.0)),
            Array3::from_shape_fn((b, t_k, h_kv * d), f(0.71, 1.0)),
            Array3::from_shape_fn((b, t_q, h * d), f(0.29, 1.0)),
        ]
    }

    /// Small tiles of unequal sizes, so that every T crosses many tile edges, the diagonal
    /// falls at every position within a tile, and rows see no key of a tile.
    #[test]
    fn small_tiles_match_the_plain_kernel_forward_and_backward() {
        let mask = DropoutMask::new(0.3, 5, 2).unwrap();
        for tiles in [
            Tiles {
                query: 3,
                key: 5,
                diagonal: 3,
            },
            Tiles {
                query: 4,
                key: 4,
                diagonal: 2,
            },
            Tiles {
                query: 7,
                key: 2,
                diagonal: 3,
            },
            Tiles {
                query: 8,
                key: 6,
                diagonal: 1,
            },
            Tiles {
                query: 1,
                key: 1,
                diagonal: 1,
            },
        ] {
            for t_k in 1..=23usize {
                for t_q in [t_k, 1, t_k.div_ceil(2)] {
                    for (h, h_kv, d) in [(2, 2, 3), (4, 2, 2), (3, 1, 1)] {
                        for mask in [None, Some(&mask)] {
                            let [q, k, v, d_ctx] = inputs(2, (t_q, t_k), (h, h_kv, d));
                            let (q, k, v) = (q.view(), k.view(), v.view());
                            let (ctx, probs) = match mask {
                                None => grouped_attention_forward(q, k, v, h, h_kv),
                                Some(m) => attention_dropout_forward(q, k, v, h, h_kv, m),
                            }
                            .unwrap();
                            let out = forward_tiled(q, k, v, h, h_kv, mask, tiles).unwrap();
                            assert_abs_diff_eq!(out.ctx, ctx, epsilon = 1e-12);
                            let (probs, d) = (probs.view(), d_ctx.view());
                            let plain = match mask {
                                None => grouped_attention_backward(q, k, v, probs, d, h_kv),
                                Some(m) => attention_dropout_backward(q, k, v, probs, d, h_kv, m),
                            }
                            .unwrap();
                            let tiled =
                                backward_tiled(q, k, v, out.view(), d, h_kv, mask, tiles).unwrap();
                            assert_abs_diff_eq!(tiled.0, plain.0, epsilon = 1e-12);
                            assert_abs_diff_eq!(tiled.1, plain.1, epsilon = 1e-12);
                            assert_abs_diff_eq!(tiled.2, plain.2, epsilon = 1e-12);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn lse_is_the_log_of_the_visible_scores_exponentials() {
        let [q, k, v, _] = inputs(1, (4, 6), (2, 1, 3));
        let out = forward_tiled(
            q.view(),
            k.view(),
            v.view(),
            2,
            1,
            None,
            Tiles {
                query: 2,
                key: 3,
                diagonal: 1,
            },
        )
        .unwrap();
        for h in 0..2 {
            for i in 0..4 {
                let total: f64 = (0..=2 + i)
                    .map(|j| {
                        let dot: f64 = (0..3).map(|e| q[[0, i, h * 3 + e]] * k[[0, j, e]]).sum();
                        (dot / 3f64.sqrt()).exp()
                    })
                    .sum();
                assert_abs_diff_eq!(out.lse[[0, h, i]], total.ln(), epsilon = 1e-12);
            }
        }
    }

    #[test]
    fn tile_units_cover_each_visible_pair_once_in_key_order() {
        for (t_q, t_k) in [(1, 1), (9, 9), (20, 20), (5, 17), (33, 40)] {
            for (query, key, diagonal) in [(4, 3, 2), (8, 8, 8), (6, 5, 1), (3, 7, 3)] {
                let tiles = Tiles {
                    query,
                    key,
                    diagonal,
                };
                let offset = t_k - t_q;
                let mut seen = vec![vec![0u32; t_k]; t_q];
                let mut last_key = vec![0usize; t_q];
                for (rows, keys) in query_blocks(t_q, offset, query) {
                    for (sub, cols) in tile_units(&rows, keys, offset, tiles) {
                        assert!(sub.start >= rows.start && sub.end <= rows.end);
                        // Some row of the unit sees its first key.
                        assert!(cols.start < offset + sub.end, "{sub:?} {cols:?}");
                        for r in sub {
                            assert!(cols.start >= last_key[r], "row {r} goes back");
                            last_key[r] = cols.end;
                            for j in cols.clone() {
                                seen[r][j] += 1;
                            }
                        }
                    }
                }
                for (r, row) in seen.iter().enumerate() {
                    for (j, &n) in row.iter().enumerate() {
                        // Hidden keys may sit in a unit (and are masked there); visible ones
                        // are in exactly one.
                        if j <= offset + r {
                            assert_eq!(n, 1, "T_q {t_q} T_k {t_k} {tiles:?}: ({r}, {j})");
                        } else {
                            assert!(n <= 1);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn visible_counts_follow_the_causal_offset() {
        // Queries 4..7 of 8 against 10 keys (offset 2): query 4 sees keys ..7.
        let visible = Visible::new(2, &(4..7), 5);
        assert_eq!(
            (0..3).map(|i| visible.seen(i, 4)).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert_eq!(Visible::new(0, &(0..2), 5).seen(0, 4), 0);
    }
}
