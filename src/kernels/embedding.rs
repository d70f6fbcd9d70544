//! Token plus learned absolute position embedding, and the token lookup alone.
//!
//! Shapes: `ids (B, T)`, token table `(V, C)`, position table `(T_max, C)` with `T ≤ T_max`,
//! output `(B, T, C)`: `y[b, t] = tok[ids[b, t]] + pos[t]`, or `y[b, t] = tok[ids[b, t]]`
//! without positions (a model whose positions enter elsewhere, e.g. rotary embeddings).

use ndarray::{Array1, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Zip, s};

use crate::error::check_shape;
use crate::{Error, Float, Result};

const KERNEL: &str = "embedding";

/// Checks ids against the vocabulary and the sequence length against the context.
pub(crate) fn check_ids(
    layer: &'static str,
    ids: ArrayView2<'_, usize>,
    vocab_size: usize,
    context: usize,
) -> Result<()> {
    let (_, t) = ids.dim();
    if t == 0 || t > context {
        return Err(Error::SequenceLength {
            layer,
            len: t,
            context,
        });
    }
    match ids.indexed_iter().find(|&(_, &id)| id >= vocab_size) {
        Some(((b, t), &id)) => Err(Error::TokenOutOfRange {
            layer,
            id,
            position: (b, t),
            vocab_size,
        }),
        None => Ok(()),
    }
}

/// Looks up `ids (B, T)` in `tok (V, C)` and adds `pos[0..T] (T, C)`; returns `(B, T, C)`.
///
/// # Errors
/// [`Error::SequenceLength`] when `T` is 0 or exceeds the position table;
/// [`Error::TokenOutOfRange`] for an id `≥ V`; [`Error::ShapeMismatch`] when the tables'
/// widths differ; [`Error::TooLarge`] when the output would exceed
/// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
pub fn embedding_forward<F: Float>(
    ids: ArrayView2<'_, usize>,
    tok: ArrayView2<'_, F>,
    pos: ArrayView2<'_, F>,
) -> Result<Array3<F>> {
    let (v, c) = tok.dim();
    check_shape(KERNEL, "pos", pos.shape(), &[None, Some(c)])?;
    check_ids(KERNEL, ids, v, pos.nrows())?;
    let (b, t) = ids.dim();
    crate::limits::check_alloc::<F>(KERNEL, "y", &[b, t, c])?;
    let mut y = super::recycle::array((b, t, c)); // every row is written below
    for ((bi, ti), &id) in ids.indexed_iter() {
        let mut row = y.slice_mut(s![bi, ti, ..]);
        Zip::from(&mut row)
            .and(tok.row(id))
            .and(pos.row(ti))
            .for_each(|y, &e, &p| *y = e + p);
    }
    Ok(y)
}

/// Backward of [`embedding_forward`]: **adds** into `d_tok (V, C)` and `d_pos (T_max, C)`.
///
/// `y[b, t] = tok[ids[b, t]] + pos[t]` is a sum of two row selections, so
///
/// * `d_tok[i] += Σ_{(b, t): ids[b, t] = i} dy[b, t]` — a scatter-add *(dtok)*
/// * `d_pos[t] += Σ_b dy[b, t]` for `t < T`; rows `T..T_max` get nothing — *(dpos)*
///
/// The position gradient always has the table's shape, whatever `T` is.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `dy` is not `(B, T, C)` or the gradient tables do not match;
/// the id checks of the forward.
pub fn embedding_backward<F: Float>(
    ids: ArrayView2<'_, usize>,
    dy: ArrayView3<'_, F>,
    d_tok: ArrayViewMut2<'_, F>,
    mut d_pos: ArrayViewMut2<'_, F>,
) -> Result<()> {
    let (v, c) = d_tok.dim();
    let (b, t) = ids.dim();
    check_shape(KERNEL, "dy", dy.shape(), &[Some(b), Some(t), Some(c)])?;
    check_shape(KERNEL, "d_pos", d_pos.shape(), &[None, Some(c)])?;
    check_ids(KERNEL, ids, v, d_pos.nrows())?;
    scatter_add(ids, dy, d_tok);
    // (dpos)
    // Σ_b dy[b] summed on its own first (so one call adds the same sum whatever `d_pos` holds),
    // in a recycled (T, C) buffer.
    let mut sum = super::recycle::zeros((t, c));
    for dy_b in dy.outer_iter() {
        sum += &dy_b;
    }
    let mut d_pos_used = d_pos.slice_mut(s![..t, ..]);
    d_pos_used += &sum;
    super::recycle::give(sum);
    Ok(())
}

