//! [`Gpt`] and its [`GptConfig`]: embeddings → pre-LN blocks → optional final LayerNorm →
//! linear head → cross-entropy.

use ndarray::{Array2, Array3};
use rand::Rng;

use crate::exec::in_pool_if_small;
use crate::generate::KvCache;
use crate::layers::{Block, Embedding, LayerNorm, Linear};
use crate::param::{ParamPath, ParamVisitor, ParamVisitorMut};
use crate::{CrossEntropy, Error, Float, Layer, Result};

const LAYER: &str = "Gpt";

/// The shape of a [`Gpt`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GptConfig {
    /// Number of token ids `V`.
    pub vocab_size: usize,
    /// Residual width `C`.
    pub d_model: usize,
    /// Attention heads `H`; must divide `d_model`.
    pub n_heads: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Longest sequence `T` (rows of the position table).
    pub context: usize,
    /// Hidden width of each block's MLP (usually `4·d_model`).
    pub mlp_hidden: usize,
    /// Whether a LayerNorm (`ln_f`) precedes the head.
    pub final_norm: bool,
}

impl GptConfig {
    /// The original BareGPT model: `d_model` 256, 4 heads, 2 layers, context 128, MLP 1024,
    /// no final LayerNorm. Its bugs are fixed here: LayerNorm is affine and trained, and any
    /// `T ≤ context` works.
    pub fn baregpt(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            d_model: 256,
            n_heads: 4,
            n_layers: 2,
            context: 128,
            mlp_hidden: 1024,
            final_norm: false,
        }
    }

    /// The `tiny` benchmark preset: `d_model` 64, 4 heads, 2 layers, context 32, with a final
    /// LayerNorm.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            d_model: 64,
            n_heads: 4,
            n_layers: 2,
            context: 32,
            mlp_hidden: 256,
            final_norm: true,
        }
    }

    /// The `char-6l` benchmark preset: `d_model` 384, 6 heads, 6 layers, context 256, final
    /// LayerNorm.
    pub fn char_6l(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            d_model: 384,
            n_heads: 6,
            n_layers: 6,
            context: 256,
            mlp_hidden: 1536,
            final_norm: true,
        }
    }

    /// The `gpt2-small` shape: vocabulary 50257, `d_model` 768, 12 heads, 12 layers, final
    /// LayerNorm, with the given context.
    pub fn gpt2_small(context: usize) -> Self {
        Self {
            vocab_size: 50257,
            d_model: 768,
            n_heads: 12,
            n_layers: 12,
            context,
            mlp_hidden: 3072,
            final_norm: true,
        }
    }

    /// Checks that every size is positive and the heads divide `d_model`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("context", self.context),
            ("mlp_hidden", self.mlp_hidden),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, n)| *n == 0) {
            return Err(Error::InvalidConfig {
                layer: LAYER,
                reason: format!("{name} must be positive"),
            });
        }
        if self.d_model % self.n_heads != 0 {
            return Err(Error::InvalidConfig {
                layer: LAYER,
                reason: format!(
                    "n_heads {} does not divide d_model {}",
                    self.n_heads, self.d_model
                ),
            });
        }
        Ok(())
    }
}

/// A GPT language model with hand-written backward.
///
/// `forward(ids (B, T)) → logits (B, T, V)`; [`Gpt::loss`] adds the mean cross-entropy and
/// [`Gpt::backward`] accumulates every parameter's gradient from it. Parameters are named
/// `embed.tok`, `embed.pos`, `blocks.{i}.{ln1,attn,ln2,mlp}.*`, `ln_f.*` and `head.{w,b}`.
///
/// `Gpt` is also a `Layer<F, Array2<usize>>`: [`Layer::backward`] takes `dL/dlogits` from a
/// loss of your own. (The inherent [`Gpt::backward`], with no argument, continues from
/// [`Gpt::loss`].)
///
/// # Example
///
/// ```
/// use baregpt::{Gpt, GptConfig, Layer};
/// use ndarray::array;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let config = GptConfig { vocab_size: 11, d_model: 8, n_heads: 2, n_layers: 1, context: 6,
///                          mlp_hidden: 32, final_norm: true };
/// let mut gpt = Gpt::<f32>::new(config, &mut rng)?;
/// let loss = gpt.loss(&array![[1, 2, 3]], &array![[2, 3, 4]])?;
/// assert!((loss - 11f32.ln()).abs() < 0.5);
/// gpt.backward()?;
/// assert_eq!(gpt.num_params(), gpt.config().param_count());
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Gpt<F: Float> {
    config: GptConfig,
    embed: Embedding<F>,
    blocks: Vec<Block<F>>,
    ln_f: Option<LayerNorm<F>>,
    head: Linear<F>,
    loss_head: CrossEntropy<F>,
}

