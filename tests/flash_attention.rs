//! The tiled (flash) attention kernel against the plain kernel, its oracle: the same context
//! and the same `dq`, `dk`, `dv` to `1e-12` in f64 for every length from 1 to 70 and around
//! the tile edges (128, 256 queries; 4096 keys), for multi-head, grouped-query and
//! multi-query heads, with and without a dropout mask, and with fewer queries than keys (a key/value cache); gradient
//! checks of the tiled kernel over random odd shapes; its typed errors; and the `Attention`
//! layer on either kernel (training, inference, the key/value cache, attention maps).

mod common;

use approx::assert_abs_diff_eq;
use baregpt::gradcheck::{self, GradCheckReport, as_dim};
use baregpt::kernels::{
    DropoutMask, FlashView, attention_dropout_backward, attention_dropout_forward,
    flash_attention_backward, flash_attention_forward, grouped_attention_backward,
    grouped_attention_forward,
};
use baregpt::layer::{InferState, KvCache};
use baregpt::layers::{Attention, AttentionConfig, AttentionKernel};
use baregpt::param::Params;
use baregpt::{Error, Gpt, GptConfig, Layer};
use common::{config, rng};
use ndarray::{Array3, ArrayD, IxDyn, s};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rand::RngExt;

const REGRESSIONS: &str = "proptest-regressions/flash_attention.txt";

/// `q (B, T_q, H·D)`, `k, v (B, T_k, H_kv·D)` and an upstream `d_ctx (B, T_q, H·D)`, uniform
/// in `±2` (scores of a few units, so the softmax is far from uniform).
fn inputs(
    seed: u64,
    b: usize,
    (t_q, t_k): (usize, usize),
    (h, h_kv, d): (usize, usize, usize),
) -> [Array3<f64>; 4] {
    let mut r = rng(seed);
    let mut a = |shape| Array3::from_shape_simple_fn(shape, || r.random_range(-2.0..2.0));
    [
        a((b, t_q, h * d)),
        a((b, t_k, h_kv * d)),
        a((b, t_k, h_kv * d)),
        a((b, t_q, h * d)),
    ]
}

/// The largest absolute difference between the tiled and the plain kernel over the context
/// and the three gradients.
fn tiled_vs_plain(
    [q, k, v, d_ctx]: &[Array3<f64>; 4],
    (h, h_kv): (usize, usize),
    mask: Option<&DropoutMask>,
) -> f64 {
    let (q, k, v, d_ctx) = (q.view(), k.view(), v.view(), d_ctx.view());
    let (ctx, probs) = match mask {
        None => grouped_attention_forward(q, k, v, h, h_kv),
        Some(m) => attention_dropout_forward(q, k, v, h, h_kv, m),
    }
    .unwrap();
    let plain = match mask {
        None => grouped_attention_backward(q, k, v, probs.view(), d_ctx, h_kv),
        Some(m) => attention_dropout_backward(q, k, v, probs.view(), d_ctx, h_kv, m),
    }
    .unwrap();
    let out = flash_attention_forward(q, k, v, h, h_kv, mask).unwrap();
    let tiled = flash_attention_backward(q, k, v, out.view(), d_ctx, h_kv, mask).unwrap();
    let worst = |a: &Array3<f64>, b: &Array3<f64>| {
        assert_eq!(a.shape(), b.shape());
        a.iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
    };
    [
        worst(&out.ctx, &ctx),
        worst(&tiled.0, &plain.0),
        worst(&tiled.1, &plain.1),
        worst(&tiled.2, &plain.2),
    ]
    .into_iter()
    .fold(0.0, f64::max)
}

