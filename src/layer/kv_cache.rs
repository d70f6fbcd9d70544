//! Inference state: [`InferState`], which a stateless pass or an incremental decode threads
//! through the layers, and the key/value cache it may carry ([`KvCache`], one [`LayerKv`] per
//! attention layer).
//!
//! # How a cached pass works
//!
//! [`KvCache::infer`] runs a model's [`Layer::infer_with`] on new inputs that continue the
//! sequence already in the cache. Layers that need absolute positions (a position table,
//! rotary embeddings) ask the state with [`InferState::positions`]; each attention layer
//! takes the next [`LayerKv`] with [`InferState::next_kv`], in the order the pass reaches
//! them, appends its new keys and values there, and attends over all of them. Composites
//! only pass the state on. When the pass succeeds the cache's length advances by the new
//! positions; when it fails every slot is cut back, so the cache is as it was.

use ndarray::{Array3, Array4, ArrayView3, s};

use super::{Layer, LayerInput};
use crate::{Error, Float, Result};

const CACHE: &str = "KvCache";

/// The keys and values of one attention layer: two buffers `(B, capacity, C_kv)` of which
/// the first `len` positions are filled.
#[derive(Clone, Debug)]
pub struct LayerKv<F> {
    keys: Array3<F>,
    values: Array3<F>,
    len: usize,
}

impl<F: Float> LayerKv<F> {
    fn new(batch: usize, capacity: usize, width: usize) -> Result<Self> {
        crate::limits::check_alloc::<F>(CACHE, "keys", &[batch, capacity, width])?;
        Ok(Self {
            keys: Array3::zeros((batch, capacity, width)),
            values: Array3::zeros((batch, capacity, width)),
            len: 0,
        })
    }

    /// The number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The batch size `B`.
    pub fn batch(&self) -> usize {
        self.keys.dim().0
    }

    /// The most positions the slot can hold.
    pub fn capacity(&self) -> usize {
        self.keys.dim().1
    }

    /// The width `C_kv` of keys and values.
    pub fn width(&self) -> usize {
        self.keys.dim().2
    }

    /// The cached keys `(B, len, C_kv)`.
    pub fn keys(&self) -> ArrayView3<'_, F> {
        self.keys.slice(s![.., ..self.len, ..])
    }

    /// The cached values `(B, len, C_kv)`.
    pub fn values(&self) -> ArrayView3<'_, F> {
        self.values.slice(s![.., ..self.len, ..])
    }

    /// Writes `keys` and `values` `(B, T_new, C_kv)` at positions `len..len + T_new` and
    /// returns all keys and values so far, `(B, len + T_new, C_kv)` each.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the new keys or values are not `(B, *, C_kv)` or differ
    /// in shape; [`Error::SequenceLength`] when they do not fit. On error nothing changes.
    pub fn append(
        &mut self,
        keys: ArrayView3<'_, F>,
        values: ArrayView3<'_, F>,
    ) -> Result<(ArrayView3<'_, F>, ArrayView3<'_, F>)> {
        let expected = [Some(self.batch()), None, Some(self.width())];
        crate::error::check_shape(CACHE, "new keys", keys.shape(), &expected)?;
        crate::error::check_shape(CACHE, "new values", values.shape(), &expected)?;
        crate::error::check_shape(
            CACHE,
            "new values",
            values.shape(),
            &keys.shape().iter().map(|&n| Some(n)).collect::<Vec<_>>(),
        )?;
        let end = self.len + keys.dim().1;
        if end > self.capacity() {
            return Err(Error::SequenceLength {
                layer: CACHE,
                len: end,
                context: self.capacity(),
            });
        }
        self.keys.slice_mut(s![.., self.len..end, ..]).assign(&keys);
        self.values
            .slice_mut(s![.., self.len..end, ..])
            .assign(&values);
        self.len = end;
        Ok((
            self.keys.slice(s![.., ..end, ..]),
            self.values.slice(s![.., ..end, ..]),
        ))
    }

    /// Forgets the positions from `len` on.
    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// The key/value cache of a model: one [`LayerKv`] per attention layer, in the order a pass
/// reaches them, all holding the same positions.
///
/// It knows nothing of the model that fills it: slots are made as the first pass reaches
/// each attention layer (with that layer's key width). A later pass must reach the same
/// number of attention layers.
///
/// # Example
///
/// ```
/// use baregpt::{Gpt, GptConfig, layer::KvCache, prelude::*};
/// use ndarray::{array, s};
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let gpt = Gpt::<f64>::new(GptConfig::tiny(10), &mut rng)?;
/// let mut cache = KvCache::new(1, gpt.config().context)?;
/// cache.infer(&gpt, &array![[1, 2, 3]])?;              // prefill
/// let next = cache.infer(&gpt, &array![[4]])?;         // one position
/// let full = gpt.infer(&array![[1, 2, 3, 4]])?;
/// let diff = (&next.slice(s![.., 0, ..]) - &full.slice(s![.., 3, ..])).mapv(f64::abs);
/// assert!(diff.iter().all(|d| *d < 1e-12));
/// assert_eq!(cache.len(), 4);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct KvCache<F> {
    layers: Vec<LayerKv<F>>,
    batch: usize,
    capacity: usize,
    /// Positions held by every slot after the last successful pass.
    len: usize,
}

