//! [`Gpt`] and its [`GptConfig`]: embeddings → pre-norm blocks → optional final norm →
//! head → cross-entropy, each part chosen in the configuration ([`parts`]).

mod config;
mod dropout;
pub mod families;
mod head;
pub(crate) mod meta;
pub mod parts;
#[cfg(test)]
mod tests;

use ndarray::{Array2, Array3, Array4};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

pub use config::GptConfig;
pub use dropout::DropoutConfig;
pub use head::Head;

use crate::error::check_shape;
use crate::exec::in_pool_if_small;
use crate::kernels::{cross_entropy_forward, recycle};
use crate::layer::{Cache, DropoutMode, DropoutSite, InferState, KvCache};
use crate::layers::{Attention, Block, Dropout, Embedding};
use crate::param::{ParamMap, Params};
use crate::{CrossEntropy, Float, Layer, Result, params};

const LAYER: &str = "Gpt";

/// A GPT language model with hand-written backward.
///
/// `forward(ids (B, T)) → logits (B, T, V)`; [`Gpt::loss`] adds the mean cross-entropy and
/// [`Gpt::backward_loss`] accumulates every parameter's gradient from it. Parameters are
/// named `embed.tok`, `embed.pos` (learned positions only), `blocks.{i}.{ln1,attn,ln2,mlp}.*`,
/// `ln_f.*` and `head.*`. A tied head ([`HeadKind::Tied`](parts::HeadKind::Tied)) computes the logits from
/// `embed.tok` itself, so it has no weight of its own (at most `head.b`), and the table's
/// gradient is the sum of its two uses.
///
/// `Gpt` is also a `Layer<F, Array2<usize>>`: [`Layer::backward`] takes `dL/dlogits` from a
/// loss of your own, and [`Layer::infer`] (or [`KvCache::infer`], for incremental decoding)
/// computes logits from `&self`.
///
/// A backward always differentiates the last forward: a new forward forgets the loss
/// computed before it, and loading parameters ([`Params::import_params`], a checkpoint)
/// forgets both, so [`Gpt::backward_loss`] then returns
/// [`Error::BackwardBeforeForward`](crate::Error::BackwardBeforeForward) instead of mixing two passes.
///
/// # Dropout: training and evaluation
///
/// With dropout in the config ([`GptConfig::dropout`]), every training [`forward`](Layer::forward)
/// (and so [`Gpt::loss`]) drops: after the embeddings, and on each block's two branches
/// before their residual adds. Inference ([`Layer::infer`], [`KvCache::infer`],
/// [`Gpt::eval_loss`], generation) never drops. For an evaluation loss use
/// [`Gpt::eval_loss`], or switch dropout off around your own forwards:
///
/// ```
/// use baregpt::{DropoutConfig, Gpt, GptConfig, layer::DropoutMode, prelude::*};
/// use ndarray::array;
/// use rand::SeedableRng;
///
/// let config = GptConfig { dropout: DropoutConfig::uniform(0.2), ..GptConfig::with_sizes(11, 8, 2, 1, 6) };
/// let mut gpt = Gpt::<f64>::new(config, &mut rand::rngs::StdRng::seed_from_u64(0))?;
/// let (ids, targets) = (array![[1, 2, 3]], array![[2, 3, 4]]);
/// let train = gpt.loss(&ids, &targets)?;          // drops
/// gpt.set_dropout(DropoutMode::Off);               // evaluation: nothing is dropped
/// let eval = gpt.loss(&ids, &targets)?;
/// assert_eq!(eval, gpt.eval_loss(&ids, &targets)?); // the same as inference
/// assert_ne!(train, eval);
/// gpt.set_dropout(DropoutMode::Train);             // back to training
/// # Ok::<(), baregpt::Error>(())
/// ```
///
/// **Reproducibility.** Each dropout site's masks are a pure function of its seed and its
/// pass count ([`DropoutSite`]). The seeds are drawn from the `rng` given to [`Gpt::new`], so
/// the same rng and the same sequence of training forwards give the same masks, on any
/// number of threads. A forward or loss that fails draws no mask (the pass counts are set
/// back), so only successful training forwards count.
/// **Checkpoints do not save the seeds or pass counts**: a loaded model gets the seeds of
/// the rng it is built with and starts at pass 0, so a resumed run drops with other masks
/// than an uninterrupted one would (same statistics, not the same bits). To resume exactly,
/// save [`Gpt::dropout_sites`]' seeds and passes yourself and set them back through
/// [`Gpt::dropout_sites_mut`].
///
/// # Example
///
/// ```
/// use baregpt::{Gpt, GptConfig, prelude::*};
/// use ndarray::array;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let config = GptConfig { mlp_hidden: 32, ..GptConfig::with_sizes(11, 8, 2, 1, 6) };
/// let mut gpt = Gpt::<f32>::new(config, &mut rng)?;
/// let loss = gpt.loss(&array![[1, 2, 3]], &array![[2, 3, 4]])?;
/// assert!((loss - 11f32.ln()).abs() < 0.5);
/// gpt.backward_loss()?;
/// assert_eq!(gpt.num_params(), gpt.config().param_count());
/// # Ok::<(), baregpt::Error>(())
/// ```
pub struct Gpt<F: Float> {
    config: GptConfig,
    embed: Embedding<F>,
    blocks: Vec<Block<F>>,
    ln_f: Option<Box<dyn Layer<F>>>,
    head: Head<F>,
    /// Dropout after the embeddings, when its `p` is not 0.
    embed_drop: Option<Dropout<F>>,
    loss_head: CrossEntropy<F>,
    /// The logits' shape of the last forward that completed.
    done: Cache<()>,
}

