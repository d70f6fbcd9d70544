//! Causal multi-head scaled dot-product attention (the part between the projections), with
//! grouped key/value heads.
//!
//! Shapes: `q (B, T_q, H·D)`, `k, v (B, T_k, H_kv·D)` with `T_q ≤ T_k`, `H` query heads and
//! `H_kv` key/value heads (`H_kv` divides `H`) of size `D`, each a contiguous column slice,
//! `probs (B, H, T_q, T_k)`, `ctx (B, T_q, H·D)`. Query head `h` attends with key/value head
//! `h / (H / H_kv)` (Hugging Face's `repeat_kv` order): `H_kv = H` is ordinary multi-head
//! attention, `H_kv = 1` multi-query attention. Query `i` sits at absolute position
//! `T_k − T_q + i` and sees the keys up to and including its own position (for
//! self-attention `T_q = T_k`; a key/value cache passes fewer queries than keys).
//!
//! Per batch `b` and head `h`, with `g = h / (H / H_kv)`: `S = Q_h·K_gᵀ / √D`,
//! `P = causal_softmax(S)`, `ctx_h = P·V_g`.

use std::ops::Range;

use ndarray::{Array2, Array3, Array4, ArrayView3, Axis, Zip, s};

use super::dropout::DropoutMask;
use super::matmul::{matmul_into, matmul_uninit};
use super::recycle;
use super::softmax::{causal_softmax_forward, softmax_backward_in_place};
use crate::error::check_shape;
use crate::exec::{QUERY_BLOCK, for_each_split, on_one_thread};
use crate::limits::check_alloc;
use crate::{Error, Float, Result};

const KERNEL: &str = "attention";

/// The sizes of one attention call: `(B, T_q, T_k, C, D)` and the group size `H / H_kv`.
pub(super) struct Dims {
    pub(super) b: usize,
    pub(super) t_q: usize,
    pub(super) t_k: usize,
    pub(super) c: usize,
    pub(super) d: usize,
    pub(super) group: usize,
}

/// Checks the attention shapes: `q (B, T_q, H·D)`, `k, v (B, T_k, H_kv·D)`, `T_q ≤ T_k`;
/// errors name `kernel` (this one's, or the tiled kernel's).
pub(super) fn check_dims<F>(
    kernel: &'static str,
    q: &ArrayView3<'_, F>,
    k: &ArrayView3<'_, F>,
    v: &ArrayView3<'_, F>,
    n_heads: usize,
    n_kv_heads: usize,
) -> Result<Dims> {
    let (b, t_q, c) = q.dim();
    if n_heads == 0 || c % n_heads != 0 {
        return Err(Error::InvalidConfig {
            layer: kernel,
            reason: format!("{n_heads} heads do not divide the width {c}"),
        });
    }
    if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(Error::InvalidConfig {
            layer: kernel,
            reason: format!("{n_kv_heads} key/value heads do not divide the {n_heads} heads"),
        });
    }
    let d = c / n_heads;
    // No overflow: n_kv_heads ≤ n_heads, so the product is at most c.
    let c_kv = n_kv_heads * d;
    check_shape(kernel, "k", k.shape(), &[Some(b), None, Some(c_kv)])?;
    let t_k = k.dim().1;
    check_shape(kernel, "v", v.shape(), &[Some(b), Some(t_k), Some(c_kv)])?;
    if t_q > t_k {
        return Err(Error::ShapeMismatch {
            layer: kernel,
            what: "q",
            expected: crate::error::ExpectedShape(vec![Some(b), Some(t_k), Some(c)]),
            actual: q.shape().to_vec(),
        });
    }
    Ok(Dims {
        b,
        t_q,
        t_k,
        c,
        d,
        group: n_heads / n_kv_heads,
    })
}