/// *(dtok)*: `d_tok[i] += Σ_{(b, t): ids[b, t] = i} dy[b, t]`; shapes already checked.
fn scatter_add<F: Float>(
    ids: ArrayView2<'_, usize>,
    dy: ArrayView3<'_, F>,
    mut d_tok: ArrayViewMut2<'_, F>,
) {
    // (dtok): each id's rows are summed first and added to the table once, so the table
    // receives the same sum on every call and two backward passes give exactly twice one.
    let mut order: Vec<((usize, usize), usize)> =
        ids.indexed_iter().map(|(pos, &id)| (pos, id)).collect();
    order.sort_by_key(|&(_, id)| id);
    let mut sum = Array1::zeros(d_tok.ncols());
    for group in order.chunk_by(|a, b| a.1 == b.1) {
        sum.fill(F::zero());
        for &((bi, ti), _) in group {
            sum += &dy.slice(s![bi, ti, ..]);
        }
        let mut row = d_tok.row_mut(group[0].1);
        row += &sum;
    }
}

/// Looks up `ids (B, T)` in `tok (V, C)` alone; returns `(B, T, C)`, `y[b, t] = tok[ids[b, t]]`.
///
/// # Errors
/// [`Error::SequenceLength`] when `T` is 0; [`Error::TokenOutOfRange`] for an id `≥ V`;
/// [`Error::TooLarge`] when the output would exceed
/// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
pub fn token_embedding_forward<F: Float>(
    ids: ArrayView2<'_, usize>,
    tok: ArrayView2<'_, F>,
) -> Result<Array3<F>> {
    let (v, c) = tok.dim();
    check_ids(KERNEL, ids, v, usize::MAX)?;
    let (b, t) = ids.dim();
    crate::limits::check_alloc::<F>(KERNEL, "y", &[b, t, c])?;
    let mut y = super::recycle::array((b, t, c)); // every row is written below
    for ((bi, ti), &id) in ids.indexed_iter() {
        y.slice_mut(s![bi, ti, ..]).assign(&tok.row(id));
    }
    Ok(y)
}

/// Backward of [`token_embedding_forward`]: **adds** into `d_tok (V, C)`.
///
/// `y[b, t] = tok[ids[b, t]]` selects a row, so its gradient is the scatter-add
/// `d_tok[i] += Σ_{(b, t): ids[b, t] = i} dy[b, t]` — *(dtok)*, as in [`embedding_backward`].
///
/// # Errors
/// [`Error::ShapeMismatch`] when `dy` is not `(B, T, C)`; the id checks of the forward.
pub fn token_embedding_backward<F: Float>(
    ids: ArrayView2<'_, usize>,
    dy: ArrayView3<'_, F>,
    d_tok: ArrayViewMut2<'_, F>,
) -> Result<()> {
    let (v, c) = d_tok.dim();
    let (b, t) = ids.dim();
    check_shape(KERNEL, "dy", dy.shape(), &[Some(b), Some(t), Some(c)])?;
    check_ids(KERNEL, ids, v, usize::MAX)?;
    scatter_add(ids, dy, d_tok);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    #[test]
    fn scatter_add_accumulates_repeated_ids() {
        let tok = array![[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]];
        let pos = array![[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]];
        let ids = array![[2, 2]];
        let y = embedding_forward(ids.view(), tok.view(), pos.view()).unwrap();
        assert_eq!(y, array![[[2.1, 2.1], [2.2, 2.2]]]);
        let mut d_tok = Array2::zeros((3, 2));
        let mut d_pos = Array2::zeros((3, 2));
        let dy = array![[[1.0, 2.0], [3.0, 4.0]]];
        embedding_backward(ids.view(), dy.view(), d_tok.view_mut(), d_pos.view_mut()).unwrap();
        assert_eq!(d_tok, array![[0.0, 0.0], [0.0, 0.0], [4.0, 6.0]]);
        assert_eq!(d_pos, array![[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]);
        // The token lookup alone gives the same token gradient.
        let y = token_embedding_forward(ids.view(), tok.view()).unwrap();
        assert_eq!(y, array![[[2.0, 2.0], [2.0, 2.0]]]);
        let mut d_tok_only = Array2::zeros((3, 2));
        token_embedding_backward(ids.view(), dy.view(), d_tok_only.view_mut()).unwrap();
        assert_eq!(d_tok_only, d_tok);
    }

    #[test]
    fn sequence_longer_than_context_is_refused() {
        let tok = Array2::<f64>::zeros((3, 2));
        let pos = Array2::<f64>::zeros((2, 2));
        let err = embedding_forward(array![[0, 1, 2]].view(), tok.view(), pos.view()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "embedding: sequence length 3 is not in 1..=2"
        );
    }
}