impl<F: Float> KvCache<F> {
    /// An empty cache for `batch` sequences of up to `capacity` positions (a model's
    /// context). Memory for each attention layer is allocated when a pass first reaches it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `batch` or `capacity` is zero; [`Error::TooLarge`] when
    /// even one layer's keys of width 1 would exceed
    /// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES) (the slots, made by the first pass,
    /// are checked again with their real width).
    pub fn new(batch: usize, capacity: usize) -> Result<Self> {
        if batch == 0 || capacity == 0 {
            return Err(Error::InvalidConfig {
                layer: CACHE,
                reason: format!("batch {batch} and capacity {capacity} must be positive"),
            });
        }
        crate::limits::check_alloc::<F>(CACHE, "keys", &[batch, capacity, 1])?;
        Ok(Self {
            layers: Vec::new(),
            batch,
            capacity,
            len: 0,
        })
    }

    /// The number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The batch size `B`.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The most positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every cached position (keeping the memory).
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Forgets the positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        for layer in &mut self.layers {
            layer.truncate(self.len);
        }
    }

    /// The per-attention-layer slots, in pass order.
    pub fn layers(&self) -> &[LayerKv<F>] {
        &self.layers
    }

    /// Runs `model` on `x`, new inputs `(B, T_new, …)` at positions
    /// `len()..len() + T_new`, attending over everything cached; returns the new positions'
    /// outputs and keeps their keys and values. The output equals the last `T_new` positions
    /// of [`Layer::infer`] over the whole sequence.
    ///
    /// # Errors
    /// The model's errors, [`Error::SequenceLength`] when the sequence would outgrow the
    /// capacity (or the model's context), [`Error::ShapeMismatch`] for another batch size,
    /// [`Error::InvalidConfig`] when the cache was filled by a model with another number of
    /// attention layers. On error the cache is unchanged.
    pub fn infer<X, L>(&mut self, model: &L, x: &X) -> Result<Array3<F>>
    where
        X: LayerInput<F>,
        L: Layer<F, X> + ?Sized,
    {
        self.run(model, x, None).map(|(y, _)| y)
    }

    /// [`KvCache::infer`], also returning every attention layer's probabilities for the new
    /// positions, `(B, H, T_new, len() + T_new)` each, in pass order (see
    /// [`InferState::recording_attention`]).
    ///
    /// # Errors
    /// As [`KvCache::infer`].
    pub fn infer_recording<X, L>(&mut self, model: &L, x: &X) -> Result<(Array3<F>, Vec<Array4<F>>)>
    where
        X: LayerInput<F>,
        L: Layer<F, X> + ?Sized,
    {
        self.run(model, x, Some(Vec::new()))
    }

    /// One pass with this cache in the state; commits on success, rolls back on error.
    fn run<X, L>(
        &mut self,
        model: &L,
        x: &X,
        attention: Option<Vec<Array4<F>>>,
    ) -> Result<(Array3<F>, Vec<Array4<F>>)>
    where
        X: LayerInput<F>,
        L: Layer<F, X> + ?Sized,
    {
        let start = self.len;
        let slots_before = self.layers.len();
        let mut state = InferState {
            cache: Some(self),
            cursor: 0,
            end: None,
            attention,
        };
        let result = model.infer_with(x, &mut state);
        let (cursor, end) = (state.cursor, state.end);
        let attention = state.attention.take().unwrap_or_default();
        let outcome = result.and_then(|y| {
            let end = end.unwrap_or(start);
            if slots_before > 0 && cursor != slots_before {
                return Err(Error::InvalidConfig {
                    layer: CACHE,
                    reason: format!(
                        "the cache holds {slots_before} attention layers but this pass used {cursor}"
                    ),
                });
            }
            if let Some(slot) = self.layers[..cursor].iter().find(|l| l.len() != end) {
                return Err(Error::InvalidConfig {
                    layer: CACHE,
                    reason: format!(
                        "an attention layer cached {} positions where the pass had {end}",
                        slot.len()
                    ),
                });
            }
            Ok((y, end))
        });
        match outcome {
            Ok((y, end)) => {
                self.len = end;
                Ok((y, attention))
            }
            Err(e) => {
                if slots_before == 0 {
                    // The slots this failed first pass made are dropped with it.
                    self.layers.clear();
                }
                self.truncate(start);
                Err(e)
            }
        }
    }
}