/// Causal attention over `n_heads` heads; returns `(ctx (B, T_q, C), probs (B, H, T_q, T_k))`.
///
/// `q`, `k` and `v` all have `n_heads` heads (`(B, T, C)` each): the multi-head case of
/// [`grouped_attention_forward`].
///
/// Queries are taken in blocks of 64 rows, each multiplied only against the keys it can see;
/// the probabilities of hidden keys are exact zeros.
///
/// # Errors
/// [`Error::InvalidConfig`] when `n_heads` does not divide `C`;
/// [`Error::ShapeMismatch`] when `k`, `v` do not match `q` or `T_q > T_k`;
/// [`Error::TooLarge`] when `probs` or `ctx` would exceed
/// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
pub fn attention_forward<F: Float>(
    q: ArrayView3<'_, F>,
    k: ArrayView3<'_, F>,
    v: ArrayView3<'_, F>,
    n_heads: usize,
) -> Result<(Array3<F>, Array4<F>)> {
    forward_blocked(q, k, v, n_heads, n_heads, None, QUERY_BLOCK)
}

/// Causal grouped-query attention: `q (B, T_q, H·D)` over `k, v (B, T_k, H_kv·D)`; returns
/// `(ctx (B, T_q, H·D), probs (B, H, T_q, T_k))`.
///
/// `D = C / n_heads`; query head `h` uses key/value head `h / (n_heads / n_kv_heads)`.
/// `n_kv_heads = n_heads` is [`attention_forward`], `n_kv_heads = 1` multi-query attention.
///
/// # Errors
/// [`Error::InvalidConfig`] when `n_heads` does not divide `C` or `n_kv_heads` does not divide
/// `n_heads`; [`Error::ShapeMismatch`] when `k`, `v` are not `(B, T_k, H_kv·D)` or
/// `T_q > T_k`; [`Error::TooLarge`] when `probs` or `ctx` would exceed
/// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
pub fn grouped_attention_forward<F: Float>(
    q: ArrayView3<'_, F>,
    k: ArrayView3<'_, F>,
    v: ArrayView3<'_, F>,
    n_heads: usize,
    n_kv_heads: usize,
) -> Result<(Array3<F>, Array4<F>)> {
    forward_blocked(q, k, v, n_heads, n_kv_heads, None, QUERY_BLOCK)
}

/// [`grouped_attention_forward`] with dropout on the probabilities (GPT-2's `attn_pdrop`):
/// `ctx_h = (P_h ⊙ M_h)·V_g`, where `M` is `mask` over the `(B, H, T_q, T_k)` probabilities
/// (element `((b·H + h)·T_q + i)·T_k + j` in row-major order; `0` where dropped, `1/(1 − p)`
/// where kept). Returns `(ctx, probs)` with the probabilities **before** dropout, which is
/// what [`attention_dropout_backward`] needs (with the same mask, regenerated, not stored).
///
/// # Errors
/// As [`grouped_attention_forward`].
pub fn attention_dropout_forward<F: Float>(
    q: ArrayView3<'_, F>,
    k: ArrayView3<'_, F>,
    v: ArrayView3<'_, F>,
    n_heads: usize,
    n_kv_heads: usize,
    mask: &DropoutMask,
) -> Result<(Array3<F>, Array4<F>)> {
    forward_blocked(q, k, v, n_heads, n_kv_heads, Some(mask), QUERY_BLOCK)
}

/// Multiplies the block `rows × keys` of head `h` of sequence `bi` of the probabilities
/// (shape `(B, H, T_q, T_k)`) by the mask, row by row at each element's row-major index.
fn apply_mask<F: Float>(
    mask: &DropoutMask,
    mut block: ndarray::ArrayViewMut2<'_, F>,
    (bi, h, first_row): (usize, usize, usize),
    (n_heads, t_q, t_k): (usize, usize, usize),
) {
    for (i, row) in block.outer_iter_mut().enumerate() {
        let index = ((bi * n_heads + h) * t_q + first_row + i) * t_k;
        mask.apply_in_place(row, index as u64);
    }
}

/// The query blocks of `T_q` rows, `block` at a time, each with the number of keys it sees:
/// `offset + rows.end`, where `offset = T_k − T_q`.
pub(super) fn query_blocks(
    t_q: usize,
    offset: usize,
    block: usize,
) -> impl DoubleEndedIterator<Item = (Range<usize>, usize)> {
    let block = block.max(1);
    (0..t_q.div_ceil(block)).map(move |i| {
        let rows = i * block..((i + 1) * block).min(t_q);
        let keys = offset + rows.end;
        (rows, keys)
    })
}

