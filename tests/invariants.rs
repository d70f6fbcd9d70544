//! Invariants of the layers and the model that hold for any input: normalised rows,
//! probability rows, causality, zero-sum logit gradients, accumulating backward, `zero_grad`,
//! f32/f64 agreement, and stable parameter names and counts.

mod common;

use baregpt::kernels::attention_forward;
use baregpt::layers::{Attention, Block, Embedding, Gelu, LayerNorm, Linear, Mlp, Sequential};
use baregpt::prelude::*;
use baregpt::{CrossEntropy, Gpt, GptConfig, strategies};
use common::{config, grads, jitter_params, rng};
use ndarray::{Array2, Array3, ArrayView3, Axis, s};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const REGRESSIONS: &str = "proptest-regressions/invariants.txt";

/// Whether two arrays are identical bit for bit (so `0.0` and `-0.0` differ).
fn bits_equal<F: Float>(a: ArrayView3<'_, F>, b: ArrayView3<'_, F>) -> bool {
    a.shape() == b.shape()
        && a.iter()
            .zip(b.iter())
            .all(|(x, y)| x.to_f64_exact().to_bits() == y.to_f64_exact().to_bits())
}

/// Row statistics over the last axis: `(mean, biased variance)` per `(b, t)`.
fn row_stats(y: &Array3<f64>) -> Vec<(f64, f64)> {
    y.lanes(Axis(2))
        .into_iter()
        .map(|row| {
            let mean = row.mean().unwrap_or(0.0);
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / row.len() as f64;
            (mean, var)
        })
        .collect()
}

/// `(x (B, T, C), t_cut, replacement (B, T, C))` with `T ≥ 2`, `C = H·D`, `t_cut < T − 1`.
fn causal_case() -> impl Strategy<Value = (Array3<f64>, usize, Array3<f64>, usize, u64)> {
    (1..=3usize, 2..=6usize, 1..=2usize, 1..=3usize).prop_flat_map(|(b, t, h, d)| {
        (
            strategies::activations(b, t, h * d),
            0..t - 1,
            strategies::activations(b, t, h * d),
            Just(h),
            strategies::seed(),
        )
    })
}

/// `x` with every position after `t_cut` taken from `replacement`.
fn change_after(x: &Array3<f64>, t_cut: usize, replacement: &Array3<f64>) -> Array3<f64> {
    let mut changed = x.clone();
    changed
        .slice_mut(s![.., t_cut + 1.., ..])
        .assign(&replacement.slice(s![.., t_cut + 1.., ..]));
    changed
}

/// Outputs at positions `..=t_cut` are bit-identical for `x` and `x` changed after `t_cut`.
fn assert_causal<X: LayerInput<f64>, L: Layer<f64, X>>(
    layer: &mut L,
    x: &X,
    changed: &X,
    t_cut: usize,
) -> Result<(), TestCaseError> {
    let y = layer.forward(x).unwrap();
    let y_changed = layer.forward(changed).unwrap();
    prop_assert!(bits_equal(
        y.slice(s![.., ..=t_cut, ..]),
        y_changed.slice(s![.., ..=t_cut, ..])
    ));
    Ok(())
}