/// Every `T_k` in `lengths`, with `T_q = T_k`, `T_q = 1` (one decoding step) and
/// `T_q ≈ T_k/3`, for MHA, GQA and MQA, with and without a mask.
fn sweep(lengths: impl Iterator<Item = usize>, b: usize, d: usize) {
    let mask = DropoutMask::new(0.3, 17, 4).unwrap();
    for t_k in lengths {
        for t_q in [t_k, 1, t_k.div_ceil(3)] {
            for (h, h_kv) in [(3, 3), (4, 2), (3, 1)] {
                for mask in [None, Some(&mask)] {
                    let seed = (t_k * 1000 + t_q * 10 + h_kv) as u64;
                    let x = inputs(seed, b, (t_q, t_k), (h, h_kv, d));
                    let worst = tiled_vs_plain(&x, (h, h_kv), mask);
                    assert!(
                        worst < 1e-12,
                        "T_q {t_q}, T_k {t_k}, H {h}, H_kv {h_kv}, mask {}: {worst:e}",
                        mask.is_some()
                    );
                }
            }
        }
    }
}

#[test]
fn tiled_equals_plain_for_every_length_up_to_70() {
    sweep(1..=70, 2, 3);
}

#[test]
fn tiled_equals_plain_around_the_tile_edges() {
    // The default tiles are 128 queries × 4096 keys: one query block, two, and a partial
    // third.
    sweep([127, 128, 129, 255, 256, 257].into_iter(), 1, 2);
}

#[test]
fn tiled_equals_plain_across_the_key_tile_edge() {
    // A few queries at the end of 4095 to 4097 keys (the KV-cache shape): the last rows see
    // one key tile, a full one, and one key into a second tile, whose online rescaling runs.
    let mask = DropoutMask::new(0.3, 5, 2).unwrap();
    for t_k in [4095, 4096, 4097, 4200] {
        for mask in [None, Some(&mask)] {
            let mut x = inputs(t_k as u64, 1, (3, t_k), (2, 1, 2));
            // A last key far from the others, so that where it opens a second tile it moves
            // the rows' running maximum and the rescaling matters.
            x[1].slice_mut(s![.., t_k - 1, ..])
                .mapv_inplace(|v| 6.0 * v);
            let worst = tiled_vs_plain(&x, (2, 1), mask);
            assert!(
                worst < 1e-12,
                "T_k {t_k}, mask {}: {worst:e}",
                mask.is_some()
            );
        }
    }
}

#[test]
fn tiled_matches_plain_in_f32() {
    let [q, k, v, d_ctx] = inputs(3, 2, (150, 300), (4, 2, 16)).map(|a| a.mapv(|x| x as f32));
    let (q, k, v, d_ctx) = (q.view(), k.view(), v.view(), d_ctx.view());
    let (ctx, probs) = grouped_attention_forward(q, k, v, 4, 2).unwrap();
    let plain = grouped_attention_backward(q, k, v, probs.view(), d_ctx, 2).unwrap();
    let out = flash_attention_forward(q, k, v, 4, 2, None).unwrap();
    let tiled = flash_attention_backward(q, k, v, out.view(), d_ctx, 2, None).unwrap();
    assert_abs_diff_eq!(out.ctx, ctx, epsilon = 1e-5);
    assert_abs_diff_eq!(tiled.0, plain.0, epsilon = 1e-4);
    assert_abs_diff_eq!(tiled.1, plain.1, epsilon = 1e-4);
    assert_abs_diff_eq!(tiled.2, plain.2, epsilon = 1e-4);
}

#[test]
fn lse_rebuilds_the_plain_probabilities() {
    // P_ij = exp(S_ij − lse_i) for the visible keys: the row sums of exp(S − lse) are 1, and
    // exp(S_i0 − lse_i) is the probability of key 0.
    let [q, k, v, _] = inputs(5, 2, (9, 20), (2, 1, 3));
    let out = flash_attention_forward(q.view(), k.view(), v.view(), 2, 1, None).unwrap();
    let (_, probs) = grouped_attention_forward(q.view(), k.view(), v.view(), 2, 1).unwrap();
    for b in 0..2 {
        for h in 0..2 {
            for i in 0..9 {
                let score = (0..3)
                    .map(|e| q[[b, i, h * 3 + e]] * k[[b, 0, e]])
                    .sum::<f64>()
                    / 3f64.sqrt();
                let p0 = (score - out.lse[[b, h, i]]).exp();
                assert_abs_diff_eq!(p0, probs[[b, h, i, 0]], epsilon = 1e-12);
            }
        }
    }
}