impl<F: Float> std::fmt::Debug for Gpt<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(LAYER)
            .field("config", &self.config)
            .field("params", &self.num_params())
            .finish_non_exhaustive()
    }
}

impl<F: Float> Params<F> for Gpt<F> {
    params!(F; embed, blocks, ln_f, head);

    /// As the provided method, and the caches of the last forward and loss are forgotten.
    fn import_params(&mut self, map: &ParamMap<F>) -> Result<()> {
        crate::param::import(self, map)?;
        self.forget_passes();
        Ok(())
    }
}

impl<F: Float> Gpt<F> {
    /// A new model of `config`'s parts with the original's initialisation (Glorot-uniform
    /// matrices, `N(0, 0.01²)` embeddings, zero biases, unit norm gains), drawn from `rng`
    /// in a fixed order: the embedding tables, each block's weights, the head.
    ///
    /// Then the dropout seeds, each only when its probability is non-zero, so a model
    /// without dropout draws exactly what it drew before dropout existed: the embedding
    /// dropout's seed, then each block's two residual seeds (attention branch, MLP branch).
    /// [`DropoutConfig::attention`] is validated but not yet applied: the attention layer
    /// will take it, with its seeds drawn after these.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when the config does not [validate](GptConfig::validate) or
    /// a part cannot be built; [`Error::TooLarge`](crate::Error::TooLarge) when one table, or all parameters
    /// together, would exceed [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES). Nothing is
    /// allocated before these checks.
    pub fn new<R: Rng + ?Sized>(config: GptConfig, rng: &mut R) -> Result<Self> {
        config.validate()?;
        // All parameters together are one buffer when the model is checkpointed, so their
        // total is held to the per-allocation limit too (before any table is drawn).
        crate::limits::check_alloc::<F>(LAYER, "all parameters", &[config.param_count()])?;
        let c = config.d_model;
        let embed = config
            .positions
            .build_embedding(config.vocab_size, c, config.context, rng)?;
        let rope_theta = config.positions.rope_theta();
        let blocks = (0..config.n_layers)
            .map(|_| {
                let ln1 = config.norm.build(c)?;
                let attn_config = config.attention.layer_config(config.n_heads, rope_theta);
                let attn = Attention::with_config(c, attn_config, rng)?;
                let ln2 = config.norm.build(c)?;
                let mlp = config.mlp.build(c, config.mlp_hidden, rng)?;
                Ok((ln1, attn_config, attn, ln2, mlp))
            })
            .collect::<Result<Vec<_>>>()?;
        let ln_f = match config.final_norm {
            true => Some(config.norm.build(c)?),
            false => None,
        };
        let head = config.head.build(c, config.vocab_size, rng)?;
        // Dropout seeds come after every weight, and only for the placements that drop.
        let p = config.dropout;
        let embed_drop = match p.embed > 0.0 {
            true => Some(Dropout::new(p.embed, rng.random())?),
            false => None,
        };
        // Attention dropout lives inside each attention layer: with it on, each layer is
        // rebuilt with its seed (drawn here, after every weight) and its weights moved over.
        let blocks = blocks
            .into_iter()
            .map(|(ln1, attn_config, attn, ln2, mlp)| {
                let attn: Box<dyn Layer<F>> = match p.attention > 0.0 {
                    true => {
                        let with_dropout = attn_config.with_dropout(p.attention, rng.random());
                        let mut dropped =
                            Attention::with_config(c, with_dropout, &mut StdRng::seed_from_u64(0))?;
                        dropped.import_params(&attn.export_params())?;
                        Box::new(dropped)
                    }
                    false => Box::new(attn),
                };
                Ok(Block::from_parts(ln1, attn, ln2, mlp))
            })
            .collect::<Result<Vec<_>>>()?;
        let blocks = match p.residual > 0.0 {
            true => blocks
                .into_iter()
                .map(|block| block.with_residual_dropout(p.residual, [rng.random(), rng.random()]))
                .collect::<Result<Vec<_>>>()?,
            false => blocks,
        };
        Ok(Self {
            config,
            embed,
            blocks,
            ln_f,
            head,
            embed_drop,
            loss_head: CrossEntropy::new(),
            done: Cache::new(),
        })
    }