/// [`attention_forward`] with query blocks of `block` rows.
fn forward_blocked<F: Float>(
    q: ArrayView3<'_, F>,
    k: ArrayView3<'_, F>,
    v: ArrayView3<'_, F>,
    n_heads: usize,
    n_kv_heads: usize,
    mask: Option<&DropoutMask>,
    block: usize,
) -> Result<(Array3<F>, Array4<F>)> {
    let Dims {
        b,
        t_q,
        t_k,
        c,
        d,
        group,
    } = check_dims(KERNEL, &q, &k, &v, n_heads, n_kv_heads)?;
    check_alloc::<F>(KERNEL, "probs", &[b, n_heads, t_q, t_k])?;
    check_alloc::<F>(KERNEL, "ctx", &[b, t_q, c])?;
    let scale = F::one() / F::of(d as f64).sqrt();
    let offset = t_k - t_q;
    // Every element of both is written below (per head and query block: the visible keys'
    // probabilities, zeros for the hidden ones, and the head's columns of the context), so
    // they start from recycled buffers rather than zeroed ones.
    let mut probs = recycle::array((b, n_heads, t_q, t_k));
    let mut ctx = recycle::array((b, t_q, c));
    // Sequences are independent: one task per batch element, heads in turn within it.
    for_each_split!(
        b * t_q * t_k * c,
        Zip::indexed(probs.outer_iter_mut())
            .and(ctx.outer_iter_mut())
            .and(q.outer_iter())
            .and(k.outer_iter())
            .and(v.outer_iter()),
        |bi, mut probs, mut ctx, q, k, v| on_one_thread(|| {
            for h in 0..n_heads {
                let cols = s![.., h * d..(h + 1) * d];
                // The key/value head this query head shares (itself when ungrouped).
                let g = h / group;
                let kv_cols = s![.., g * d..(g + 1) * d];
                let (q, k, v) = (q.slice(cols), k.slice(kv_cols), v.slice(kv_cols));
                let mut probs = probs.index_axis_mut(Axis(0), h);
                let mut ctx = ctx.slice_mut(cols);
                for (rows, keys) in query_blocks(t_q, offset, block) {
                    let (mut p, mut hidden) =
                        probs.multi_slice_mut((s![rows.clone(), ..keys], s![rows.clone(), keys..]));
                    hidden.fill(F::zero());
                    let query_rows = q.slice(s![rows.clone(), ..]);
                    let visible_keys = k.slice(s![..keys, ..]);
                    matmul_into(scale, query_rows, visible_keys.t(), F::zero(), &mut p);
                    causal_softmax_forward(p.view_mut(), offset + rows.start);
                    // With dropout, the context uses P ⊙ M; probs keeps P.
                    let dropped = mask.map(|mask| {
                        let mut pm = p.to_owned();
                        apply_mask(
                            mask,
                            pm.view_mut(),
                            (bi, h, rows.start),
                            (n_heads, t_q, t_k),
                        );
                        pm
                    });
                    matmul_into(
                        F::one(),
                        dropped.as_ref().map_or(p.view(), |pm| pm.view()),
                        v.slice(s![..keys, ..]),
                        F::zero(),
                        &mut ctx.slice_mut(s![rows, ..]),
                    );
                }
            }
        })
    );
    Ok((ctx, probs))
}