#[test]
fn empty_shapes_give_empty_results() {
    for (b, t_q, t_k) in [(0, 3, 3), (2, 0, 0), (2, 0, 4)] {
        let [q, k, v, d_ctx] = inputs(1, b, (t_q, t_k), (2, 1, 3));
        let out = flash_attention_forward(q.view(), k.view(), v.view(), 2, 1, None).unwrap();
        assert_eq!(out.ctx.shape(), &[b, t_q, 6]);
        assert_eq!(out.lse.shape(), &[b, 2, t_q]);
        let (dq, dk, dv) = flash_attention_backward(
            q.view(),
            k.view(),
            v.view(),
            out.view(),
            d_ctx.view(),
            1,
            None,
        )
        .unwrap();
        assert_eq!((dq.dim(), dk.dim()), ((b, t_q, 6), (b, t_k, 3)));
        assert!(dk.iter().chain(&dv).all(|&g| g == 0.0));
    }
}

#[test]
fn bad_shapes_are_typed_errors_naming_the_kernel() {
    let [q, k, v, d_ctx] = inputs(1, 2, (4, 5), (4, 2, 3));
    let (q, k, v, d_ctx) = (q.view(), k.view(), v.view(), d_ctx.view());
    let shape = |e: Error, what: &str| {
        assert!(
            matches!(e, Error::ShapeMismatch { layer: "flash_attention", what: w, .. } if w == what),
            "{e}"
        );
    };
    let config = |e: Error| {
        assert!(
            matches!(
                e,
                Error::InvalidConfig {
                    layer: "flash_attention",
                    ..
                }
            ),
            "{e}"
        );
    };
    // Heads: 5 do not divide 12; 3 key/value heads do not divide 4; none at all.
    config(flash_attention_forward(q, k, v, 5, 1, None).unwrap_err());
    config(flash_attention_forward(q, k, v, 4, 3, None).unwrap_err());
    config(flash_attention_forward(q, k, v, 4, 0, None).unwrap_err());
    // k of another width, v of another length, more queries than keys.
    shape(
        flash_attention_forward(q, k, v, 4, 1, None).unwrap_err(),
        "k",
    );
    let v_short = v.slice(s![.., ..4, ..]);
    shape(
        flash_attention_forward(q, k, v_short, 4, 2, None).unwrap_err(),
        "v",
    );
    let (k4, v4) = (k.slice(s![.., ..3, ..]), v.slice(s![.., ..3, ..]));
    shape(
        flash_attention_forward(q, k4, v4, 4, 2, None).unwrap_err(),
        "q",
    );
    // The backward checks ctx, lse and d_ctx against q.
    let out = flash_attention_forward(q, k, v, 4, 2, None).unwrap();
    let saved = out.view();
    let bad_ctx = FlashView {
        ctx: saved.ctx.slice_move(s![.., ..3, ..]),
        ..saved
    };
    let e = flash_attention_backward(q, k, v, bad_ctx, d_ctx, 2, None).unwrap_err();
    shape(e, "ctx");
    let bad_lse = FlashView {
        lse: saved.lse.slice_move(s![.., .., ..3]),
        ..saved
    };
    let e = flash_attention_backward(q, k, v, bad_lse, d_ctx, 2, None).unwrap_err();
    shape(e, "lse");
    let e = flash_attention_backward(q, k, v, saved, d_ctx.slice(s![.., .., ..6]), 2, None)
        .unwrap_err();
    shape(e, "d_ctx");
    // The heads are read from lse: 3 heads of 4 columns want k 4 wide, and none is refused.
    let three_heads = FlashView {
        lse: saved.lse.slice_move(s![.., ..3, ..]),
        ..saved
    };
    shape(
        flash_attention_backward(q, k, v, three_heads, d_ctx, 1, None).unwrap_err(),
        "k",
    );
    let no_heads = FlashView {
        lse: saved.lse.slice_move(s![.., ..0, ..]),
        ..saved
    };
    config(flash_attention_backward(q, k, v, no_heads, d_ctx, 1, None).unwrap_err());
}