    /// The model's shape and parts.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// An empty key/value cache for `batch` sequences of up to `context` positions, for
    /// [`KvCache::infer`].
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when `batch` is zero.
    pub fn kv_cache(&self, batch: usize) -> Result<KvCache<F>> {
        KvCache::new(batch, self.config.context)
    }

    /// Runs the forward pass and returns the mean cross-entropy against `targets (B, T)`.
    ///
    /// # Errors
    /// The forward's errors; [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `targets` is not `(B, T)`;
    /// [`Error::TargetOutOfRange`](crate::Error::TargetOutOfRange) for a target `≥ V`.
    pub fn loss(&mut self, ids: &Array2<usize>, targets: &Array2<usize>) -> Result<F> {
        // A loss is a forward: it forgets the previous one before checking anything.
        self.forget_passes();
        check_shape(
            LAYER,
            "targets",
            targets.shape(),
            &[Some(ids.nrows()), Some(ids.ncols())],
        )?;
        let passes = self.dropout_passes();
        let logits = self.forward(ids)?;
        let loss = self.loss_head.loss(&logits, targets);
        recycle::give(logits);
        if loss.is_err() {
            // A refused loss draws no mask: the sites are set back to where they were.
            self.restore_passes(&passes);
        }
        loss
    }

    /// The mean cross-entropy of `ids (B, T)` against `targets (B, T)` by inference: nothing
    /// is dropped, whatever the [`DropoutMode`], and nothing is cached (a pending
    /// [`Gpt::backward_loss`] is not disturbed). The evaluation loss.
    ///
    /// # Errors
    /// As [`Layer::infer`]; [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `targets` is not `(B, T)`;
    /// [`Error::TargetOutOfRange`](crate::Error::TargetOutOfRange) for a target `≥ V`.
    pub fn eval_loss(&self, ids: &Array2<usize>, targets: &Array2<usize>) -> Result<F> {
        check_shape(
            LAYER,
            "targets",
            targets.shape(),
            &[Some(ids.nrows()), Some(ids.ncols())],
        )?;
        let logits = self.infer(ids)?;
        cross_entropy_forward(logits.view(), targets.view()).map(|(loss, _)| loss)
    }