/// Backward of [`attention_forward`]; returns `(dq, dk, dv)` shaped like `q`, `k`, `v`.
///
/// Per batch and head, with `G = d_ctx_h (T_q, D)`:
///
/// * `dV_h = Pᵀ·G` — *(dv)*
/// * `dP = G·V_hᵀ` — *(dP)*
/// * `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, the softmax backward — *(dS)*
/// * with `S = Q_h·K_hᵀ/√D`: `dQ_h = dS·K_h/√D` and `dK_h = dSᵀ·Q_h/√D` — *(dq, dk)*
///
/// The products run per block of queries and the keys it sees, as in the forward; a hidden
/// key has `P = 0`, so it adds nothing to any of these terms. This is
/// [`grouped_attention_backward`] with as many key/value heads as query heads.
///
/// # Errors
/// As [`attention_forward`], plus [`Error::ShapeMismatch`] when `probs` or `d_ctx` do not match.
pub fn attention_backward<F: Float>(
    q: ArrayView3<'_, F>,
    k: ArrayView3<'_, F>,
    v: ArrayView3<'_, F>,
    probs: ndarray::ArrayView4<'_, F>,
    d_ctx: ArrayView3<'_, F>,
) -> Result<(Array3<F>, Array3<F>, Array3<F>)> {
    let n_heads = probs.len_of(Axis(1));
    backward_blocked(q, k, v, probs, d_ctx, n_heads, None, QUERY_BLOCK)
}

/// Backward of [`grouped_attention_forward`]; returns `(dq, dk, dv)` shaped like `q`, `k`,
/// `v`. The number of query heads `H` is read from `probs (B, H, T_q, T_k)`.
///
/// Key/value head `g` is used by the query heads `h` with `h / (H / H_kv) = g`, so its
/// gradients are the sums of the per-head terms of [`attention_backward`] over those heads
/// (the chain rule through a value used in several places):
///
/// * `dV_g = Σ_h P_hᵀ·G_h` — *(dv)*
/// * `dK_g = Σ_h dS_hᵀ·Q_h/√D` — *(dk)*
///
/// while `dQ_h = dS_h·K_g/√D` stays per query head. The sums are accumulated in place: every
/// head adds its term into its group's columns of `dk` and `dv`.
///
/// # Errors
/// As [`grouped_attention_forward`], plus [`Error::ShapeMismatch`] when `probs` or `d_ctx`
/// do not match.
pub fn grouped_attention_backward<F: Float>(
    q: ArrayView3<'_, F>,
    k: ArrayView3<'_, F>,
    v: ArrayView3<'_, F>,
    probs: ndarray::ArrayView4<'_, F>,
    d_ctx: ArrayView3<'_, F>,
    n_kv_heads: usize,
) -> Result<(Array3<F>, Array3<F>, Array3<F>)> {
    backward_blocked(q, k, v, probs, d_ctx, n_kv_heads, None, QUERY_BLOCK)
}

/// Backward of [`attention_dropout_forward`], given its `probs` (before dropout) and the same
/// `mask`; returns `(dq, dk, dv)` shaped like `q`, `k`, `v`.
///
/// With `P̃ = P ⊙ M` and `ctx_h = P̃_h·V_g`, per head (`G = d_ctx_h`):
///
/// * `dV_g += P̃_hᵀ·G` — *(dv)*
/// * `dP̃ = G·V_gᵀ`, and since `P̃ = M ⊙ P` element-wise, `dP = dP̃ ⊙ M` — *(dP)*
/// * then the softmax backward with the undropped `P`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`,
///   and `dQ`, `dK` as in [`grouped_attention_backward`] — *(dS, dq, dk)*
///
/// # Errors
/// As [`grouped_attention_backward`].
pub fn attention_dropout_backward<F: Float>(
    q: ArrayView3<'_, F>,
    k: ArrayView3<'_, F>,
    v: ArrayView3<'_, F>,
    probs: ndarray::ArrayView4<'_, F>,
    d_ctx: ArrayView3<'_, F>,
    n_kv_heads: usize,
    mask: &DropoutMask,
) -> Result<(Array3<F>, Array3<F>, Array3<F>)> {
    backward_blocked(q, k, v, probs, d_ctx, n_kv_heads, Some(mask), QUERY_BLOCK)
}

