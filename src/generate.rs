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

/// Draws a token id from `logits (V)` with temperature and top-k.
///
/// The `k` largest logits (ties broken towards the lower id) are divided by the temperature,
/// turned into probabilities with a max-subtracted softmax, and one id is drawn with a single
/// uniform number from `rng`, so a seeded `rng` gives a reproducible draw.
///
/// # Errors
/// [`Error::InvalidConfig`] for invalid `options`, empty logits, or logits containing NaN or
/// nothing above −inf. A +inf logit is not an error: the +inf ids share all the probability.
pub fn sample_logits<F: Float, R: Rng + ?Sized>(
    logits: ArrayView1<'_, F>,
    options: &SampleOptions,
    rng: &mut R,
) -> Result<usize> {
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
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| match max == f64::INFINITY {
            true => f64::from(u8::from(values[i] == f64::INFINITY)),
            false => ((values[i] - max) / options.temperature).exp(),
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (&id, &w) in order.iter().zip(&weights) {
        if u < w {
            return Ok(id);
        }
        u -= w;
    }
    // Rounding can leave `u` just above the last weight: the last kept id it is.
    Ok(order[order.len() - 1])
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
    options.validate()?;
    let context = model.config().context;
    let mut window = initial_window(prompt, context, model.config().vocab_size)?;
    crate::limits::check_alloc::<usize>("generate", "the generated ids", &[max_new])?;
    let mut cache = model.kv_cache(1)?;
    let mut logits = cache.infer(model, &row(&window))?;
    let mut out = Vec::with_capacity(max_new);
    for step in 0..max_new {
        let last = logits.index_axis(Axis(0), 0);
        let id = sample_logits(last.row(last.nrows() - 1), options, rng)?;
        on_token(id);
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