proptest! {
    #![proptest_config(config(64, REGRESSIONS))]

    #[test]
    fn layer_norm_rows_have_zero_mean_and_unit_variance(
        x in strategies::dims(3, 5, 8).prop_flat_map(|(b, t, c)| {
            strategies::activations(b, t, c + 1)
        })
    ) {
        let eps = LayerNorm::<f64>::DEFAULT_EPS;
        let y = LayerNorm::new(x.dim().2).unwrap().forward(&x).unwrap();
        for ((mean, var), (_, var_x)) in row_stats(&y).into_iter().zip(row_stats(&x)) {
            prop_assert!(mean.abs() < 1e-12, "row mean {mean}");
            // Biased variance with eps: exactly σ²/(σ² + eps), which is 1 unless σ² ~ eps.
            let expected = var_x / (var_x + eps);
            prop_assert!((var - expected).abs() < 1e-10, "row variance {var}, expected {expected}");
            if var_x > 1e-2 {
                prop_assert!((var - 1.0).abs() < 1e-3, "row variance {var} for input variance {var_x}");
            }
        }
    }

    #[test]
    fn layer_norm_rows_take_beta_as_mean_and_gamma_squared_as_variance(
        (x, beta) in strategies::dims(3, 5, 8).prop_flat_map(|(b, t, c)| {
            (strategies::activations(b, t, c + 1), strategies::activations(1, 1, c + 1))
        }),
        gain in 0.2..3.0f64,
    ) {
        let c = x.dim().2;
        let beta = beta.into_shape_with_order(c).unwrap();
        let mut ln = LayerNorm::new(c).unwrap();
        ln.for_each_param_mut(&mut |name, mut p| match name {
            "gamma" => p.value.fill(gain),
            "beta" => p.value.assign(&beta),
            _ => unreachable!("LayerNorm has only gamma and beta"),
        });
        let y = ln.forward(&x).unwrap();
        let eps = LayerNorm::<f64>::DEFAULT_EPS;
        let beta_mean = beta.mean().unwrap();
        let centred = &y - &beta;
        for (((mean_y, _), (_, var)), (_, var_x)) in
            row_stats(&y).into_iter().zip(row_stats(&centred)).zip(row_stats(&x))
        {
            prop_assert!((mean_y - beta_mean).abs() < 1e-12);
            let expected = gain * gain * var_x / (var_x + eps);
            prop_assert!((var - expected).abs() < 1e-9 * gain * gain);
        }
    }

    #[test]
    fn attention_probabilities_are_causal_distributions(
        (q, k, v, heads) in (1..=2usize, 1..=5usize, 0..=3usize, 1..=3usize, 1..=3usize)
            .prop_flat_map(|(b, t_q, extra, h, d)| {
                let t_k = t_q + extra;
                (
                    strategies::activations(b, t_q, h * d),
                    strategies::activations(b, t_k, h * d),
                    strategies::activations(b, t_k, h * d),
                    Just(h),
                )
            })
    ) {
        let (_, probs) = attention_forward(q.view(), k.view(), v.view(), heads).unwrap();
        let (t_q, t_k) = (q.dim().1, k.dim().1);
        prop_assert_eq!(probs.shape(), &[q.dim().0, heads, t_q, t_k]);
        // Rows are visited in (b, h, i) order, so query i is the row number modulo T_q.
        for (n, row) in probs.lanes(Axis(3)).into_iter().enumerate() {
            let i = n % t_q;
            prop_assert!((row.sum() - 1.0).abs() < 1e-12, "row sums to {}", row.sum());
            let last_visible = t_k - t_q + i;
            for (j, &p) in row.iter().enumerate() {
                if j > last_visible {
                    prop_assert!(p == 0.0, "masked probability {p} at key {j} for query {i}");
                } else {
                    prop_assert!(p > 0.0, "visible probability {p} at key {j} for query {i}");
                }
            }
        }
    }

    #[test]
    fn cross_entropy_logit_gradient_rows_sum_to_zero(
        (logits, targets) in strategies::dims(3, 5, 9).prop_flat_map(|(b, t, v)| {
            (strategies::activations(b, t, v), strategies::token_ids(b, t, v))
        }),
        spread in 0.5..8.0f64,
    ) {
        let logits = logits * spread;
        let mut head = CrossEntropy::new();
        head.loss(&logits, &targets).unwrap();
        let d_logits = head.backward_loss().unwrap();
        // Exactly zero in exact arithmetic; in f64 the V probabilities each carry a rounding
        // error of about one ulp of 1, so the sum is within a few V·ε of zero.
        let bound = 4.0 * f64::EPSILON * logits.dim().2 as f64;
        for row in d_logits.lanes(Axis(2)) {
            prop_assert!(row.sum().abs() < bound, "row sums to {}", row.sum());
        }
        // The Layer form, with an upstream dL/dloss, too.
        head.set_targets(targets.clone());
        head.forward(&logits).unwrap();
        let d_logits = head.backward(&Array3::from_elem((1, 1, 1), -2.5)).unwrap();
        for row in d_logits.lanes(Axis(2)) {
            prop_assert!(row.sum().abs() < 2.5 * bound, "row sums to {}", row.sum());
        }
    }
}