/// [`attention_backward`] with query blocks of `block` rows: each block of queries and its
/// visible keys contributes its terms; `dK` and `dV` sum over the blocks.
// The public functions' arguments plus the dropout mask and the block size.
#[allow(clippy::too_many_arguments)]
fn backward_blocked<F: Float>(
    q: ArrayView3<'_, F>,
    k: ArrayView3<'_, F>,
    v: ArrayView3<'_, F>,
    probs: ndarray::ArrayView4<'_, F>,
    d_ctx: ArrayView3<'_, F>,
    n_kv_heads: usize,
    mask: Option<&DropoutMask>,
    block: usize,
) -> Result<(Array3<F>, Array3<F>, Array3<F>)> {
    let n_heads = probs.len_of(Axis(1));
    let Dims {
        b,
        t_q,
        t_k,
        c,
        d,
        group,
    } = check_dims(KERNEL, &q, &k, &v, n_heads, n_kv_heads)?;
    check_shape(
        KERNEL,
        "probs",
        probs.shape(),
        &[Some(b), Some(n_heads), Some(t_q), Some(t_k)],
    )?;
    check_shape(
        KERNEL,
        "d_ctx",
        d_ctx.shape(),
        &[Some(b), Some(t_q), Some(c)],
    )?;
    check_alloc::<F>(KERNEL, "d_scores", &[block.min(t_q), t_k])?;
    let scale = F::one() / F::of(d as f64).sqrt();
    let offset = t_k - t_q;
    // dq is written whole, block by block; dk and dv accumulate over the blocks.
    let mut dq = recycle::array((b, t_q, c));
    let c_kv = k.dim().2;
    let mut dk = recycle::zeros((b, t_k, c_kv));
    let mut dv = recycle::zeros((b, t_k, c_kv));
    for_each_split!(
        b * t_q * t_k * c,
        Zip::indexed(dq.outer_iter_mut())
            .and(dk.outer_iter_mut())
            .and(dv.outer_iter_mut())
            .and(probs.outer_iter())
            .and(d_ctx.outer_iter()),
        |bi, mut dq, mut dk, mut dv, probs, d_ctx| on_one_thread(|| {
            let (q, k, v) = (
                q.index_axis(Axis(0), bi),
                k.index_axis(Axis(0), bi),
                v.index_axis(Axis(0), bi),
            );
            // dP/dS of one query block, reused by every block and head of this sequence.
            let mut d_scores_buffer = Array2::<F>::uninit((block.min(t_q), t_k));
            for h in 0..n_heads {
                let cols = s![.., h * d..(h + 1) * d];
                // Heads sharing a key/value head add into the same columns of dk and dv.
                let kv_cols = s![.., (h / group) * d..(h / group + 1) * d];
                let (q, k, v, g) = (
                    q.slice(cols),
                    k.slice(kv_cols),
                    v.slice(kv_cols),
                    d_ctx.slice(cols),
                );
                let probs = probs.index_axis(Axis(0), h);
                let (mut dq, mut dk, mut dv) = (
                    dq.slice_mut(cols),
                    dk.slice_mut(kv_cols),
                    dv.slice_mut(kv_cols),
                );
                for (rows, keys) in query_blocks(t_q, offset, block) {
                    let p = probs.slice(s![rows.clone(), ..keys]);
                    let g = g.slice(s![rows.clone(), ..]);
                    let here = (bi, h, rows.start);
                    let dropped = mask.map(|mask| {
                        let mut pm = p.to_owned();
                        apply_mask(mask, pm.view_mut(), here, (n_heads, t_q, t_k));
                        pm
                    });
                    // (dv), with P ⊙ M under dropout
                    matmul_into(
                        F::one(),
                        dropped.as_ref().map_or(p, |pm| pm.view()).t(),
                        g,
                        F::one(),
                        &mut dv.slice_mut(s![..keys, ..]),
                    );
                    // (dP), then (dS) in place
                    let mut d_scores = matmul_uninit(
                        F::one(),
                        g,
                        v.slice(s![..keys, ..]).t(),
                        d_scores_buffer.slice_mut(s![..rows.len(), ..keys]),
                    );
                    if let Some(mask) = mask {
                        // (dP) under dropout: dP̃ ⊙ M.
                        apply_mask(mask, d_scores.view_mut(), here, (n_heads, t_q, t_k));
                    }
                    // The shapes agree by construction (both are this block's rows and keys).
                    let _ = softmax_backward_in_place(p, d_scores.view_mut());
                    // (dq, dk)
                    matmul_into(
                        scale,
                        d_scores.view(),
                        k.slice(s![..keys, ..]),
                        F::zero(),
                        &mut dq.slice_mut(s![rows.clone(), ..]),
                    );
                    matmul_into(
                        scale,
                        d_scores.t(),
                        q.slice(s![rows, ..]),
                        F::one(),
                        &mut dk.slice_mut(s![..keys, ..]),
                    );
                }
            }
        })
    );
    // The heads' column slices cover all `C` columns and the query blocks all `T_q` rows of
    // dq, so every element was written.
    Ok((dq, dk, dv))
}

