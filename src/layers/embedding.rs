//! [`Embedding`]: token plus learned position embeddings, a layer with an id input.

use ndarray::{Array2, Array3};
use rand::Rng;

use super::util::{cached, check_dy, normal};
use crate::kernels::{embedding_backward, embedding_forward};
use crate::param::{Param2, ParamPath, ParamVisitor, ParamVisitorMut};
use crate::{Float, Layer, Result};

const LAYER: &str = "Embedding";

/// Token and absolute-position embedding: ids `(B, T)` → `(B, T, C)`, `T ≤ context`.
///
/// `y[b, t] = tok[ids[b, t]] + pos[t]`. Parameters `tok (V, C)` and `pos (context, C)`,
/// both `N(0, 0.01²)` as in the original. Its input is token ids, so it is a
/// `Layer<F, Array2<usize>>` and its backward returns `()`.
///
/// # Example
///
/// ```
/// use baregpt::{layers::Embedding, Layer};
/// use ndarray::{array, Array3};
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(5);
/// let mut embed = Embedding::<f64>::new(10, 4, 8, &mut rng);
/// let y = embed.forward(&array![[1, 2, 3]])?;
/// assert_eq!(y.shape(), &[1, 3, 4]);
/// embed.backward(&Array3::ones((1, 3, 4)))?;
/// assert!(embed.forward(&array![[10]]).is_err()); // id out of range
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Embedding<F: Float> {
    tok: Param2<F>,
    pos: Param2<F>,
    ids: Option<Array2<usize>>,
}

impl<F: Float> Embedding<F> {
    /// Standard deviation of the original's embedding initialisation.
    pub const INIT_STD: f64 = 0.01;

    /// Tables for `vocab_size` tokens of width `c` and `context` positions, drawn from `rng`.
    pub fn new<R: Rng + ?Sized>(vocab_size: usize, c: usize, context: usize, rng: &mut R) -> Self {
        let tok = normal(vocab_size, c, Self::INIT_STD, rng);
        let pos = normal(context, c, Self::INIT_STD, rng);
        Self {
            tok: Param2::new(tok),
            pos: Param2::new(pos),
            ids: None,
        }
    }

    /// The vocabulary size `V`.
    pub fn vocab_size(&self) -> usize {
        self.tok.value.nrows()
    }

    /// The longest sequence accepted.
    pub fn context(&self) -> usize {
        self.pos.value.nrows()
    }

    /// The embedding width `C`.
    pub fn width(&self) -> usize {
        self.tok.value.ncols()
    }

    /// The token table `(V, C)`.
    pub fn token_table(&self) -> &Param2<F> {
        &self.tok
    }

    /// Embeds `ids (B, T)` as if they stood at positions `start..start + T`, without caching.
    ///
    /// Used by incremental generation, where new tokens continue an existing sequence.
    ///
    /// # Errors
    /// As [`Layer::forward`], with the context counted from `start`.
    pub fn embed_at(&self, ids: &Array2<usize>, start: usize) -> Result<Array3<F>> {
        let pos = self
            .pos
            .value
            .slice(ndarray::s![start.min(self.context()).., ..]);
        embedding_forward(ids.view(), self.tok.value.view(), pos).map_err(|e| match e {
            crate::Error::SequenceLength { len, .. } => crate::Error::SequenceLength {
                layer: LAYER,
                len: start + len,
                context: self.context(),
            },
            other => other,
        })
    }
}

impl<F: Float> Layer<F, Array2<usize>> for Embedding<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, ids: &Array2<usize>) -> Result<Array3<F>> {
        super::util::check_ids_for(LAYER, ids, self.vocab_size(), self.context())?;
        let y = embedding_forward(ids.view(), self.tok.value.view(), self.pos.value.view())?;
        self.ids = Some(ids.clone());
        Ok(y)
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<()> {
        let ids = cached(LAYER, &self.ids)?;
        let (b, t) = ids.dim();
        check_dy(LAYER, dy, (b, t, self.width()))?;
        embedding_backward(
            ids.view(),
            dy.view(),
            self.tok.grad.view_mut(),
            self.pos.grad.view_mut(),
        )
    }

    fn visit_params(&self, path: &mut ParamPath, f: &mut ParamVisitor<'_, F>) {
        self.tok.visit("tok", path, f);
        self.pos.visit("pos", path, f);
    }

    fn visit_params_mut(&mut self, path: &mut ParamPath, f: &mut ParamVisitorMut<'_, F>) {
        self.tok.visit_mut("tok", path, f);
        self.pos.visit_mut("pos", path, f);
    }
}