/// What inference threads through the layers: nothing for a whole sequence from position 0
/// ([`InferState::new`]), or a [`KvCache`] to continue (made by [`KvCache::infer`]); and,
/// when asked, a record of every attention layer's probabilities.
///
/// A layer's [`Layer::infer_with`] passes it on to its parts unchanged; only layers that
/// need positions, keep keys and values or have attention probabilities call its methods.
///
/// ```
/// use baregpt::{Gpt, GptConfig, layer::InferState, prelude::*};
/// use ndarray::array;
/// use rand::SeedableRng;
///
/// let gpt = Gpt::<f64>::new(GptConfig::tiny(10), &mut rand::rngs::StdRng::seed_from_u64(0))?;
/// let mut state = InferState::new().recording_attention();
/// gpt.infer_with(&array![[1, 2, 3]], &mut state)?;
/// let maps = state.take_attention(); // one (B, H, T, T) array per block
/// assert_eq!(maps.len(), 2);
/// assert_eq!(maps[1].shape(), &[1, 4, 3, 3]);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Debug)]
pub struct InferState<'c, F> {
    cache: Option<&'c mut KvCache<F>>,
    /// The next attention slot to hand out.
    cursor: usize,
    /// The end position claimed by this pass, once a layer asked.
    end: Option<usize>,
    /// The attention probabilities recorded so far, when recording.
    attention: Option<Vec<Array4<F>>>,
}

impl<F> Default for InferState<'_, F> {
    fn default() -> Self {
        Self {
            cache: None,
            cursor: 0,
            end: None,
            attention: None,
        }
    }
}

impl<F: Float> InferState<'_, F> {
    /// The state of a stateless pass over a whole sequence, from position 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also record every attention layer's probabilities in this pass (opt-in: nothing is
    /// kept otherwise, and training's `forward` never records).
    #[must_use]
    pub fn recording_attention(mut self) -> Self {
        self.attention = Some(Vec::new());
        self
    }

    /// Whether attention probabilities are being recorded.
    pub fn is_recording_attention(&self) -> bool {
        self.attention.is_some()
    }

    /// Records one attention layer's probabilities `(B, H, T_q, T_k)`, when recording
    /// (otherwise drops them). Called by attention layers, in pass order.
    pub fn record_attention(&mut self, probs: Array4<F>) {
        if let Some(maps) = &mut self.attention {
            maps.push(probs);
        }
    }

    /// The probabilities recorded so far, one array per attention layer in pass order.
    pub fn attention(&self) -> &[Array4<F>] {
        self.attention.as_deref().unwrap_or_default()
    }

    /// Takes the recorded probabilities out (recording goes on, from empty).
    pub fn take_attention(&mut self) -> Vec<Array4<F>> {
        self.attention
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Whether the pass continues a cached sequence.
    pub fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    /// The absolute positions `start..start + t` of this pass's `t` new inputs: from the
    /// cache's length, or from 0 without a cache. Every layer of one pass must ask for the
    /// same `t`.
    ///
    /// # Errors
    /// [`Error::SequenceLength`] (naming `layer`) when `t` is zero or the positions exceed
    /// the cache's capacity; [`Error::InvalidConfig`] when another layer of this pass asked
    /// for another `t`.
    pub fn positions(&mut self, layer: &'static str, t: usize) -> Result<std::ops::Range<usize>> {
        let (start, capacity) = match &self.cache {
            Some(cache) => (cache.len, Some(cache.capacity)),
            None => (0, None),
        };
        let end = start.checked_add(t).ok_or(Error::SequenceLength {
            layer,
            len: usize::MAX,
            context: capacity.unwrap_or(usize::MAX),
        })?;
        if t == 0 || capacity.is_some_and(|c| end > c) {
            return Err(Error::SequenceLength {
                layer,
                len: end,
                context: capacity.unwrap_or(end),
            });
        }
        match self.end {
            Some(claimed) if claimed != end => Err(Error::InvalidConfig {
                layer,
                reason: format!(
                    "this pass has positions up to {claimed}, but {layer} was given {t} new ones \
                     from {start}"
                ),
            }),
            _ => {
                self.end = Some(end);
                Ok(start..end)
            }
        }
    }

    /// The key/value slot of the next attention layer in this pass, for `batch` sequences of
    /// key width `width`, or `None` without a cache. A fresh cache makes the slot.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] (naming `layer`) when the cache is for another batch size or
    /// its slot has another width; [`Error::InvalidConfig`] when the slot cannot be
    /// allocated.
    pub fn next_kv(
        &mut self,
        layer: &'static str,
        batch: usize,
        width: usize,
    ) -> Result<Option<&mut LayerKv<F>>> {
        let Some(cache) = self.cache.as_deref_mut() else {
            return Ok(None);
        };
        crate::error::check_shape(layer, "input batch", &[batch], &[Some(cache.batch)])?;
        let i = self.cursor;
        if i == cache.layers.len() {
            cache
                .layers
                .push(LayerKv::new(cache.batch, cache.capacity, width)?);
        }
        let slot = &mut cache.layers[i];
        crate::error::check_shape(layer, "cached keys", &[slot.width()], &[Some(width)])?;
        self.cursor += 1;
        Ok(Some(slot))
    }
}