    /// Every dropout site that drops (`p > 0`), in forward order: the embedding dropout's,
    /// then each block's attention-branch and MLP-branch sites. Empty without dropout.
    pub fn dropout_sites(&self) -> Vec<&DropoutSite> {
        let blocks = self.blocks.iter().flat_map(|b| b.residual_dropout());
        let embed = self.embed_drop.as_ref().map(Dropout::site);
        embed
            .into_iter()
            .chain(blocks)
            .filter(|site| site.p() > 0.0)
            .collect()
    }

    /// [`Gpt::dropout_sites`], mutably: to set seeds and pass counts (for example to resume
    /// a run's masks), not their probabilities, which the config fixes.
    pub fn dropout_sites_mut(&mut self) -> Vec<&mut DropoutSite> {
        let blocks = self
            .blocks
            .iter_mut()
            .flat_map(|b| b.residual_dropout_mut());
        let embed = self.embed_drop.as_mut().map(Dropout::site_mut);
        embed
            .into_iter()
            .chain(blocks)
            .filter(|site| site.p() > 0.0)
            .collect()
    }

    /// Backpropagates the last [`Gpt::loss`], adding into every parameter gradient.
    ///
    /// # Errors
    /// [`Error::BackwardBeforeForward`](crate::Error::BackwardBeforeForward) when no loss has been computed since the last
    /// forward or parameter import.
    pub fn backward_loss(&mut self) -> Result<()> {
        let d_logits = self.loss_head.backward_loss()?;
        let done = Layer::backward(self, &d_logits);
        recycle::give(d_logits);
        done
    }

    /// The attention probabilities of every block for one stateless forward of `ids (B, T)`,
    /// one `(B, H, T, T)` array per block in order, with the logits `(B, T, V)`. It runs the
    /// inference path: nothing is cached, training is not slowed, and any `&self` will do.
    ///
    /// ```
    /// use baregpt::{Gpt, GptConfig};
    /// use ndarray::{array, s};
    /// use rand::SeedableRng;
    ///
    /// let gpt = Gpt::<f64>::new(GptConfig::tiny(10), &mut rand::rngs::StdRng::seed_from_u64(0))?;
    /// let (_, maps) = gpt.attention_maps(&array![[1, 2, 3]])?;
    /// let last = &maps[maps.len() - 1];                     // (1, 4, 3, 3)
    /// let row = last.slice(s![0, 0, 2, ..]);                // head 0, query 2
    /// assert!((row.sum() - 1.0).abs() < 1e-12);
    /// assert_eq!(last[[0, 0, 0, 1]], 0.0);                  // causal: no look ahead
    /// # Ok::<(), baregpt::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Layer::infer`].
    pub fn attention_maps(&self, ids: &Array2<usize>) -> Result<(Array3<F>, Vec<Array4<F>>)> {
        let mut state = InferState::new().recording_attention();
        let logits = self.infer_with(ids, &mut state)?;
        Ok((logits, state.take_attention()))
    }

    /// The pass count of every dropout site, in [`Gpt::dropout_sites`] order.
    fn dropout_passes(&self) -> Vec<u64> {
        self.dropout_sites().iter().map(|s| s.passes()).collect()
    }

    /// Sets the pass counts back to `passes` (from [`Gpt::dropout_passes`]).
    fn restore_passes(&mut self, passes: &[u64]) {
        for (site, &n) in self.dropout_sites_mut().into_iter().zip(passes) {
            site.set_passes(n);
        }
    }