proptest! {
    #![proptest_config(config(32, REGRESSIONS))]

    #[test]
    fn attention_is_causal((x, t_cut, other, heads, seed) in causal_case()) {
        let mut attn = Attention::new(x.dim().2, heads, &mut rng(seed)).unwrap();
        jitter_params(&mut attn, seed, 0.3);
        assert_causal(&mut attn, &x, &change_after(&x, t_cut, &other), t_cut)?;
    }

    #[test]
    fn block_is_causal((x, t_cut, other, heads, seed) in causal_case(), hidden in 1..=8usize) {
        let mut block = Block::new(x.dim().2, heads, hidden, &mut rng(seed)).unwrap();
        jitter_params(&mut block, seed, 0.3);
        assert_causal(&mut block, &x, &change_after(&x, t_cut, &other), t_cut)?;
    }

    #[test]
    fn gpt_is_causal(
        (cfg, ids, other) in strategies::gpt_batch(),
        seed in strategies::seed(),
        cut in any::<prop::sample::Index>(),
    ) {
        let t = ids.ncols();
        prop_assume!(t >= 2);
        let t_cut = cut.index(t - 1);
        let mut changed = ids.clone();
        changed.slice_mut(s![.., t_cut + 1..]).assign(&other.slice(s![.., t_cut + 1..]));
        let mut gpt = Gpt::<f64>::new(cfg, &mut rng(seed)).unwrap();
        jitter_params(&mut gpt, seed, 0.3);
        assert_causal(&mut gpt, &ids, &changed, t_cut)?;
    }

    #[test]
    fn gpt_f32_and_f64_agree(
        (cfg, ids, _) in strategies::gpt_batch(),
        seed in strategies::seed(),
    ) {
        let logits64 = Gpt::<f64>::new(cfg.clone(), &mut rng(seed)).unwrap().forward(&ids).unwrap();
        let logits32 = Gpt::<f32>::new(cfg, &mut rng(seed)).unwrap().forward(&ids).unwrap();
        assert_close_to_f32_precision(&logits32, &logits64)?;
    }

    #[test]
    fn block_f32_and_f64_agree(
        (x, _, _, heads, seed) in causal_case(),
        hidden in 1..=16usize,
    ) {
        let c = x.dim().2;
        let y64 = Block::<f64>::new(c, heads, hidden, &mut rng(seed)).unwrap().forward(&x).unwrap();
        let y32 = Block::<f32>::new(c, heads, hidden, &mut rng(seed))
            .unwrap()
            .forward(&x.mapv(|v| v as f32))
            .unwrap();
        assert_close_to_f32_precision(&y32, &y64)?;
    }

    #[test]
    fn param_count_matches_the_config(cfg in strategies::small_gpt_config(), seed in strategies::seed()) {
        let gpt = Gpt::<f32>::new(cfg.clone(), &mut rng(seed)).unwrap();
        prop_assert_eq!(gpt.num_params(), cfg.param_count());
        let names = gpt.param_names();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), names.len(), "duplicate names in {:?}", names);
        prop_assert_eq!(names.len(), 2 + 12 * cfg.n_layers + 2 * usize::from(cfg.final_norm) + 2);
    }
}

/// `max |a − b| ≤ 1e-4 · max |b|`: the f32 result is the f64 one to f32 precision.
fn assert_close_to_f32_precision(a: &Array3<f32>, b: &Array3<f64>) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.shape(), b.shape());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max((f64::from(x) - y).abs()));
    prop_assert!(
        diff <= 1e-4 * scale,
        "max |f32 − f64| = {diff:e} at scale {scale:e}"
    );
    Ok(())
}

