//! [`TiedHead`]: the output head that shares the token embedding table.

use ndarray::{Array1, Array2, Array3};

use super::init::check_positive;
use crate::error::check_shape;
use crate::kernels::{tied_head_backward, tied_head_forward};
use crate::layer::rows::rows_reusing;
use crate::layer::{Cache, check_width, from_rows, rows};
use crate::param::{Param1, Param2, Params};
use crate::{Float, Result, params};

const LAYER: &str = "TiedHead";

/// The logits from the token embedding table: `(B, T, C)` → `(B, T, V)`,
/// `logits = x·Eᵀ + b` with `E = embed.tok (V, C)`.
///
/// The table belongs to the [`Embedding`](super::Embedding), so this head does not own it:
/// its forward and inference borrow it, and its backward borrows it mutably and **adds**
/// `dyᵀ·x` into the table's gradient, beside the embedding's own scatter-add. The table is
/// therefore one parameter, `embed.tok`, counted, trained and saved once. The head's only
/// parameter of its own is the optional bias `b (V)`, zero-initialised (visited as `head.b`
/// in a [`Gpt`](crate::Gpt)). Derivation at [`tied_head_backward`].
///
/// It is not a [`Layer`](crate::Layer), whose methods take no second argument; a
/// [`Gpt`](crate::Gpt) built with [`HeadKind::Tied`](crate::gpt::parts::HeadKind::Tied) drives
/// it through [`Head`](crate::gpt::Head).
///
/// # Example
///
/// ```
/// use baregpt::layers::TiedHead;
/// use baregpt::param::Param2;
/// use baregpt::prelude::*;
/// use ndarray::{Array2, Array3};
///
/// let mut table = Param2::new(Array2::from_shape_fn((5, 3), |(v, c)| (v * 3 + c) as f64));
/// let mut head = TiedHead::<f64>::new(5, true)?;
/// let x = Array3::ones((2, 4, 3));
/// let logits = head.forward(&x, &table)?;
/// assert_eq!(logits.shape(), &[2, 4, 5]);
/// assert_eq!(logits[[0, 0, 1]], 3.0 + 4.0 + 5.0); // x · row 1 of the table
/// let dx = head.backward(&Array3::ones((2, 4, 5)), &mut table)?;
/// assert_eq!(dx.shape(), &[2, 4, 3]);
/// assert_eq!(table.grad[[0, 0]], 8.0); // Σ over the 8 positions of dy · x
/// assert_eq!(head.param_names(), ["b"]);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct TiedHead<F: Float> {
    b: Option<Param1<F>>,
    /// The last input as rows `(B·T, C)`.
    cache: Cache<Array2<F>>,
}

impl<F: Float> Params<F> for TiedHead<F> {
    params!(F; b);
}

impl<F: Float> TiedHead<F> {
    /// A head for a table of `vocab_size` tokens, with a zero bias `(vocab_size)` if `bias`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when `vocab_size` is zero;
    /// [`Error::TooLarge`](crate::Error::TooLarge) when the bias would exceed
    /// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
    pub fn new(vocab_size: usize, bias: bool) -> Result<Self> {
        check_positive(LAYER, "vocab_size", vocab_size)?;
        crate::limits::check_alloc::<F>(LAYER, "b", &[vocab_size])?;
        Ok(Self {
            b: bias.then(|| Param1::new(Array1::zeros(vocab_size))),
            cache: Cache::new(),
        })
    }

    /// The bias `(V)`, if the head has one.
    pub fn bias(&self) -> Option<&Param1<F>> {
        self.b.as_ref()
    }

    /// Checks that `table` is `(V, C)` for this head's `V` (when it has a bias, which fixes
    /// `V`) and a positive `C`; returns `C`.
    fn check_table(&self, table: &Param2<F>) -> Result<usize> {
        let expected_v = self.b.as_ref().map(|b| b.value.len());
        check_shape(LAYER, "table", table.value.shape(), &[expected_v, None])?;
        check_positive(LAYER, "the table's width", table.value.ncols())?;
        Ok(table.value.ncols())
    }

    /// The computation: `x (B, T, C)` → `(logits (B, T, V), x as rows (B·T, C))`.
    fn apply(
        &self,
        x: &Array3<F>,
        table: &Param2<F>,
        buffer: Option<Array2<F>>,
    ) -> Result<(Array3<F>, Array2<F>)> {
        let c = self.check_table(table)?;
        let (b, t) = check_width(LAYER, "input", x.view(), c)?;
        let x_rows = rows_reusing(buffer, x.view());
        let y = tied_head_forward(
            x_rows.view(),
            table.value.view(),
            self.b.as_ref().map(|b| b.value.view()),
        )?;
        Ok((from_rows(LAYER, y, (b, t))?, x_rows))
    }

    /// The logits `x·Eᵀ + b (B, T, V)` of `x (B, T, C)` with `table = E (V, C)`, caching `x`
    /// for [`TiedHead::backward`]. The previous forward is forgotten first.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `x`'s width is not the
    /// table's `C`, or the table has not the bias's `V` rows;
    /// [`Error::TooLarge`](crate::Error::TooLarge) when the logits would exceed the limit.
    pub fn forward(&mut self, x: &Array3<F>, table: &Param2<F>) -> Result<Array3<F>> {
        let buffer = self.cache.take();
        let (y, x_rows) = self.apply(x, table, buffer)?;
        self.cache.store(x_rows, y.dim());
        Ok(y)
    }

    /// As [`TiedHead::forward`], caching nothing (`&self`).
    ///
    /// # Errors
    /// As [`TiedHead::forward`].
    pub fn infer(&self, x: &Array3<F>, table: &Param2<F>) -> Result<Array3<F>> {
        self.apply(x, table, None).map(|(y, _)| y)
    }

    /// The backward of the last [`TiedHead::forward`] at `dy = dL/dlogits (B, T, V)`:
    /// **adds** `dyᵀ·x` into `table.grad` and the sums of `dy` into the bias gradient, and
    /// returns `dx = dy·E (B, T, C)`.
    ///
    /// # Errors
    /// [`Error::BackwardBeforeForward`](crate::Error::BackwardBeforeForward) without a
    /// forward; [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `dy` is not the
    /// forward's output shape or `table` not `(V, C)`. Then no gradient changes.
    pub fn backward(&mut self, dy: &Array3<F>, table: &mut Param2<F>) -> Result<Array3<F>> {
        let x_rows = self.cache.get(LAYER, dy)?;
        let (b, t, v) = dy.dim();
        check_shape(
            LAYER,
            "table",
            table.value.shape(),
            &[Some(v), Some(x_rows.ncols())],
        )?;
        let dx = tied_head_backward(
            x_rows.view(),
            table.value.view(),
            rows(dy.view()).view(),
            table.grad.view_mut(),
            self.b.as_mut().map(|b| b.grad.view_mut()),
        )?;
        from_rows(LAYER, dx, (b, t))
    }

    /// Forgets the last forward: the next backward is refused until a forward runs.
    pub fn clear(&mut self) {
        self.cache.clear();
    }
}
