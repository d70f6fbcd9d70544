//! [`Block`]: one pre-LN transformer block.

use ndarray::Array3;
use rand::Rng;

use super::{Attention, LayerNorm, Mlp};
use crate::generate::LayerKv;
use crate::kernels::elementwise::add_assign;
use crate::param::{ParamPath, ParamVisitor, ParamVisitorMut};
use crate::{Float, Layer, Result};

/// A pre-LN transformer block, `(B, T, C)` → `(B, T, C)`:
///
/// `h = x + attn(ln1(x))`, then `y = h + mlp(ln2(h))`.
///
/// Parameters under `ln1.*`, `attn.*`, `ln2.*`, `mlp.*`.
///
/// # Example
///
/// ```
/// use baregpt::{layers::Block, Layer};
/// use ndarray::Array3;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(3);
/// let mut block = Block::<f32>::new(8, 2, 32, &mut rng)?;
/// let y = block.forward(&Array3::from_elem((2, 5, 8), 0.1))?;
/// let dx = block.backward(&Array3::ones(y.raw_dim()))?;
/// assert_eq!(dx.shape(), &[2, 5, 8]);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Block<F: Float> {
    ln1: LayerNorm<F>,
    attn: Attention<F>,
    ln2: LayerNorm<F>,
    mlp: Mlp<F>,
}

impl<F: Float> Block<F> {
    /// A block of width `c`, `n_heads` heads and MLP hidden width `hidden`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when `n_heads` does not divide `c`.
    pub fn new<R: Rng + ?Sized>(
        c: usize,
        n_heads: usize,
        hidden: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let attn = Attention::new(c, n_heads, rng)?;
        let mlp = Mlp::new(c, hidden, rng);
        Ok(Self::from_parts(
            LayerNorm::new(c),
            attn,
            LayerNorm::new(c),
            mlp,
        ))
    }

    /// A block from its four parts.
    pub fn from_parts(
        ln1: LayerNorm<F>,
        attn: Attention<F>,
        ln2: LayerNorm<F>,
        mlp: Mlp<F>,
    ) -> Self {
        Self {
            ln1,
            attn,
            ln2,
            mlp,
        }
    }

    /// The attention sub-layer.
    pub fn attention(&self) -> &Attention<F> {
        &self.attn
    }

    /// The forward pass of new positions against a key/value cache, without caching anything
    /// for backward (for generation): `x (B, T_new, C)` → `(B, T_new, C)`.
    ///
    /// The new positions follow the `kv.len()` already cached; their keys and values are
    /// appended to `kv`. See [`Attention::forward_incremental`].
    ///
    /// # Errors
    /// As [`Attention::forward_incremental`].
    pub fn forward_incremental(&self, x: &Array3<F>, kv: &mut LayerKv<F>) -> Result<Array3<F>> {
        let h = x + &self.attn.forward_incremental(&self.ln1.infer(x)?, kv)?;
        let y = &h + &self.mlp.infer(&self.ln2.infer(&h)?)?;
        Ok(y)
    }
}

impl<F: Float> Layer<F> for Block<F> {
    fn kind(&self) -> &'static str {
        "Block"
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        // Residuals are added in place into the branch outputs, which are fresh arrays.
        let mut h = self.attn.forward(&self.ln1.forward(x)?)?;
        add_assign(&mut h, x);
        let mut y = self.mlp.forward(&self.ln2.forward(&h)?)?;
        add_assign(&mut y, &h);
        Ok(y)
    }

    /// Each residual passes the gradient straight through and adds the branch's:
    /// `dh = dy + ln2ᵀ(mlpᵀ(dy))`, then `dx = dh + ln1ᵀ(attnᵀ(dh))`.
    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let mut dh = self.ln2.backward(&self.mlp.backward(dy)?)?;
        add_assign(&mut dh, dy);
        let mut dx = self.ln1.backward(&self.attn.backward(&dh)?)?;
        add_assign(&mut dx, &dh);
        Ok(dx)
    }

    fn visit_params(&self, path: &mut ParamPath, f: &mut ParamVisitor<'_, F>) {
        path.scoped("ln1", |p| self.ln1.visit_params(p, f));
        path.scoped("attn", |p| self.attn.visit_params(p, f));
        path.scoped("ln2", |p| self.ln2.visit_params(p, f));
        path.scoped("mlp", |p| self.mlp.visit_params(p, f));
    }

    fn visit_params_mut(&mut self, path: &mut ParamPath, f: &mut ParamVisitorMut<'_, F>) {
        path.scoped("ln1", |p| self.ln1.visit_params_mut(p, f));
        path.scoped("attn", |p| self.attn.visit_params_mut(p, f));
        path.scoped("ln2", |p| self.ln2.visit_params_mut(p, f));
        path.scoped("mlp", |p| self.mlp.visit_params_mut(p, f));
    }
}
