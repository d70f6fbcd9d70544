//! [`Mlp`]: the position-wise feed-forward network `Linear → GELU → Linear`.

use ndarray::Array3;
use rand::Rng;

use super::{Gelu, Linear};
use crate::param::{ParamPath, ParamVisitor, ParamVisitorMut};
use crate::{Float, Layer, Result};

/// `y = proj(gelu(fc(x)))`: `(B, T, C)` → `(B, T, hidden)` → `(B, T, C)`, both linears with
/// bias.
///
/// Parameters: `fc.w (C, hidden)`, `fc.b (hidden)`, `proj.w (hidden, C)`, `proj.b (C)`. A GPT
/// usually uses `hidden = 4C`.
/// The backward is the chain rule through the three parts, in reverse.
///
/// # Example
///
/// ```
/// use baregpt::{layers::Mlp, Layer};
/// use ndarray::Array3;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(1);
/// let mut mlp = Mlp::<f64>::new(4, 16, &mut rng);
/// let y = mlp.forward(&Array3::ones((2, 3, 4)))?;
/// let dx = mlp.backward(&y)?;
/// assert_eq!(dx.shape(), &[2, 3, 4]);
/// assert_eq!(mlp.param_names(), ["fc.w", "fc.b", "proj.w", "proj.b"]);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Mlp<F: Float> {
    fc: Linear<F>,
    act: Gelu<F>,
    proj: Linear<F>,
}

impl<F: Float> Mlp<F> {
    /// A new MLP of width `c` and hidden width `hidden`, weights drawn from `rng`.
    pub fn new<R: Rng + ?Sized>(c: usize, hidden: usize, rng: &mut R) -> Self {
        Self::from_linears(
            Linear::new(c, hidden, true, rng),
            Linear::new(hidden, c, true, rng),
        )
    }

    /// An MLP from its two linears (`fc: C → H`, `proj: H → C`).
    pub fn from_linears(fc: Linear<F>, proj: Linear<F>) -> Self {
        Self {
            fc,
            act: Gelu::new(),
            proj,
        }
    }

    /// The forward pass without caching anything (for inference): `(B, T, C)` → `(B, T, C)`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the last axis is not `C`.
    pub fn infer(&self, x: &Array3<F>) -> Result<Array3<F>> {
        let h = self.fc.infer(x)?;
        self.proj.infer(&crate::kernels::gelu_forward(h.view()))
    }
}

impl<F: Float> Layer<F> for Mlp<F> {
    fn kind(&self) -> &'static str {
        "Mlp"
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        // The hidden activations are moved into the GELU's and proj's caches, not copied.
        let h = self.fc.forward(x)?;
        let a = self.act.forward_owned(h)?;
        self.proj.forward_owned(a)
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let da = self.proj.backward(dy)?;
        let dh = self.act.backward(&da)?;
        self.fc.backward(&dh)
    }

    fn visit_params(&self, path: &mut ParamPath, f: &mut ParamVisitor<'_, F>) {
        path.scoped("fc", |p| self.fc.visit_params(p, f));
        path.scoped("proj", |p| self.proj.visit_params(p, f));
    }

    fn visit_params_mut(&mut self, path: &mut ParamPath, f: &mut ParamVisitorMut<'_, F>) {
        path.scoped("fc", |p| self.fc.visit_params_mut(p, f));
        path.scoped("proj", |p| self.proj.visit_params_mut(p, f));
    }
}
