//! [`Block`]: one pre-norm transformer block, assembled from four parts.

use std::borrow::Cow;

use ndarray::Array3;
use rand::Rng;

use super::{Attention, LayerNorm, Mlp};
use crate::kernels::DropoutMask;
use crate::kernels::elementwise::add_assign;
use crate::kernels::recycle;
use crate::layer::{Cache, DropoutMode, DropoutSite, InferState};
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
/// With residual dropout ([`Block::with_residual_dropout`], GPT-2's `resid_pdrop`), each
/// branch's output is dropped before it is added in training forwards:
/// `h = x + m₁ ⊙ attn(ln1(x))`, `y = h + m₂ ⊙ mlp(ln2(h))`, with `m₁`, `m₂` the masks of
/// the block's two [`DropoutSite`]s (see [`Dropout`](super::Dropout)); inference never drops.
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
    /// The residual dropout of the attention branch and of the MLP branch (`p = 0`: none).
    drop: [DropoutSite; 2],
    /// The branch masks and output shape of the last forward that completed: every part's
    /// cache is from it.
    done: Cache<Masks>,
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
            .field("residual_dropout", &self.drop[0].p())
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
            drop: [Self::no_dropout(), Self::no_dropout()],
            done: Cache::new(),
        }
    }

    /// A site that never drops.
    fn no_dropout() -> DropoutSite {
        // p = 0 is a valid probability; the fallback is never taken.
        DropoutSite::new(0.0, 0).unwrap_or_else(|_| unreachable!("p = 0 is valid"))
    }

    /// The block with residual dropout: each branch's output (attention, then MLP) is
    /// dropped with probability `p` before its residual add, in training forwards. `seeds`
    /// seed the two branches' masks, in that order.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) unless `0 ≤ p < 1`.
    ///
    /// ```
    /// use baregpt::{layers::Block, prelude::*};
    /// use ndarray::Array3;
    /// use rand::SeedableRng;
    ///
    /// let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    /// let mut block = Block::<f64>::new(8, 2, 32, &mut rng)?.with_residual_dropout(0.1, [1, 2])?;
    /// let x = Array3::from_shape_fn((2, 5, 8), |(b, t, c)| ((b * 40 + t * 8 + c) as f64).sin());
    /// let y = block.forward(&x)?;
    /// assert_ne!(y, block.infer(&x)?); // training drops, inference does not
    /// let dx = block.backward(&Array3::ones(y.raw_dim()))?; // with the same masks
    /// assert_eq!(dx.shape(), &[2, 5, 8]);
    /// # Ok::<(), baregpt::Error>(())
    /// ```
    pub fn with_residual_dropout(mut self, p: f64, seeds: [u64; 2]) -> Result<Self> {
        let [a, m] = seeds;
        self.drop = [DropoutSite::new(p, a)?, DropoutSite::new(p, m)?];
        Ok(self)
    }

    /// The residual dropout sites of the attention and MLP branches.
    pub fn residual_dropout(&self) -> &[DropoutSite; 2] {
        &self.drop
    }

    /// The residual dropout sites, mutably (to set their seeds or pass counts).
    pub fn residual_dropout_mut(&mut self) -> &mut [DropoutSite; 2] {
        &mut self.drop
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

/// The masks of the attention and MLP branches in one forward (`None`: not dropped).
type Masks = [Option<DropoutMask>; 2];

/// The block's computation, written once for training and inference: `apply` runs one part,
/// `masks` drop the branch outputs (none in inference). The masks and the residuals are
/// applied in place to the branch outputs, which are fresh arrays; the intermediates are
/// [recycled](crate::kernels::recycle) once used.
fn residual_pass<F: Float>(
    x: &Array3<F>,
    masks: &Masks,
    mut apply: impl FnMut(Part, &Array3<F>) -> Result<Array3<F>>,
) -> Result<Array3<F>> {
    let [attn_mask, mlp_mask] = masks;
    let normed = apply(Part::Ln1, x)?;
    let mut h = apply(Part::Attn, &normed)?;
    recycle::give(normed);
    if let Some(mask) = attn_mask {
        mask.apply_in_place(h.view_mut(), 0);
    }
    add_assign(&mut h, x);
    let normed = apply(Part::Ln2, &h)?;
    let mut y = apply(Part::Mlp, &normed)?;
    recycle::give(normed);
    if let Some(mask) = mlp_mask {
        mask.apply_in_place(y.view_mut(), 0);
    }
    add_assign(&mut y, &h);
    recycle::give(h);
    Ok(y)
}

/// `dy` times the branch's mask, or `dy` itself when the branch was not dropped.
fn masked<'a, F: Float>(dy: &'a Array3<F>, mask: Option<&DropoutMask>) -> Cow<'a, Array3<F>> {
    match mask {
        Some(mask) => {
            let mut d = dy.clone();
            mask.apply_in_place(d.view_mut(), 0); // m ⊙ dy
            Cow::Owned(d)
        }
        None => Cow::Borrowed(dy),
    }
}

impl<F: Float> Layer<F> for Block<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        self.done.clear();
        // The masks are drawn only once the pass has succeeded: a failed forward leaves the
        // sites' pass counts as they were.
        let masks = self.drop.each_ref().map(DropoutSite::peek_mask);
        let y = residual_pass(x, &masks, |part, x| self.part_mut(part).forward(x))?;
        for site in &mut self.drop {
            site.next_mask();
        }
        self.done.store(masks, y.dim());
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<F>, state: &mut InferState<'_, F>) -> Result<Array3<F>> {
        residual_pass(x, &[None, None], |part, x| {
            self.part(part).infer_with(x, state)
        })
    }

    /// Each residual passes the gradient straight through and adds the branch's, which is
    /// masked first when the branch was dropped (`m ⊙ ·`, `m = 1` without dropout):
    /// `dh = dy + ln2ᵀ(mlpᵀ(m₂ ⊙ dy))`, then `dx = dh + ln1ᵀ(attnᵀ(m₁ ⊙ dh))`.
    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let [attn_mask, mlp_mask] = *self.done.get(LAYER, dy)?;
        let d_mlp = self.mlp.backward(&masked(dy, mlp_mask.as_ref()))?;
        let mut dh = self.ln2.backward(&d_mlp)?;
        recycle::give(d_mlp);
        add_assign(&mut dh, dy); // (dh)
        let d_attn = self.attn.backward(&masked(&dh, attn_mask.as_ref()))?;
        let mut dx = self.ln1.backward(&d_attn)?;
        recycle::give(d_attn);
        add_assign(&mut dx, &dh); // (dx)
        recycle::give(dh);
        Ok(dx)
    }

    fn set_dropout(&mut self, mode: DropoutMode) {
        for site in &mut self.drop {
            site.set_mode(mode);
        }
        for part in [&mut self.ln1, &mut self.attn, &mut self.ln2, &mut self.mlp] {
            part.set_dropout(mode);
        }
    }
}