impl GptConfig {
    /// The number of scalar parameters a [`Gpt`] of this shape has.
    pub fn param_count(&self) -> usize {
        let (v, c, h) = (self.vocab_size, self.d_model, self.mlp_hidden);
        let block = 2 * 2 * c + 4 * c * c + (c * h + h) + (h * c + c);
        (v + self.context) * c
            + self.n_layers * block
            + usize::from(self.final_norm) * 2 * c
            + c * v
            + v
    }
}

impl<F: Float> Gpt<F> {
    /// A new model with the original's initialisation (Glorot-uniform matrices, `N(0, 0.01²)`
    /// embeddings, zero biases, unit LayerNorm gains), drawn from `rng`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the config does not [validate](GptConfig::validate).
    pub fn new<R: Rng + ?Sized>(config: GptConfig, rng: &mut R) -> Result<Self> {
        config.validate()?;
        let embed = Embedding::new(config.vocab_size, config.d_model, config.context, rng);
        let blocks = (0..config.n_layers)
            .map(|_| Block::new(config.d_model, config.n_heads, config.mlp_hidden, rng))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = config.final_norm.then(|| LayerNorm::new(config.d_model));
        let head = Linear::new(config.d_model, config.vocab_size, true, rng);
        Ok(Self {
            config,
            embed,
            blocks,
            ln_f,
            head,
            loss_head: CrossEntropy::new(),
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// Runs the forward pass and returns the mean cross-entropy against `targets (B, T)`.
    ///
    /// # Errors
    /// The forward's errors; [`Error::ShapeMismatch`] when `targets` is not `(B, T)`;
    /// [`Error::TargetOutOfRange`] for a target `≥ V`.
    pub fn loss(&mut self, ids: &Array2<usize>, targets: &Array2<usize>) -> Result<F> {
        crate::error::check_shape(
            LAYER,
            "targets",
            targets.shape(),
            &[Some(ids.nrows()), Some(ids.ncols())],
        )?;
        let logits = self.forward(ids)?;
        self.loss_head.loss(&logits, targets)
    }

    /// Logits for new tokens that continue the sequence held in a key/value cache, without
    /// caching anything for backward (for generation): `ids (B, T_new)` →
    /// `logits (B, T_new, V)`.
    ///
    /// The new ids stand at positions `cache.len()..cache.len() + T_new`; their keys and values
    /// are appended to `cache`. The logits equal the last `T_new` rows of
    /// [`Layer::forward`] over the whole sequence, but only the new positions are computed: a
    /// token generated one at a time costs one position, not a re-run of the prefix. Start
    /// with an empty [`KvCache::new`] and pass the prompt (a *prefill*), then one id per step.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `cache` was made for another config;
    /// [`Error::ShapeMismatch`] when `ids` has another batch size than `cache`;
    /// [`Error::SequenceLength`] when `T_new` is zero or the sequence would outgrow the
    /// context; [`Error::TokenOutOfRange`] for an id `≥ V`. On error `cache` is unchanged.
    ///
    /// # Example
    ///
    /// ```
    /// use baregpt::{generate::KvCache, Gpt, GptConfig, Layer};
    /// use ndarray::{array, s};
    /// use rand::SeedableRng;
    ///
    /// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    /// let mut gpt = Gpt::<f64>::new(GptConfig::tiny(10), &mut rng)?;
    /// let mut cache = KvCache::new(gpt.config(), 1);
    /// gpt.forward_incremental(&array![[1, 2, 3]], &mut cache)?;      // prefill
    /// let next = gpt.forward_incremental(&array![[4]], &mut cache)?;  // one position
    /// let full = gpt.forward(&array![[1, 2, 3, 4]])?;
    /// let diff = (&next.slice(s![.., 0, ..]) - &full.slice(s![.., 3, ..])).mapv(f64::abs);
    /// assert!(diff.iter().all(|d| *d < 1e-12));
    /// # Ok::<(), baregpt::Error>(())
    /// ```
    pub fn forward_incremental(
        &self,
        ids: &Array2<usize>,
        cache: &mut KvCache<F>,
    ) -> Result<Array3<F>> {
        cache.check_config(&self.config)?;
        crate::error::check_shape(LAYER, "ids", ids.shape(), &[Some(cache.batch()), None])?;
        let start = cache.len();
        let t_new = ids.ncols();
        if t_new == 0 || start + t_new > self.config.context {
            return Err(Error::SequenceLength {
                layer: LAYER,
                len: start + t_new,
                context: self.config.context,
            });
        }
        let result = (|| {
            let mut x = self.embed.embed_at(ids, start)?;
            for (block, kv) in self.blocks.iter().zip(cache.layers_mut()) {
                x = block.forward_incremental(&x, kv)?;
            }
            if let Some(ln_f) = &self.ln_f {
                x = ln_f.infer(&x)?;
            }
            self.head.infer(&x)
        })();
        if result.is_err() {
            cache.truncate(start);
        }
        result
    }

    /// Backpropagates the last [`Gpt::loss`], adding into every parameter gradient.
    ///
    /// # Errors
    /// [`Error::BackwardBeforeForward`] when no loss has been computed.
    pub fn backward(&mut self) -> Result<()> {
        let d_logits = self.loss_head.backward_loss()?;
        Layer::backward(self, &d_logits)
    }
}

impl<F: Float> Layer<F, Array2<usize>> for Gpt<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, ids: &Array2<usize>) -> Result<Array3<F>> {
        in_pool_if_small(ids.len() * self.config.d_model, || {
            let mut x = self.embed.forward(ids)?;
            for block in &mut self.blocks {
                x = block.forward(&x)?;
            }
            if let Some(ln_f) = &mut self.ln_f {
                x = ln_f.forward(&x)?;
            }
            self.head.forward_owned(x)
        })
    }

    fn backward(&mut self, d_logits: &Array3<F>) -> Result<()> {
        let activations = d_logits.len() / d_logits.dim().2.max(1) * self.config.d_model;
        in_pool_if_small(activations, || {
            let mut d = self.head.backward(d_logits)?;
            if let Some(ln_f) = &mut self.ln_f {
                d = ln_f.backward(&d)?;
            }
            for block in self.blocks.iter_mut().rev() {
                d = block.backward(&d)?;
            }
            self.embed.backward(&d)
        })
    }

    fn visit_params(&self, path: &mut ParamPath, f: &mut ParamVisitor<'_, F>) {
        path.scoped("embed", |p| self.embed.visit_params(p, f));
        path.scoped("blocks", |p| {
            for (i, block) in self.blocks.iter().enumerate() {
                p.scoped_index(i, |p| block.visit_params(p, f));
            }
        });
        if let Some(ln_f) = &self.ln_f {
            path.scoped("ln_f", |p| ln_f.visit_params(p, f));
        }
        path.scoped("head", |p| self.head.visit_params(p, f));
    }

    fn visit_params_mut(&mut self, path: &mut ParamPath, f: &mut ParamVisitorMut<'_, F>) {
        path.scoped("embed", |p| self.embed.visit_params_mut(p, f));
        path.scoped("blocks", |p| {
            for (i, block) in self.blocks.iter_mut().enumerate() {
                p.scoped_index(i, |p| block.visit_params_mut(p, f));
            }
        });
        if let Some(ln_f) = &mut self.ln_f {
            path.scoped("ln_f", |p| ln_f.visit_params_mut(p, f));
        }
        path.scoped("head", |p| self.head.visit_params_mut(p, f));
    }
}
