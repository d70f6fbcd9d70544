//! Text generation: a key/value cache, a temperature and top-k sampler, and [`generate`],
//! which streams one token at a time.
//!
//! # The key/value cache
//!
//! A [`KvCache`] holds, for every attention layer, the keys and values of the positions seen
//! so far, `(B, T_cached, C)` each. [`KvCache::infer`] embeds only the new ids at their
//! absolute positions, appends their keys and values, and lets the new queries attend to all
//! cached keys, so each generated token costs one position instead of a full re-run of the
//! prefix. Its logits equal those of a full [`Layer::infer`] (the tests check this to
//! `1e-12` in `f64`).
//!
//! # When the context is full
//!
//! The model has learned positions `0..context` only. When the window of ids in the cache is
//! full (`context` ids) and one more token is needed, the window **restarts** from its last
//! [`slide_keep`]`(context)` = `⌈context / 2⌉` ids, re-encoded at positions `0..`, with one
//! prefill pass; then generation goes on one position at a time. (Re-encoding after every
//! token would cost a full pass per token; restarting at half the context costs one
//! pass every `context / 2` tokens and always leaves at least half a context of history.)
//! [`generate_uncached`] applies the same window rule with a full forward per token, which
//! is the reference the cached path is tested against.
//!
//! # Example
//!
//! ```
//! use baregpt::generate::{generate, SampleOptions};
//! use baregpt::{Gpt, GptConfig};
//! use rand::SeedableRng;
//!
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! let gpt = Gpt::<f32>::new(GptConfig::tiny(10), &mut rng)?;
//! let options = SampleOptions { temperature: 0.8, top_k: Some(5) };
//! let mut streamed = Vec::new();
//! let new = generate(&gpt, &[1, 2, 3], 40, &options, &mut rng, |id| streamed.push(id))?;
//! assert_eq!(new.len(), 40);
//! assert_eq!(new, streamed);
//! assert!(new.iter().all(|&id| id < 10));
//! # Ok::<(), baregpt::Error>(())
//! ```
//!
//! [`Layer::infer`]: crate::Layer::infer

use ndarray::{Array2, ArrayView1, Axis, s};
use rand::{Rng, RngExt};

pub use crate::layer::{KvCache, LayerKv};
use crate::{Error, Float, Gpt, Layer, Result};

const SAMPLER: &str = "sampler";

/// How the next token is drawn from the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    /// Divides the logits before the softmax: below 1 sharpens, above 1 flattens. Must be
    /// finite and positive (for greedy decoding use `top_k: Some(1)`).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (clamped to `V`); `None` keeps all.
    pub top_k: Option<usize>,
}

impl Default for SampleOptions {
    /// The original's generation settings: temperature 0.8, top-k 20.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: Some(20),
        }
    }
}