/// The report passed and covers `ctx` with respect to `q`, `k`, `v`, in order.
fn passes(report: &GradCheckReport) -> Result<(), TestCaseError> {
    let got: Vec<_> = report.tensors.iter().map(|t| t.name.clone()).collect();
    prop_assert_eq!(got, ["q", "k", "v"]);
    prop_assert!(report.passed(), "{}", report);
    Ok(())
}

/// An array of `shape` with entries uniform in `±2`.
fn array(shape: Vec<usize>) -> impl Strategy<Value = ArrayD<f64>> {
    let n: usize = shape.iter().product();
    proptest::collection::vec(-2.0..2.0f64, n).prop_map(move |v| {
        ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0])))
    })
}

proptest! {
    #![proptest_config(config(48, REGRESSIONS))]

    /// `H` query heads on any divisor `H_kv` of them, odd head sizes, `T_q ≤ T_k`, with a
    /// fixed mask or none.
    #[test]
    fn tiled_kernel_gradients(
        (q, k, v, heads, kv_heads, mask) in
            (1..=2usize, 1..=5usize, 0..=3usize, 1..=6usize, 1..=3usize, prop::option::of(any::<u64>()))
            .prop_flat_map(|(b, t_q, extra, h, d, seed)| {
                let divisors: Vec<usize> = (1..=h).filter(|g| h % g == 0).collect();
                (Just((b, t_q, t_q + extra, h, d, seed)), proptest::sample::select(divisors))
            })
            .prop_flat_map(|((b, t_q, t_k, h, d, seed), h_kv)| {
                (array(vec![b, t_q, h * d]), array(vec![b, t_k, h_kv * d]),
                 array(vec![b, t_k, h_kv * d]), Just(h), Just(h_kv),
                 Just(seed.map(|s| DropoutMask::new(0.3, s, 1).unwrap())))
            })
    ) {
        let mask = mask.as_ref();
        let report = gradcheck::check_fn(
            &[("q", q), ("k", k), ("v", v)],
            &["ctx"],
            |i| {
                let out = flash_attention_forward(as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&i[2])?,
                                                  heads, kv_heads, mask)?;
                Ok(vec![out.ctx.into_dyn()])
            },
            |i, d, grads| {
                let (q, k, v) = (as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&i[2])?);
                let out = flash_attention_forward(q, k, v, heads, kv_heads, mask)?;
                let (dq, dk, dv) = flash_attention_backward(q, k, v, out.view(), as_dim(&d[0])?,
                                                            kv_heads, mask)?;
                grads[0] += &dq.into_dyn();
                grads[1] += &dk.into_dyn();
                grads[2] += &dv.into_dyn();
                Ok(())
            },
            &Default::default(),
        ).unwrap();
        passes(&report)?;
    }
}

/// Two layers with the same weights, on the tiled and on the plain kernel.
fn layer_pair(c: usize, config: AttentionConfig, seed: u64) -> [Attention<f64>; 2] {
    [AttentionKernel::Tiled, AttentionKernel::Plain].map(|kernel| {
        Attention::with_config(c, config.with_kernel(kernel), &mut rng(seed)).unwrap()
    })
}

#[test]
fn the_layer_gives_the_same_outputs_and_gradients_on_either_kernel() {
    let configs = [
        AttentionConfig::new(3),
        AttentionConfig::new(4)
            .kv_heads(2)
            .with_bias(true)
            .rotary(10_000.0),
        AttentionConfig::new(4).kv_heads(1).with_dropout(0.2, 9),
    ];
    for config in configs {
        let c = 4 * config.n_heads;
        let [mut tiled, mut plain] = layer_pair(c, config, 1);
        let x = inputs(2, 2, (70, 70), (config.n_heads, 1, 4))[0].clone();
        compare_layers(&mut tiled, &mut plain, &x);
    }
    // The default kernel from `TILED_MIN_KEYS` keys on is the tiled one: same results.
    let config = AttentionConfig::new(2).kv_heads(1).with_dropout(0.1, 3);
    let t = AttentionKernel::TILED_MIN_KEYS + 7;
    let mut auto = Attention::with_config(6, config, &mut rng(2)).unwrap();
    let [_, mut plain] = layer_pair(6, config, 2);
    let x = inputs(6, 1, (t, t), (2, 1, 3))[0].clone();
    compare_layers(&mut auto, &mut plain, &x);
}