/// After one forward, a second backward with the same `dy` doubles every gradient exactly and
/// returns the same input gradient.
fn assert_backward_twice_doubles<X, L>(layer: &mut L, x: &X, dy_seed: u64)
where
    X: LayerInput<f64>,
    X::Grad: PartialEq + std::fmt::Debug,
    L: Layer<f64, X> + ?Sized,
{
    let y = layer.forward(x).unwrap();
    let dy = y.mapv(|v| (v * 3.1 + dy_seed as f64).sin());
    layer.zero_grad();
    let dx_once = layer.backward(&dy).unwrap();
    let once = grads(layer);
    let dx_twice = layer.backward(&dy).unwrap();
    let twice = grads(layer);
    assert_eq!(
        dx_once,
        dx_twice,
        "{}: input gradient changed",
        layer.kind()
    );
    assert!(once.iter().any(|(_, g)| g.iter().any(|&g| g != 0.0)) || once.is_empty());
    for ((name, g1), (_, g2)) in once.iter().zip(&twice) {
        let doubled: Vec<f64> = g1.iter().map(|g| 2.0 * g).collect();
        assert!(
            doubled
                .iter()
                .zip(g2)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: `{name}` after two backward passes is not exactly twice one",
            layer.kind()
        );
    }
}

fn sample_x(b: usize, t: usize, c: usize) -> Array3<f64> {
    Array3::from_shape_fn((b, t, c), |(i, j, k)| {
        ((5 * i + 3 * j + k) as f64 * 0.61).sin() * 1.7
    })
}

fn small_config(final_norm: bool) -> GptConfig {
    GptConfig {
        mlp_hidden: 12,
        final_norm,
        ..GptConfig::with_sizes(13, 6, 3, 2, 5)
    }
}

#[test]
fn backward_twice_doubles_the_gradients() {
    let mut r = rng(21);
    let x = sample_x(2, 4, 6);
    let mut layers: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(Linear::new(6, 4, true, &mut r).unwrap()),
        Box::new(LayerNorm::new(6).unwrap()),
        Box::new(Gelu::new()),
        Box::new(Mlp::new(6, 10, &mut r).unwrap()),
        Box::new(Attention::new(6, 2, &mut r).unwrap()),
        Box::new(Block::new(6, 3, 12, &mut r).unwrap()),
        Box::new(
            Sequential::new()
                .push(Linear::new(6, 6, false, &mut r).unwrap())
                .push(Block::new(6, 2, 8, &mut r).unwrap())
                .push(LayerNorm::new(6).unwrap()),
        ),
    ];
    for (i, layer) in layers.iter_mut().enumerate() {
        jitter_params(layer.as_mut(), i as u64, 0.3);
        assert_backward_twice_doubles(layer.as_mut(), &x, i as u64);
    }

    // Distinct ids: each token row's gradient is one sum, added once per backward.
    let ids = Array2::from_shape_fn((2, 5), |(b, t)| 5 * b + t);
    let mut embed = Embedding::new(13, 6, 5, &mut r).unwrap();
    assert_backward_twice_doubles(&mut embed, &ids, 7);
    for final_norm in [true, false] {
        let mut gpt = Gpt::<f64>::new(small_config(final_norm), &mut r).unwrap();
        jitter_params(&mut gpt, 3, 0.3);
        assert_backward_twice_doubles(&mut gpt, &ids, 8);
    }
}

/// The inherent `Gpt::loss` / `Gpt::backward_loss` pair accumulates too, and agrees with the
/// `Layer` form fed by the loss head's gradient.
#[test]
fn gpt_loss_backward_twice_doubles_and_matches_the_layer_form() {
    let ids = Array2::from_shape_fn((2, 5), |(b, t)| 5 * b + t);
    let targets = Array2::from_shape_fn((2, 5), |(b, t)| (3 * b + 2 * t + 1) % 13);
    let mut gpt = Gpt::<f64>::new(small_config(true), &mut rng(4)).unwrap();
    jitter_params(&mut gpt, 4, 0.3);
    gpt.loss(&ids, &targets).unwrap();
    gpt.backward_loss().unwrap();
    let once = grads(&gpt);
    gpt.backward_loss().unwrap();
    for ((name, g1), (_, g2)) in once.iter().zip(&grads(&gpt)) {
        assert!(
            g1.iter()
                .zip(g2)
                .all(|(a, b)| (2.0 * a).to_bits() == b.to_bits()),
            "`{name}`"
        );
    }

    gpt.zero_grad();
    let logits = gpt.forward(&ids).unwrap();
    let mut head = CrossEntropy::new();
    head.loss(&logits, &targets).unwrap();
    Layer::backward(&mut gpt, &head.backward_loss().unwrap()).unwrap();
    assert_eq!(grads(&gpt), once);
}

