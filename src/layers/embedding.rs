//! [`Embedding`]: token plus learned position embeddings (or tokens alone), a layer with an
//! id input.

use ndarray::{Array2, Array3, s};
use rand::Rng;

use super::init::{check_matrix, check_positive, normal};
use crate::kernels::embedding::check_ids;
use crate::kernels::{
    embedding_backward, embedding_forward, token_embedding_backward, token_embedding_forward,
};
use crate::layer::{Cache, InferState};
use crate::param::{Param2, Params};
use crate::{Error, Float, Layer, Result, params};

const LAYER: &str = "Embedding";

/// Token and absolute-position embedding: ids `(B, T)` → `(B, T, C)`, `T ≤ context`.
///
/// `y[b, t] = tok[ids[b, t]] + pos[start + t]`, where `start` is 0 for a whole sequence and
/// the number of cached positions when inference continues a
/// [`KvCache`](crate::layer::KvCache). Parameters `tok (V, C)` and `pos (context, C)`, both
/// `N(0, 0.01²)` as in the original. [`Embedding::token_only`] has no position table
/// (`y[b, t] = tok[ids[b, t]]`, parameter `tok` only), for models whose positions enter
/// elsewhere (rotary embeddings in the attention); it still refuses `T > context`. Its input
/// is token ids, so it is a `Layer<F, Array2<usize>>` and its backward returns `()`.
///
/// # Example
///
/// ```
/// use baregpt::{layers::Embedding, prelude::*};
/// use ndarray::{array, Array3};
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(5);
/// let mut embed = Embedding::<f64>::new(10, 4, 8, &mut rng)?;
/// let y = embed.forward(&array![[1, 2, 3]])?;
/// assert_eq!(y.shape(), &[1, 3, 4]);
/// embed.backward(&Array3::ones((1, 3, 4)))?;
/// assert!(embed.forward(&array![[10]]).is_err()); // id out of range
///
/// let tokens = Embedding::<f64>::token_only(10, 4, 8, &mut rng)?;
/// assert_eq!(tokens.param_names(), ["tok"]);
/// let y = tokens.infer(&array![[7]])?;
/// assert_eq!(y.slice(ndarray::s![0, 0, ..]), tokens.token_table().value.row(7));
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Embedding<F: Float> {
    tok: Param2<F>,
    pos: Option<Param2<F>>,
    context: usize,
    ids: Cache<Array2<usize>>,
}

impl<F: Float> Params<F> for Embedding<F> {
    params!(F; tok, pos);
}

impl<F: Float> Embedding<F> {
    /// Standard deviation of the original's embedding initialisation.
    pub const INIT_STD: f64 = 0.01;

    /// Tables for `vocab_size` tokens of width `c` and `context` positions, drawn from `rng`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a size is zero; [`Error::TooLarge`] when a table would
    /// exceed [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
    pub fn new<R: Rng + ?Sized>(
        vocab_size: usize,
        c: usize,
        context: usize,
        rng: &mut R,
    ) -> Result<Self> {
        Self::build(vocab_size, c, context, true, rng)
    }

    /// A token table for `vocab_size` tokens of width `c`, drawn from `rng`, and no position
    /// table; sequences of up to `context` positions are accepted.
    ///
    /// # Errors
    /// As [`Embedding::new`].
    pub fn token_only<R: Rng + ?Sized>(
        vocab_size: usize,
        c: usize,
        context: usize,
        rng: &mut R,
    ) -> Result<Self> {
        Self::build(vocab_size, c, context, false, rng)
    }

    fn build<R: Rng + ?Sized>(
        vocab_size: usize,
        c: usize,
        context: usize,
        positions: bool,
        rng: &mut R,
    ) -> Result<Self> {
        check_positive(LAYER, "vocab_size", vocab_size)?;
        check_positive(LAYER, "the width", c)?;
        check_positive(LAYER, "context", context)?;
        check_matrix::<F>(LAYER, vocab_size, c)?;
        if positions {
            check_matrix::<F>(LAYER, context, c)?;
        }
        let tok = normal(vocab_size, c, Self::INIT_STD, rng);
        let pos = positions.then(|| Param2::new(normal(context, c, Self::INIT_STD, rng)));
        Ok(Self {
            tok: Param2::new(tok),
            pos,
            context,
            ids: Cache::new(),
        })
    }

    /// Whether there is a learned position table `pos`.
    pub fn has_positions(&self) -> bool {
        self.pos.is_some()
    }

    /// The vocabulary size `V`.
    pub fn vocab_size(&self) -> usize {
        self.tok.value.nrows()
    }

    /// The longest sequence accepted.
    pub fn context(&self) -> usize {
        self.context
    }

    /// The embedding width `C`.
    pub fn width(&self) -> usize {
        self.tok.value.ncols()
    }

    /// The token table `(V, C)`.
    pub fn token_table(&self) -> &Param2<F> {
        &self.tok
    }

    /// The token table `(V, C)`, mutably: for a head tied to it, whose backward adds into
    /// its gradient.
    pub(crate) fn token_table_mut(&mut self) -> &mut Param2<F> {
        &mut self.tok
    }

    /// The computation: `ids (B, T)` embedded at positions `start..start + T`.
    fn apply(&self, ids: &Array2<usize>, start: usize) -> Result<Array3<F>> {
        let t = ids.ncols();
        let end = start.saturating_add(t);
        if t == 0 || end > self.context() {
            return Err(Error::SequenceLength {
                layer: LAYER,
                len: end,
                context: self.context(),
            });
        }
        check_ids(LAYER, ids.view(), self.vocab_size(), t)?;
        match &self.pos {
            Some(pos) => embedding_forward(
                ids.view(),
                self.tok.value.view(),
                pos.value.slice(s![start..end, ..]),
            ),
            None => token_embedding_forward(ids.view(), self.tok.value.view()),
        }
    }
}

impl<F: Float> Layer<F, Array2<usize>> for Embedding<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, ids: &Array2<usize>) -> Result<Array3<F>> {
        // Forget the previous forward first: a failed one leaves nothing to backpropagate.
        self.ids.clear();
        let y = self.apply(ids, 0)?;
        self.ids.store(ids.clone(), y.dim());
        Ok(y)
    }

    fn infer_with(&self, ids: &Array2<usize>, state: &mut InferState<'_, F>) -> Result<Array3<F>> {
        if ids.ncols() == 0 {
            // Refused by `apply` with this layer's context in the message.
            return self.apply(ids, 0);
        }
        let positions = state.positions(LAYER, ids.ncols())?;
        self.apply(ids, positions.start)
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<()> {
        let ids = self.ids.get(LAYER, dy)?;
        match &mut self.pos {
            Some(pos) => embedding_backward(
                ids.view(),
                dy.view(),
                self.tok.grad.view_mut(),
                pos.grad.view_mut(),
            ),
            None => token_embedding_backward(ids.view(), dy.view(), self.tok.grad.view_mut()),
        }
    }
}
