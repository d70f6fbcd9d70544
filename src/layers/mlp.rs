//! [`Mlp`]: the position-wise feed-forward network `Linear → GELU → Linear`.

use ndarray::{Array2, Array3, ArrayView2};
use rand::Rng;

use super::Linear;
use crate::kernels::{gelu_backward, gelu_forward, recycle};
use crate::layer::rows::rows_reusing;
use crate::layer::{Cache, InferState, check_width, from_rows, rows};
use crate::param::Params;
use crate::{Float, Layer, Result, params};

const LAYER: &str = "Mlp";

/// What the backward needs, as rows `(N, ·)`.
#[derive(Clone, Debug)]
struct MlpCache<F> {
    /// The input `(N, C)`: `fc`'s input.
    x: Array2<F>,
    /// `h = fc(x) (N, hidden)`: GELU's input.
    h: Array2<F>,
    /// `a = gelu(h) (N, hidden)`: `proj`'s input.
    a: Array2<F>,
}

/// `y = proj(gelu(fc(x)))`: `(B, T, C)` → `(B, T, hidden)` → `(B, T, C)`, both linears with
/// bias.
///
/// Parameters: `fc.w (C, hidden)`, `fc.b (hidden)`, `proj.w (hidden, C)`, `proj.b (C)`. A GPT
/// usually uses `hidden = 4C`. The backward is the chain rule through the three parts in
/// reverse: `da = dy·proj.wᵀ`, `dh = gelu'(h) ⊙ da`, `dx = dh·fc.wᵀ`.
///
/// # Example
///
/// ```
/// use baregpt::{layers::Mlp, prelude::*};
/// use ndarray::Array3;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(1);
/// let mut mlp = Mlp::<f64>::new(4, 16, &mut rng)?;
/// let y = mlp.forward(&Array3::ones((2, 3, 4)))?;
/// let dx = mlp.backward(&y)?;
/// assert_eq!(dx.shape(), &[2, 3, 4]);
/// assert_eq!(mlp.param_names(), ["fc.w", "fc.b", "proj.w", "proj.b"]);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Mlp<F: Float> {
    fc: Linear<F>,
    proj: Linear<F>,
    cache: Cache<MlpCache<F>>,
}

impl<F: Float> Params<F> for Mlp<F> {
    params!(F; fc, proj);
}

impl<F: Float> Mlp<F> {
    /// A new MLP of width `c` and hidden width `hidden`, weights drawn from `rng`.
    ///
    /// # Errors
    /// As [`Linear::new`].
    pub fn new<R: Rng + ?Sized>(c: usize, hidden: usize, rng: &mut R) -> Result<Self> {
        let fc = Linear::new(c, hidden, true, rng)?;
        let proj = Linear::new(hidden, c, true, rng)?;
        Self::from_linears(fc, proj)
    }

    /// An MLP from its two linears (`fc: C → H`, `proj: H → C`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when the widths do not chain.
    pub fn from_linears(fc: Linear<F>, proj: Linear<F>) -> Result<Self> {
        if fc.c_out() != proj.c_in() || proj.c_out() != fc.c_in() {
            return Err(crate::Error::InvalidConfig {
                layer: LAYER,
                reason: format!(
                    "fc maps {} → {} and proj {} → {}: expected C → H and H → C",
                    fc.c_in(),
                    fc.c_out(),
                    proj.c_in(),
                    proj.c_out()
                ),
            });
        }
        Ok(Self {
            fc,
            proj,
            cache: Cache::new(),
        })
    }

    /// The model width `C`.
    pub fn width(&self) -> usize {
        self.fc.c_in()
    }

    /// The computation on rows `x (N, C)`: the output `(N, C)` and the hidden rows `h` and
    /// `a = gelu(h)`, `(N, hidden)`.
    fn apply(&self, x: ArrayView2<'_, F>) -> Result<(Array2<F>, Array2<F>, Array2<F>)> {
        let h = self.fc.forward_rows(x)?;
        let a = gelu_forward(h.view());
        let y = self.proj.forward_rows(a.view())?;
        Ok((y, h, a))
    }
}

impl<F: Float> Layer<F> for Mlp<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        // The previous forward is forgotten first (its buffers reused, the hidden rows
        // through the recycled ones): a failed forward leaves nothing to backpropagate.
        let buffer = self.cache.take().map(|old| {
            recycle::give(old.h);
            recycle::give(old.a);
            old.x
        });
        let bt = check_width(LAYER, "input", x.view(), self.width())?;
        let x = rows_reusing(buffer, x.view());
        let (y, h, a) = self.apply(x.view())?;
        let y = from_rows(LAYER, y, bt)?;
        self.cache.store(MlpCache { x, h, a }, y.dim());
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<F>, _: &mut InferState<'_, F>) -> Result<Array3<F>> {
        let bt = check_width(LAYER, "input", x.view(), self.width())?;
        from_rows(LAYER, self.apply(rows(x.view()).view())?.0, bt)
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let cache = self.cache.get(LAYER, dy)?;
        let (b, t, _) = dy.dim();
        let da = self
            .proj
            .backward_rows(cache.a.view(), rows(dy.view()).view())?;
        let dh = gelu_backward(cache.h.view(), da.view())?;
        let dx = self.fc.backward_rows(cache.x.view(), dh.view())?;
        for used in [da, dh] {
            recycle::give(used);
        }
        from_rows(LAYER, dx, (b, t))
    }
}