/// Two steps of `a` and `b` (built alike) on `x` give the same outputs, input gradients and
/// parameter gradients; two, so that the dropout masks of both passes agree too.
fn compare_layers(a: &mut Attention<f64>, b: &mut Attention<f64>, x: &Array3<f64>) {
    for _ in 0..2 {
        let (y_a, y_b) = (a.forward(x).unwrap(), b.forward(x).unwrap());
        assert_abs_diff_eq!(y_a, y_b, epsilon = 1e-12);
        let dy = y_a.mapv(f64::cos);
        let (dx_a, dx_b) = (a.backward(&dy).unwrap(), b.backward(&dy).unwrap());
        assert_abs_diff_eq!(dx_a, dx_b, epsilon = 1e-12);
    }
    let mut grads = Vec::new();
    b.for_each_param(&mut |_, p| grads.push(p.grad.to_owned()));
    let mut i = 0;
    a.for_each_param(&mut |_, p| {
        assert_abs_diff_eq!(p.grad, grads[i].view(), epsilon = 1e-12);
        i += 1;
    });
    assert_eq!(i, grads.len());
}

#[test]
fn inference_and_decoding_agree_on_either_kernel() {
    let config = AttentionConfig::new(4).kv_heads(2).rotary(10_000.0);
    let [tiled, plain] = layer_pair(16, config, 3);
    let x = inputs(4, 2, (9, 9), (4, 1, 4))[0].clone();
    let full = plain.infer(&x).unwrap();
    assert_abs_diff_eq!(tiled.infer(&x).unwrap(), full, epsilon = 1e-12);
    // A prefix of 5, then one position at a time through the cache (T_q < T_k).
    let mut cache = KvCache::<f64>::new(2, 9).unwrap();
    let mut parts = vec![
        cache
            .infer(&tiled, &x.slice(s![.., ..5, ..]).to_owned())
            .unwrap(),
    ];
    for i in 5..9 {
        parts.push(
            cache
                .infer(&tiled, &x.slice(s![.., i..=i, ..]).to_owned())
                .unwrap(),
        );
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    let decoded = ndarray::concatenate(ndarray::Axis(1), &views).unwrap();
    assert_abs_diff_eq!(decoded, full, epsilon = 1e-12);
    // Recording the probabilities on the tiled layer (the plain kernel forms them beside it)
    // leaves the output bit for bit as without recording.
    let mut state = InferState::new().recording_attention();
    let y = tiled.infer_with(&x, &mut state).unwrap();
    assert_eq!(y, tiled.infer(&x).unwrap());
    let maps = state.take_attention();
    assert_eq!(maps.len(), 1);
    assert_eq!(maps[0].shape(), &[2, 4, 9, 9]);
}

#[test]
fn attention_maps_of_a_model_long_enough_for_the_tiled_kernel() {
    // 260 positions: the default kernel is the tiled one, and recording the maps (which
    // needs the plain kernel's probabilities) leaves the logits bit for bit as they are.
    let t = AttentionKernel::TILED_MIN_KEYS + 4;
    let gpt = Gpt::<f64>::new(GptConfig::with_sizes(10, 8, 2, 2, t), &mut rng(0)).unwrap();
    let ids = ndarray::Array2::from_shape_fn((1, t), |(_, i)| (i * 7) % 10);
    let (logits, maps) = gpt.attention_maps(&ids).unwrap();
    assert_eq!(logits, gpt.infer(&ids).unwrap());
    assert_eq!(maps.len(), 2);
    assert_eq!(maps[1].shape(), &[1, 2, t, t]);
    for row in maps[0].lanes(ndarray::Axis(3)) {
        assert_abs_diff_eq!(row.sum(), 1.0, epsilon = 1e-12);
    }
}