/// With repeated ids, a token row's gradient sums several positions; the kernel sums them
/// before touching the table, so even `embed.tok` is exactly doubled by a second backward.
#[test]
fn backward_twice_with_repeated_ids_doubles_exactly() {
    let ids = Array2::from_shape_fn((3, 5), |(b, t)| (b + t) % 4);
    let mut gpt = Gpt::<f64>::new(small_config(true), &mut rng(5)).unwrap();
    let y = gpt.forward(&ids).unwrap();
    let dy = y.mapv(f64::cos);
    Layer::backward(&mut gpt, &dy).unwrap();
    let once = grads(&gpt);
    Layer::backward(&mut gpt, &dy).unwrap();
    for ((name, g1), (_, g2)) in once.iter().zip(&grads(&gpt)) {
        for (a, b) in g1.iter().zip(g2) {
            assert_eq!((2.0 * a).to_bits(), b.to_bits(), "`{name}`: {a} then {b}");
        }
    }
}

#[test]
fn zero_grad_zeroes_every_gradient() {
    let ids = Array2::from_shape_fn((2, 4), |(b, t)| (4 * b + t) % 13);
    let mut gpt = Gpt::<f32>::new(small_config(true), &mut rng(9)).unwrap();
    gpt.loss(&ids, &ids.mapv(|i| (i + 1) % 13)).unwrap();
    gpt.backward_loss().unwrap();
    let mut nonzero_tensors = 0;
    gpt.for_each_param(&mut |_, p| {
        nonzero_tensors += usize::from(p.grad.iter().any(|&g| g != 0.0))
    });
    assert_eq!(
        nonzero_tensors,
        gpt.param_names().len(),
        "every tensor gets a gradient"
    );
    gpt.zero_grad();
    gpt.for_each_param(&mut |name, p| {
        assert!(
            p.grad.iter().all(|g| g.to_bits() == 0),
            "`{name}` not zeroed"
        );
    });

    let mut r = rng(2);
    let mut net = Sequential::<f64>::new()
        .push(Linear::new(6, 6, true, &mut r).unwrap())
        .push(Block::new(6, 2, 8, &mut r).unwrap());
    let y = net.forward(&sample_x(1, 3, 6)).unwrap();
    net.backward(&y).unwrap();
    net.zero_grad();
    net.for_each_param(&mut |name, p| {
        assert!(
            p.grad.iter().all(|g| g.to_bits() == 0),
            "`{name}` not zeroed"
        );
    });
}

#[test]
fn gpt_parameter_names_are_stable() {
    let block = |i: usize| {
        [
            "ln1.gamma",
            "ln1.beta",
            "attn.w_q",
            "attn.w_k",
            "attn.w_v",
            "attn.w_o",
            "ln2.gamma",
            "ln2.beta",
            "mlp.fc.w",
            "mlp.fc.b",
            "mlp.proj.w",
            "mlp.proj.b",
        ]
        .map(|n| format!("blocks.{i}.{n}"))
    };
    let mut expected = vec!["embed.tok".to_owned(), "embed.pos".to_owned()];
    expected.extend(block(0));
    expected.extend(block(1));
    let head = ["head.w".to_owned(), "head.b".to_owned()];
    let with_norm: Vec<String> = expected
        .iter()
        .cloned()
        .chain(["ln_f.gamma".to_owned(), "ln_f.beta".to_owned()])
        .chain(head.clone())
        .collect();
    let without_norm: Vec<String> = expected.iter().cloned().chain(head).collect();

    for seed in [0, 1] {
        assert_eq!(
            Gpt::<f64>::new(small_config(true), &mut rng(seed))
                .unwrap()
                .param_names(),
            with_norm
        );
        assert_eq!(
            Gpt::<f32>::new(small_config(true), &mut rng(seed))
                .unwrap()
                .param_names(),
            with_norm
        );
        assert_eq!(
            Gpt::<f32>::new(small_config(false), &mut rng(seed))
                .unwrap()
                .param_names(),
            without_norm
        );
    }

    // Shapes by name.
    let gpt = Gpt::<f64>::new(small_config(true), &mut rng(0)).unwrap();
    let mut shapes = std::collections::HashMap::new();
    gpt.for_each_param(&mut |name, p| {
        shapes.insert(name.to_owned(), p.value.shape().to_vec());
    });
    assert_eq!(shapes["embed.tok"], [13, 6]);
    assert_eq!(shapes["embed.pos"], [5, 6]);
    assert_eq!(shapes["blocks.1.attn.w_q"], [6, 6]);
    assert_eq!(shapes["blocks.0.mlp.fc.w"], [6, 12]);
    assert_eq!(shapes["blocks.0.mlp.proj.b"], [6]);
    assert_eq!(shapes["head.w"], [6, 13]);
}

