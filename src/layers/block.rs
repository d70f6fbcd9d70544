//! [`Block`]: one pre-norm transformer block, assembled from four parts.

use ndarray::Array3;
use rand::Rng;

use super::{Attention, LayerNorm, Mlp};
use crate::kernels::elementwise::add_assign;
use crate::layer::{Cache, DropoutMode, InferState};
use crate::param::Params;
use crate::{Float, Layer, Result, params};

const LAYER: &str = "Block";

/// The four parts of a block, in the order the forward reaches them.
#[derive(Clone, Copy)]
enum Part {
    Ln1,
    Attn,
    Ln2,
    Mlp,
}

/// A pre-norm transformer block, `(B, T, C)` → `(B, T, C)`:
///
/// `h = x + attn(ln1(x))`, then `y = h + mlp(ln2(h))`.
///
/// The four parts are any float layers that keep the width: [`Block::new`] uses today's
/// BareGPT parts ([`LayerNorm`], [`Attention`], [`Mlp`]), [`Block::from_parts`] takes any
/// (the [`GptConfig`](crate::GptConfig) parts build them). Parameters under `ln1.*`,
/// `attn.*`, `ln2.*`, `mlp.*`, whatever the parts are.
///
/// # Example
///
/// ```
/// use baregpt::{layers::Block, prelude::*};
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
pub struct Block<F: Float> {
    ln1: Box<dyn Layer<F>>,
    attn: Box<dyn Layer<F>>,
    ln2: Box<dyn Layer<F>>,
    mlp: Box<dyn Layer<F>>,
    /// The output shape of the last forward that completed: every part's cache is from it.
    done: Cache<()>,
}

impl<F: Float> Params<F> for Block<F> {
    params!(F; ln1, attn, ln2, mlp);
}

impl<F: Float> std::fmt::Debug for Block<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(LAYER)
            .field("ln1", &self.ln1.kind())
            .field("attn", &self.attn.kind())
            .field("ln2", &self.ln2.kind())
            .field("mlp", &self.mlp.kind())
            .finish()
    }
}

impl<F: Float> Block<F> {
    /// A BareGPT block of width `c`, `n_heads` heads and MLP hidden width `hidden`:
    /// LayerNorm, [`Attention`], LayerNorm, [`Mlp`].
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when `n_heads` does not divide
    /// `c` or a size is zero.
    pub fn new<R: Rng + ?Sized>(
        c: usize,
        n_heads: usize,
        hidden: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let ln1 = LayerNorm::new(c)?;
        let attn = Attention::new(c, n_heads, rng)?;
        let ln2 = LayerNorm::new(c)?;
        let mlp = Mlp::new(c, hidden, rng)?;
        Ok(Self::from_parts(
            Box::new(ln1),
            Box::new(attn),
            Box::new(ln2),
            Box::new(mlp),
        ))
    }

    /// A block from its four parts: the two norms, the attention (or any sequence mixer) and
    /// the MLP (or any position-wise map). Each must map `(B, T, C)` to `(B, T, C)`; a part
    /// that does not is reported by the first forward.
    pub fn from_parts(
        ln1: Box<dyn Layer<F>>,
        attn: Box<dyn Layer<F>>,
        ln2: Box<dyn Layer<F>>,
        mlp: Box<dyn Layer<F>>,
    ) -> Self {
        Self {
            ln1,
            attn,
            ln2,
            mlp,
            done: Cache::new(),
        }
    }

    /// The attention part.
    pub fn attention(&self) -> &dyn Layer<F> {
        self.attn.as_ref()
    }

    fn part(&self, part: Part) -> &dyn Layer<F> {
        match part {
            Part::Ln1 => self.ln1.as_ref(),
            Part::Attn => self.attn.as_ref(),
            Part::Ln2 => self.ln2.as_ref(),
            Part::Mlp => self.mlp.as_ref(),
        }
    }

    fn part_mut(&mut self, part: Part) -> &mut dyn Layer<F> {
        match part {
            Part::Ln1 => self.ln1.as_mut(),
            Part::Attn => self.attn.as_mut(),
            Part::Ln2 => self.ln2.as_mut(),
            Part::Mlp => self.mlp.as_mut(),
        }
    }
}

/// The block's computation, written once for training and inference: `apply` runs one part.
/// Residuals are added in place into the branch outputs, which are fresh arrays.
fn residual_pass<F: Float>(
    x: &Array3<F>,
    mut apply: impl FnMut(Part, &Array3<F>) -> Result<Array3<F>>,
) -> Result<Array3<F>> {
    let normed = apply(Part::Ln1, x)?;
    let mut h = apply(Part::Attn, &normed)?;
    add_assign(&mut h, x);
    let normed = apply(Part::Ln2, &h)?;
    let mut y = apply(Part::Mlp, &normed)?;
    add_assign(&mut y, &h);
    Ok(y)
}

impl<F: Float> Layer<F> for Block<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        self.done.clear();
        let y = residual_pass(x, |part, x| self.part_mut(part).forward(x))?;
        self.done.store((), y.dim());
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<F>, state: &mut InferState<'_, F>) -> Result<Array3<F>> {
        residual_pass(x, |part, x| self.part(part).infer_with(x, state))
    }

    /// Each residual passes the gradient straight through and adds the branch's:
    /// `dh = dy + ln2ᵀ(mlpᵀ(dy))`, then `dx = dh + ln1ᵀ(attnᵀ(dh))`.
    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        self.done.get(LAYER, dy)?;
        let mut dh = self.ln2.backward(&self.mlp.backward(dy)?)?;
        add_assign(&mut dh, dy);
        let mut dx = self.ln1.backward(&self.attn.backward(&dh)?)?;
        add_assign(&mut dx, &dh);
        Ok(dx)
    }

    fn set_dropout(&mut self, mode: DropoutMode) {
        for part in [&mut self.ln1, &mut self.attn, &mut self.ln2, &mut self.mlp] {
            part.set_dropout(mode);
        }
    }
}