    /// Forgets the last forward and loss: the next backward is refused until a forward runs.
    pub fn forget_passes(&mut self) {
        self.done.clear();
        self.loss_head.clear();
    }

    /// The layers between the embedding and the head, in forward order: the blocks, `ln_f`.
    /// The head comes after them (it may read the embedding's token table).
    fn trunk(&self) -> impl DoubleEndedIterator<Item = &(dyn Layer<F> + 'static)> {
        let blocks = self.blocks.iter().map(|b| b as &(dyn Layer<F> + 'static));
        blocks.chain(self.ln_f.as_deref())
    }

    /// [`Gpt::trunk`], mutably.
    fn trunk_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut (dyn Layer<F> + 'static)> {
        let blocks = self
            .blocks
            .iter_mut()
            .map(|b| b as &mut (dyn Layer<F> + 'static));
        blocks.chain(self.ln_f.as_deref_mut())
    }

    /// Elements of one `(B, T, C)` activation, which decides where a pass runs.
    fn activations(&self, rows: usize) -> usize {
        rows.saturating_mul(self.config.d_model)
    }
}

impl<F: Float> Layer<F, Array2<usize>> for Gpt<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, ids: &Array2<usize>) -> Result<Array3<F>> {
        self.forget_passes();
        let passes = self.dropout_passes();
        let logits = in_pool_if_small(self.activations(ids.len()), || {
            let mut x = self.embed.forward(ids)?;
            if let Some(drop) = &mut self.embed_drop {
                let dropped = drop.forward(&x)?;
                recycle::replace(&mut x, dropped);
            }
            for layer in self.trunk_mut() {
                let next = layer.forward(&x)?;
                recycle::replace(&mut x, next);
            }
            let logits = self.head.forward(&x, self.embed.token_table());
            recycle::give(x);
            logits
        })
        .inspect_err(|_| self.restore_passes(&passes))?;
        self.done.store((), logits.dim());
        Ok(logits)
    }

    fn infer_with(&self, ids: &Array2<usize>, state: &mut InferState<'_, F>) -> Result<Array3<F>> {
        in_pool_if_small(self.activations(ids.len()), || {
            let mut x = self.embed.infer_with(ids, state)?;
            // The embedding dropout is the identity in inference (nothing to copy).
            for layer in self.trunk() {
                let next = layer.infer_with(&x, state)?;
                recycle::replace(&mut x, next);
            }
            let logits = self.head.infer_with(&x, state, self.embed.token_table());
            recycle::give(x);
            logits
        })
    }

    fn backward(&mut self, d_logits: &Array3<F>) -> Result<()> {
        self.done.get(LAYER, d_logits)?;
        let rows = d_logits.dim().0.saturating_mul(d_logits.dim().1);
        in_pool_if_small(self.activations(rows), || {
            // A tied head adds its share of the token table's gradient here, the embedding
            // its own at the end: the table's gradient is the sum of both uses.
            let mut d = self.head.backward(d_logits, self.embed.token_table_mut())?;
            for layer in self.trunk_mut().rev() {
                let next = layer.backward(&d)?;
                recycle::replace(&mut d, next);
            }
            if let Some(drop) = &mut self.embed_drop {
                let next = drop.backward(&d)?;
                recycle::replace(&mut d, next);
            }
            let done = self.embed.backward(&d);
            recycle::give(d);
            done
        })
    }

    /// Sets every dropout site of the model: [`DropoutMode::Off`] for evaluation forwards,
    /// [`DropoutMode::Train`] (the default) for training, [`DropoutMode::Hold`] for a
    /// gradient check.
    fn set_dropout(&mut self, mode: DropoutMode) {
        self.embed.set_dropout(mode);
        if let Some(drop) = &mut self.embed_drop {
            drop.set_dropout(mode);
        }
        for layer in self.trunk_mut() {
            layer.set_dropout(mode);
        }
        self.head.set_dropout(mode);
    }
}