/// The original printed 1,643,585 parameters for its 65-character vocabulary: the same tensors
/// as here (its 2,048 LayerNorm entries were dead there; here they are used and trained).
///
/// Per block: `4·256²` attention + `256·1024 + 1024` + `1024·256 + 256` MLP + `4·256` LayerNorm
/// = 788,736; two blocks 1,577,472; embeddings `(65 + 128)·256` = 49,408; head
/// `256·65 + 65` = 16,705; total 1,643,585.
#[test]
fn baregpt_preset_has_the_original_parameter_count() {
    let cfg = GptConfig::baregpt(65);
    assert_eq!(cfg.param_count(), 1_643_585);
    let gpt = Gpt::<f32>::new(cfg, &mut rng(0)).unwrap();
    assert_eq!(gpt.num_params(), 1_643_585);
    let mut layer_norm_entries = 0;
    gpt.for_each_param(&mut |name, p| {
        if name.contains(".ln") {
            layer_norm_entries += p.value.len();
        }
    });
    assert_eq!(layer_norm_entries, 2_048);
}

/// A layer's forward and backward give the same result, bit for bit, whether the layer is
/// fresh or has already run on other inputs (the MLPs write their hidden rows into the
/// previous forward's buffers and lend their backward's from a per-thread scratch, which
/// holds the earlier call's values).
fn assert_history_free<L: Layer<f64> + Clone>(fresh: &L, x: &Array3<f64>, other: &Array3<f64>) {
    let dy_of = |y: &Array3<f64>| y.mapv(|v| (v * 2.3).cos());
    let mut used = fresh.clone();
    let y_other = used.forward(other).unwrap();
    used.backward(&dy_of(&y_other)).unwrap();
    used.zero_grad();
    let mut fresh = fresh.clone();
    fresh.zero_grad();
    let (y_used, y_fresh) = (used.forward(x).unwrap(), fresh.forward(x).unwrap());
    assert!(
        bits_equal(y_used.view(), y_fresh.view()),
        "{}: forward",
        fresh.kind()
    );
    let dy = dy_of(&y_fresh);
    let (dx_used, dx_fresh) = (used.backward(&dy).unwrap(), fresh.backward(&dy).unwrap());
    assert!(
        bits_equal(dx_used.view(), dx_fresh.view()),
        "{}: dx",
        fresh.kind()
    );
    assert_eq!(
        grads(&used),
        grads(&fresh),
        "{}: parameter gradients",
        fresh.kind()
    );
}

#[test]
fn a_used_layer_computes_what_a_fresh_one_does() {
    let mut r = rng(5);
    let (x, other) = (sample_x(2, 5, 6), sample_x(2, 5, 6).mapv(|v| 3.0 - v));
    assert_history_free(&Mlp::<f64>::new(6, 14, &mut r).unwrap(), &x, &other);
    assert_history_free(
        &baregpt::layers::SwiGlu::<f64>::new(6, 10, &mut r).unwrap(),
        &x,
        &other,
    );
    // A larger scratch left by a larger call, then a smaller one.
    let big = sample_x(3, 7, 6);
    assert_history_free(&Mlp::<f64>::new(6, 14, &mut r).unwrap(), &x, &big);
    assert_history_free(
        &baregpt::layers::SwiGlu::<f64>::new(6, 10, &mut r).unwrap(),
        &x,
        &big,
    );
}
