//! Proptest strategies for property-testing layers, ours and yours (feature `proptest`).
//!
//! Shapes are drawn small (gradient checks cost two forwards per element) and dependent
//! sizes are drawn together, so `C` is always a multiple of the head count and `T` never
//! exceeds the context. Values are bounded so that inputs are well conditioned.
//!
//! ```
//! use baregpt::{gradcheck, layers::LayerNorm, strategies};
//! use proptest::prelude::*;
//! use proptest::test_runner::TestRunner;
//!
//! let mut runner = TestRunner::new(ProptestConfig::with_cases(8));
//! let strategy = strategies::dims(2, 4, 5).prop_flat_map(|(b, t, c)| strategies::activations(b, t, c));
//! runner.run(&strategy, |x| {
//!     let mut ln = LayerNorm::<f64>::new(x.dim().2).unwrap();
//!     let report = gradcheck::check_layer(&mut ln, &x, &Default::default()).unwrap();
//!     prop_assert!(report.passed(), "{}", report);
//!     Ok(())
//! }).unwrap();
//! ```

use ndarray::{Array2, Array3};
use proptest::prelude::*;

use crate::GptConfig;

/// The largest absolute value [`activations`] draws.
pub const ACTIVATION_BOUND: f64 = 2.0;

/// `(B, T, C)` with `1 ≤ B ≤ max_b`, `1 ≤ T ≤ max_t`, `1 ≤ C ≤ max_c`.
pub fn dims(
    max_b: usize,
    max_t: usize,
    max_c: usize,
) -> impl Strategy<Value = (usize, usize, usize)> {
    (1..=max_b.max(1), 1..=max_t.max(1), 1..=max_c.max(1))
}

/// Attention shapes: `(B, T, H, D)` with `C = H·D`, `1 ≤ H ≤ max_heads`, `1 ≤ D ≤ max_head_dim`.
pub fn attention_dims(
    max_b: usize,
    max_t: usize,
    max_heads: usize,
    max_head_dim: usize,
) -> impl Strategy<Value = (usize, usize, usize, usize)> {
    (
        1..=max_b.max(1),
        1..=max_t.max(1),
        1..=max_heads.max(1),
        1..=max_head_dim.max(1),
    )
}

/// Activations `(B, T, C)` with entries uniform in `±ACTIVATION_BOUND`.
pub fn activations(b: usize, t: usize, c: usize) -> impl Strategy<Value = Array3<f64>> {
    proptest::collection::vec(-ACTIVATION_BOUND..ACTIVATION_BOUND, b * t * c).prop_map(move |v| {
        Array3::from_shape_vec((b, t, c), v).unwrap_or_else(|_| Array3::zeros((b, t, c)))
    })
}

/// Token ids `(B, T)` in `0..vocab_size` (`vocab_size ≥ 1`).
pub fn token_ids(b: usize, t: usize, vocab_size: usize) -> impl Strategy<Value = Array2<usize>> {
    proptest::collection::vec(0..vocab_size.max(1), b * t).prop_map(move |v| {
        Array2::from_shape_vec((b, t), v).unwrap_or_else(|_| Array2::zeros((b, t)))
    })
}

/// Any `u64`, for seeding the RNG that initialises weights.
pub fn seed() -> impl Strategy<Value = u64> {
    any::<u64>()
}

/// A small [`GptConfig`]: vocabulary 2–12, 1–2 heads of size 1–4, 1–2 layers, context 1–6,
/// MLP width 1–8, with or without the final LayerNorm.
///
/// `d_model = 2` is drawn too: a LayerNorm over two features is `±1` by the sign of their
/// difference, smoothed only by its `eps`, so its curvature is large where the two agree. The
/// checker's Richardson-extrapolated differences handle it, and reports elements it cannot
/// judge as unreliable rather than failed.
pub fn small_gpt_config() -> impl Strategy<Value = GptConfig> {
    (
        2..=12usize,
        1..=2usize,
        1..=4usize,
        1..=2usize,
        1..=6usize,
        1..=8usize,
        any::<bool>(),
    )
        .prop_map(
            |(vocab_size, n_heads, head_dim, n_layers, context, mlp_hidden, final_norm)| {
                GptConfig {
                    mlp_hidden,
                    final_norm,
                    ..GptConfig::with_sizes(
                        vocab_size,
                        n_heads * head_dim,
                        n_heads,
                        n_layers,
                        context,
                    )
                }
            },
        )
}

/// A small config with a batch of ids and targets for it: `(config, ids (B, T), targets (B, T))`
/// with `1 ≤ B ≤ 3` and `1 ≤ T ≤ context`.
pub fn gpt_batch() -> impl Strategy<Value = (GptConfig, Array2<usize>, Array2<usize>)> {
    small_gpt_config().prop_flat_map(|config| {
        let v = config.vocab_size;
        (1..=3usize, 1..=config.context).prop_flat_map(move |(b, t)| {
            let config = config.clone();
            (token_ids(b, t, v), token_ids(b, t, v))
                .prop_map(move |(ids, targets)| (config.clone(), ids, targets))
        })
    })
}

/// Property-tests a float layer's backward over random shapes, inputs and seeds: draws
/// `(B, T, C)` up to `max_dims`, activations in `±ACTIVATION_BOUND` and a seed, builds the
/// layer with `build(C, seed)`, and runs [`check_layer`](crate::gradcheck::check_layer) with
/// `options` on `cases` cases. A case for which `build` returns an error (a width the layer
/// does not accept) is skipped.
///
/// Returns `Err` with the smallest failing case proptest's shrinking finds and its report,
/// or with the error the check returned. Five lines in a test:
///
/// ```
/// use baregpt::{layers::LayerNorm, strategies};
///
/// let outcome = strategies::check_layer_props(16, (2, 4, 5), &Default::default(), |c, _seed| {
///     LayerNorm::<f64>::new(c)
/// });
/// assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
/// ```
///
/// # Errors
/// A message naming the failing case: its shape, seed and the check's report.
pub fn check_layer_props<L, B>(
    cases: u32,
    max_dims: (usize, usize, usize),
    options: &crate::gradcheck::GradCheckOptions,
    build: B,
) -> Result<(), String>
where
    L: crate::Layer<f64>,
    B: Fn(usize, u64) -> crate::Result<L>,
{
    use proptest::test_runner::{TestCaseError, TestRunner};
    let strategy = dims(max_dims.0, max_dims.1, max_dims.2)
        .prop_flat_map(|(b, t, c)| (activations(b, t, c), seed()));
    let config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    };
    let mut runner = TestRunner::new(config);
    runner
        .run(&strategy, |(x, seed)| {
            let Ok(mut layer) = build(x.dim().2, seed) else {
                return Err(TestCaseError::reject("the layer refuses this width"));
            };
            let report = crate::gradcheck::check_layer(&mut layer, &x, options)
                .map_err(|e| TestCaseError::fail(format!("check_layer returned an error: {e}")))?;
            if report.passed() {
                Ok(())
            } else {
                Err(TestCaseError::fail(format!(
                    "shape {:?}, seed {seed}:\n{report}",
                    x.dim()
                )))
            }
        })
        .map_err(|e| e.to_string())
}