impl SampleOptions {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 1.0,
            top_k: Some(1),
        }
    }

    /// Checks the temperature and `k`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the temperature is not finite and positive, or `k` is 0.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::InvalidConfig {
                layer: SAMPLER,
                reason: format!(
                    "temperature {} is not a positive finite number",
                    self.temperature
                ),
            });
        }
        if self.top_k == Some(0) {
            return Err(Error::InvalidConfig {
                layer: SAMPLER,
                reason: "top-k must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// The tokens a draw can pick from one row of logits, most likely first, with their
/// probabilities after temperature and top-k: what [`sample_logits`] draws from, and what
/// [`generate_with`] shows beside each token it picks.
///
/// ```
/// use baregpt::generate::{Candidates, SampleOptions};
/// use ndarray::array;
///
/// let options = SampleOptions { temperature: 1.0, top_k: Some(2) };
/// let candidates = Candidates::new(array![0.0f64, 2.0, 1.0].view(), &options)?;
/// let top = candidates.top(5);
/// assert_eq!((top.len(), top[0].0, top[1].0), (2, 1, 2)); // only k = 2 can be drawn
/// assert!((top[0].1 - 1.0 / (1.0 + (-1f64).exp())).abs() < 1e-12);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Candidates {
    /// `(id, weight)`, descending; weights are `exp((logit − max) / temperature)`.
    weighted: Vec<(usize, f64)>,
    total: f64,
    /// `(id, probability)`, in the same order.
    probs: Vec<(usize, f64)>,
}

impl Candidates {
    /// The candidates of `logits (V)`: the `k` largest logits (ties broken towards the lower
    /// id), divided by the temperature, through a max-subtracted softmax.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for invalid `options`, empty logits, or logits containing NaN
    /// or nothing above −inf. A +inf logit is not an error: the +inf ids share all the
    /// probability.
    pub fn new<F: Float>(logits: ArrayView1<'_, F>, options: &SampleOptions) -> Result<Self> {
        options.validate()?;
        let values: Vec<f64> = logits.iter().map(|l| l.to_f64_exact()).collect();
        if values.iter().any(|v| v.is_nan()) || !values.iter().any(|&v| v > f64::NEG_INFINITY) {
            return Err(Error::InvalidConfig {
                layer: SAMPLER,
                reason: "the logits are empty, contain NaN or are all −inf".into(),
            });
        }
        let mut order: Vec<usize> = (0..values.len()).collect();
        // Descending by logit; the sort is stable, so ties keep the lower id first.
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
        order.truncate(options.top_k.unwrap_or(usize::MAX).min(values.len()));
        let max = values[order[0]];
        // A +inf logit takes all the probability (the limit of the softmax): the +inf ids share
        // it equally and every finite one gets none (`inf − inf` would be NaN).
        let weighted: Vec<(usize, f64)> = order
            .iter()
            .map(|&i| match max == f64::INFINITY {
                true => (i, f64::from(u8::from(values[i] == f64::INFINITY))),
                false => (i, ((values[i] - max) / options.temperature).exp()),
            })
            .collect();
        let total: f64 = weighted.iter().map(|(_, w)| w).sum();
        let probs = weighted.iter().map(|&(i, w)| (i, w / total)).collect();
        Ok(Self {
            weighted,
            total,
            probs,
        })
    }

    /// The `k` most likely `(id, probability)` pairs (fewer if fewer can be drawn).
    pub fn top(&self, k: usize) -> &[(usize, f64)] {
        &self.probs[..k.min(self.probs.len())]
    }

    /// Every `(id, probability)` that can be drawn, most likely first; the probabilities sum
    /// to 1.
    pub fn all(&self) -> &[(usize, f64)] {
        &self.probs
    }

    /// The probability of drawing `id` (0 outside the top-k).
    pub fn probability(&self, id: usize) -> f64 {
        self.probs
            .iter()
            .find(|(i, _)| *i == id)
            .map_or(0.0, |(_, p)| *p)
    }

    /// Draws one id with a single uniform number from `rng`.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let mut u = rng.random::<f64>() * self.total;
        for &(id, w) in &self.weighted {
            if u < w {
                return id;
            }
            u -= w;
        }
        // Rounding can leave `u` just above the last weight: the last kept id it is.
        self.weighted[self.weighted.len() - 1].0
    }
}

/// Draws a token id from `logits (V)` with temperature and top-k: one draw from
/// [`Candidates::new`], with a single uniform number from `rng`, so a seeded `rng` gives a
/// reproducible draw.
///
/// # Errors
/// As [`Candidates::new`].
pub fn sample_logits<F: Float, R: Rng + ?Sized>(
    logits: ArrayView1<'_, F>,
    options: &SampleOptions,
    rng: &mut R,
) -> Result<usize> {
    Ok(Candidates::new(logits, options)?.draw(rng))
}

/// How many ids the window keeps when it restarts after filling a context of `context`:
/// `⌈context / 2⌉`.
pub fn slide_keep(context: usize) -> usize {
    context.div_ceil(2).max(1)
}

/// The window a prompt starts with: its last `context` ids at most.
fn initial_window(prompt: &[usize], context: usize, vocab_size: usize) -> Result<Vec<usize>> {
    // Every id is checked, including those the window is about to crop away.
    if let Some((t, &id)) = prompt.iter().enumerate().find(|&(_, &id)| id >= vocab_size) {
        return Err(Error::TokenOutOfRange {
            layer: "generate",
            id,
            position: (0, t),
            vocab_size,
        });
    }
    if prompt.is_empty() {
        return Err(Error::SequenceLength {
            layer: "generate",
            len: 0,
            context,
        });
    }
    Ok(prompt[prompt.len().saturating_sub(context)..].to_vec())
}

/// The window after appending `id` to a full window: its last [`slide_keep`] ids.
fn slid_window(window: &[usize], id: usize, context: usize) -> Vec<usize> {
    let keep = slide_keep(context);
    let mut next: Vec<usize> = window[window.len() + 1 - keep.min(window.len() + 1)..].to_vec();
    next.push(id);
    next
}

fn row(ids: &[usize]) -> Array2<usize> {
    Array2::from_shape_fn((1, ids.len()), |(_, j)| ids[j])
}

/// Generates `max_new` ids after `prompt` with a key/value cache, calling `on_token` with each
/// id as soon as it is drawn; returns the new ids.
///
/// The prompt is cropped to its last `context` ids and run once (prefill); each further id
/// costs one position. When the window is full it restarts as described in the
/// [module docs](self).
///
/// # Errors
/// [`Error::SequenceLength`] for an empty prompt; [`Error::TokenOutOfRange`] for a prompt
/// id `≥ V` (every id is checked, also those cropped to fit the context);
/// [`Error::InvalidConfig`] for invalid `options`; [`Error::TooLarge`] when `max_new` ids would
/// exceed [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
pub fn generate<F: Float, R: Rng + ?Sized>(
    model: &Gpt<F>,
    prompt: &[usize],
    max_new: usize,
    options: &SampleOptions,
    rng: &mut R,
    mut on_token: impl FnMut(usize),
) -> Result<Vec<usize>> {
    generate_with(model, prompt, max_new, options, rng, |id, _| on_token(id))
}

/// [`generate`], calling `on_token` with each id and the [`Candidates`] it was drawn from
/// (the next-token distribution after temperature and top-k), as the original's notebook
/// prints the top five characters with their probabilities.
///
/// ```
/// use baregpt::generate::{generate_with, SampleOptions};
/// use baregpt::{Gpt, GptConfig};
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let gpt = Gpt::<f32>::new(GptConfig::tiny(10), &mut rng)?;
/// let mut lines = Vec::new();
/// generate_with(&gpt, &[1, 2], 3, &SampleOptions::default(), &mut rng, |id, candidates| {
///     let top: Vec<String> =
///         candidates.top(5).iter().map(|(t, p)| format!("{t} {:.1}%", 100.0 * p)).collect();
///     lines.push(format!("{id}: {}", top.join(", ")));
/// })?;
/// assert_eq!(lines.len(), 3);
/// # Ok::<(), baregpt::Error>(())
/// ```
///
/// # Errors
/// As [`generate`].
pub fn generate_with<F: Float, R: Rng + ?Sized>(
    model: &Gpt<F>,
    prompt: &[usize],
    max_new: usize,
    options: &SampleOptions,
    rng: &mut R,
    mut on_token: impl FnMut(usize, &Candidates),
) -> Result<Vec<usize>> {
    options.validate()?;
    let context = model.config().context;
    let mut window = initial_window(prompt, context, model.config().vocab_size)?;
    crate::limits::check_alloc::<usize>("generate", "the generated ids", &[max_new])?;
    let mut cache = model.kv_cache(1)?;
    let mut logits = cache.infer(model, &row(&window))?;
    let mut out = Vec::with_capacity(max_new);
    for step in 0..max_new {
        let last = logits.index_axis(Axis(0), 0);
        let candidates = Candidates::new(last.row(last.nrows() - 1), options)?;
        let id = candidates.draw(rng);
        on_token(id, &candidates);
        out.push(id);
        if step + 1 == max_new {
            break;
        }
        if window.len() == context {
            window = slid_window(&window, id, context);
            cache.clear();
            logits = cache.infer(model, &row(&window))?;
        } else {
            window.push(id);
            logits = cache.infer(model, &row(&[id]))?;
        }
    }
    Ok(out)
}

/// [`generate`] without a cache: a full [`Layer::infer`] over the window for every token.
///
/// It follows the same window rule and draws from `rng` in the same way, so with equal seeds
/// it returns the same ids as [`generate`] (up to floating-point ties); it is the reference
/// the cache is tested against, and a baseline for timing it.
///
/// # Errors
/// As [`generate`].
pub fn generate_uncached<F: Float, R: Rng + ?Sized>(
    model: &Gpt<F>,
    prompt: &[usize],
    max_new: usize,
    options: &SampleOptions,
    rng: &mut R,
    mut on_token: impl FnMut(usize),
) -> Result<Vec<usize>> {
    options.validate()?;
    let context = model.config().context;
    let mut window = initial_window(prompt, context, model.config().vocab_size)?;
    crate::limits::check_alloc::<usize>("generate", "the generated ids", &[max_new])?;
    let mut out = Vec::with_capacity(max_new);
    for _ in 0..max_new {
        let logits = model.infer(&row(&window))?;
        let id = sample_logits(logits.slice(s![0, window.len() - 1, ..]), options, rng)?;
        on_token(id);
        out.push(id);
        if window.len() == context {
            window = slid_window(&window, id, context);
        } else {
            window.push(id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand::SeedableRng;

    #[test]
    fn window_restarts_from_the_last_half() {
        assert_eq!(slide_keep(8), 4);
        assert_eq!(slide_keep(7), 4);
        assert_eq!(slide_keep(1), 1);
        assert_eq!(slid_window(&[1, 2, 3, 4, 5, 6], 7, 6), vec![5, 6, 7]);
        assert_eq!(slid_window(&[1], 2, 1), vec![2]);
        assert_eq!(initial_window(&[1, 2, 3, 4], 3, 5).unwrap(), vec![2, 3, 4]);
        assert!(initial_window(&[], 3, 5).is_err());
        // An out-of-range id is refused even where the window would crop it.
        assert!(initial_window(&[9, 2, 3, 4], 3, 5).is_err());
    }

    #[test]
    fn top_k_and_temperature_shape_the_draws() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let logits = array![0.0f64, 3.0, 2.9, -1.0];
        let greedy = SampleOptions::greedy();
        for _ in 0..20 {
            assert_eq!(sample_logits(logits.view(), &greedy, &mut rng).unwrap(), 1);
        }
        let top2 = SampleOptions {
            temperature: 1.0,
            top_k: Some(2),
        };
        let mut counts = [0usize; 4];
        for _ in 0..2000 {
            counts[sample_logits(logits.view(), &top2, &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[0] + counts[3], 0);
        // p(1) = 1 / (1 + e^-0.1) ≈ 0.525
        assert!(
            (counts[1] as f64 / 2000.0 - 0.525).abs() < 0.04,
            "{counts:?}"
        );
        // k larger than V is clamped; a huge temperature makes the draw near uniform.
        let flat = SampleOptions {
            temperature: 1e6,
            top_k: Some(100),
        };
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            counts[sample_logits(logits.view(), &flat, &mut rng).unwrap()] += 1;
        }
        assert!(
            counts
                .iter()
                .all(|&c| (c as f64 / 4000.0 - 0.25).abs() < 0.04),
            "{counts:?}"
        );
    }

    #[test]
    fn bad_sampling_input_is_refused() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let logits = array![0.0f32, 1.0];
        for options in [
            SampleOptions {
                temperature: 0.0,
                top_k: None,
            },
            SampleOptions {
                temperature: f64::NAN,
                top_k: None,
            },
            SampleOptions {
                temperature: 1.0,
                top_k: Some(0),
            },
        ] {
            assert!(sample_logits(logits.view(), &options, &mut rng).is_err());
        }
        let ok = SampleOptions::default();
        assert!(sample_logits(array![f32::NAN, 1.0].view(), &ok, &mut rng).is_err());
        assert!(sample_logits(array![f32::NEG_INFINITY].view(), &ok, &mut rng).is_err());
        assert!(sample_logits(ndarray::Array1::<f32>::zeros(0).view(), &ok, &mut rng).is_err());
    }
}