/// Naive loops over every index: the reference the fast path is tested against.
#[cfg(test)]
pub(crate) fn attention_reference(
    q: ArrayView3<'_, f64>,
    k: ArrayView3<'_, f64>,
    v: ArrayView3<'_, f64>,
    n_heads: usize,
) -> Array3<f64> {
    let (b, t_q, c) = q.dim();
    let t_k = k.dim().1;
    let d = c / n_heads;
    let offset = t_k - t_q;
    let mut ctx = Array3::zeros((b, t_q, c));
    for bi in 0..b {
        for h in 0..n_heads {
            for i in 0..t_q {
                let visible = offset + i + 1;
                let scores: Vec<f64> = (0..visible)
                    .map(|j| {
                        (0..d)
                            .map(|e| q[[bi, i, h * d + e]] * k[[bi, j, h * d + e]])
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for e in 0..d {
                    ctx[[bi, i, h * d + e]] = (0..visible)
                        .map(|j| weights[j] / total * v[[bi, j, h * d + e]])
                        .sum();
                }
            }
        }
    }
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    fn qkv(b: usize, t_q: usize, t_k: usize, c: usize) -> (Array3<f64>, Array3<f64>, Array3<f64>) {
        let f = |seed: f64| {
            move |(i, j, l): (usize, usize, usize)| ((i * 31 + j * 7 + l) as f64 * seed).sin()
        };
        (
            Array3::from_shape_fn((b, t_q, c), f(0.37)),
            Array3::from_shape_fn((b, t_k, c), f(0.53)),
            Array3::from_shape_fn((b, t_k, c), f(0.71)),
        )
    }

    #[test]
    fn fast_path_matches_naive_reference() {
        for &(b, t_q, t_k, c, h) in &[
            (2, 5, 5, 6, 2),
            (1, 1, 1, 4, 1),
            (3, 2, 6, 9, 3),
            (1, 7, 7, 12, 4),
            // Several query blocks of the default size, the last one partial.
            (2, 150, 150, 4, 2),
            (1, 70, 150, 4, 1),
        ] {
            let (q, k, v) = qkv(b, t_q, t_k, c);
            let (ctx, probs) = attention_forward(q.view(), k.view(), v.view(), h).unwrap();
            assert_abs_diff_eq!(
                ctx,
                attention_reference(q.view(), k.view(), v.view(), h),
                epsilon = 1e-12
            );
            for row in probs.lanes(Axis(3)) {
                assert_abs_diff_eq!(row.sum(), 1.0, epsilon = 1e-12);
            }
        }
    }

    #[test]
    fn query_blocks_give_the_same_forward_and_backward_as_one_block() {
        // Blocks of 16 rows (the last partial) against a single block holding every query,
        // for self-attention and for fewer queries than keys (a key/value cache).
        for &(b, t_q, t_k, c, h) in &[(2, 70, 70, 6, 2), (1, 37, 70, 4, 1), (1, 16, 16, 4, 2)] {
            let (q, k, v) = qkv(b, t_q, t_k, c);
            let d_ctx = Array3::from_shape_fn((b, t_q, c), |(i, j, l)| {
                ((i * 5 + j * 3 + l) as f64 * 0.29).cos()
            });
            let (ctx, probs) =
                forward_blocked(q.view(), k.view(), v.view(), h, h, None, 16).unwrap();
            let (ctx_1, probs_1) =
                forward_blocked(q.view(), k.view(), v.view(), h, h, None, usize::MAX).unwrap();
            assert_abs_diff_eq!(ctx, ctx_1, epsilon = 1e-12);
            assert_abs_diff_eq!(probs, probs_1, epsilon = 1e-12);
            let grads = backward_blocked(
                q.view(),
                k.view(),
                v.view(),
                probs.view(),
                d_ctx.view(),
                h,
                None,
                16,
            )
            .unwrap();
            let grads_1 = backward_blocked(
                q.view(),
                k.view(),
                v.view(),
                probs_1.view(),
                d_ctx.view(),
                h,
                None,
                usize::MAX,
            )
            .unwrap();
            assert_abs_diff_eq!(grads.0, grads_1.0, epsilon = 1e-12);
            assert_abs_diff_eq!(grads.1, grads_1.1, epsilon = 1e-12);
            assert_abs_diff_eq!(grads.2, grads_1.2, epsilon = 1e-12);
        }
    }

    #[test]
    fn query_blocks_cover_every_row_once_and_see_up_to_their_last_query() {
        let blocks: Vec<_> = query_blocks(150, 10, 64).collect();
        assert_eq!(blocks, [(0..64, 74), (64..128, 138), (128..150, 160)]);
        assert_eq!(query_blocks(0, 5, 64).count(), 0);
    }

    /// `(B, T, H_kv·D)` → `(B, T, H·D)`: each key/value head repeated for its query heads.
    fn repeat_kv(x: &Array3<f64>, n_heads: usize, n_kv_heads: usize, d: usize) -> Array3<f64> {
        let group = n_heads / n_kv_heads;
        let (b, t, _) = x.dim();
        Array3::from_shape_fn((b, t, n_heads * d), |(i, j, l)| {
            x[[i, j, (l / d / group) * d + l % d]]
        })
    }

    #[test]
    fn grouped_heads_equal_repeated_heads_and_sum_their_gradients() {
        // (B, T_q, T_k, H, H_kv, D), including multi-query (H_kv = 1) and fewer queries.
        for &(b, t_q, t_k, h, h_kv, d) in &[
            (2, 5, 5, 6, 2, 3),
            (1, 3, 7, 4, 1, 2),
            (2, 70, 70, 4, 2, 1),
            (1, 4, 4, 3, 3, 2),
        ] {
            let (q, _, _) = qkv(b, t_q, t_k, h * d);
            let (_, k, v) = qkv(b, t_q, t_k, h_kv * d);
            let (k_rep, v_rep) = (repeat_kv(&k, h, h_kv, d), repeat_kv(&v, h, h_kv, d));
            let (ctx, probs) =
                grouped_attention_forward(q.view(), k.view(), v.view(), h, h_kv).unwrap();
            let (ctx_rep, probs_rep) =
                attention_forward(q.view(), k_rep.view(), v_rep.view(), h).unwrap();
            assert_abs_diff_eq!(ctx, ctx_rep, epsilon = 1e-12);
            assert_abs_diff_eq!(probs, probs_rep, epsilon = 1e-12);
            let d_ctx = Array3::from_shape_fn(ctx.raw_dim(), |(i, j, l)| {
                ((i * 5 + j * 3 + l) as f64 * 0.29).cos()
            });
            let (dq, dk, dv) = grouped_attention_backward(
                q.view(),
                k.view(),
                v.view(),
                probs.view(),
                d_ctx.view(),
                h_kv,
            )
            .unwrap();
            let (dq_rep, dk_rep, dv_rep) = attention_backward(
                q.view(),
                k_rep.view(),
                v_rep.view(),
                probs_rep.view(),
                d_ctx.view(),
            )
            .unwrap();
            assert_abs_diff_eq!(dq, dq_rep, epsilon = 1e-12);
            // The gradient of a shared head is the sum over the query heads using it.
            let sum_groups = |g: &Array3<f64>| {
                let mut out = Array3::<f64>::zeros((b, t_k, h_kv * d));
                for ((i, j, l), x) in g.indexed_iter() {
                    out[[i, j, (l / d / (h / h_kv)) * d + l % d]] += x;
                }
                out
            };
            assert_abs_diff_eq!(dk, sum_groups(&dk_rep), epsilon = 1e-12);
            assert_abs_diff_eq!(dv, sum_groups(&dv_rep), epsilon = 1e-12);
        }
    }

    #[test]
    fn dropout_uses_the_masked_probabilities_in_every_block() {
        use crate::kernels::dropout::dropout_forward;
        let mask = DropoutMask::new(0.3, 11, 2).unwrap();
        for &(b, t_q, t_k, h, h_kv, d) in &[(2, 5, 5, 4, 2, 3), (1, 37, 70, 2, 1, 2)] {
            let (q, _, _) = qkv(b, t_q, t_k, h * d);
            let (_, k, v) = qkv(b, t_q, t_k, h_kv * d);
            let d_ctx = Array3::from_shape_fn((b, t_q, h * d), |(i, j, l)| {
                ((i * 5 + j * 3 + l) as f64 * 0.29).cos()
            });
            let (ctx, probs) =
                attention_dropout_forward(q.view(), k.view(), v.view(), h, h_kv, &mask).unwrap();
            // probs are the undropped ones; the context is (P ⊙ M)·V, M indexed over probs.
            let (_, plain) =
                grouped_attention_forward(q.view(), k.view(), v.view(), h, h_kv).unwrap();
            assert_eq!(probs, plain);
            let dropped = dropout_forward(probs.view(), &mask);
            assert!(
                dropped
                    .iter()
                    .zip(&probs)
                    .any(|(m, p)| *m == 0.0 && *p > 0.0)
            );
            for bi in 0..b {
                for hh in 0..h {
                    let g = hh / (h / h_kv);
                    let expected = dropped.slice(s![bi, hh, .., ..]).dot(&v.slice(s![
                        bi,
                        ..,
                        g * d..(g + 1) * d
                    ]));
                    let got = ctx.slice(s![bi, .., hh * d..(hh + 1) * d]);
                    assert_abs_diff_eq!(got, expected.view(), epsilon = 1e-12);
                }
            }
            // Blocks of 16 queries agree with one block, forward and backward.
            let one = forward_blocked(q.view(), k.view(), v.view(), h, h_kv, Some(&mask), 1 << 20)
                .unwrap();
            let small =
                forward_blocked(q.view(), k.view(), v.view(), h, h_kv, Some(&mask), 16).unwrap();
            assert_abs_diff_eq!(one.0, small.0, epsilon = 1e-12);
            let grads = |block| {
                backward_blocked(
                    q.view(),
                    k.view(),
                    v.view(),
                    probs.view(),
                    d_ctx.view(),
                    h_kv,
                    Some(&mask),
                    block,
                )
                .unwrap()
            };
            let (g1, g16) = (grads(1 << 20), grads(16));
            assert_abs_diff_eq!(g1.0, g16.0, epsilon = 1e-12);
            assert_abs_diff_eq!(g1.1, g16.1, epsilon = 1e-12);
            assert_abs_diff_eq!(g1.2, g16.2, epsilon = 1e-12);
        }
    }

    #[test]
    fn key_value_heads_must_divide_heads() {
        let (q, k, v) = qkv(1, 2, 2, 6);
        let err = grouped_attention_forward(q.view(), k.view(), v.view(), 3, 2).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        let err = grouped_attention_forward(q.view(), k.view(), v.view(), 3, 0).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        // Three heads of size 2 with one key/value head: k must be 2 wide, not 6.
        let err = grouped_attention_forward(q.view(), k.view(), v.view(), 3, 1).unwrap_err();
        assert!(
            matches!(err, Error::ShapeMismatch { what: "k", .. }),
            "{err}"
        );
    }

    #[test]
    fn heads_must_divide_width() {
        let (q, k, v) = qkv(1, 2, 2, 6);
        let err = attention_forward(q.view(), k.view(), v.view(), 4).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    }
}
