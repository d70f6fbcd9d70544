//! Key/value-cache generation: the cached logits equal a full forward's at every step, cached
//! generation equals full-forward generation token by token, and bad input is refused with
//! the cache left as it was.

use baregpt::generate::{KvCache, SampleOptions, generate, generate_uncached, slide_keep};
use baregpt::prelude::*;
use baregpt::{Error, Gpt, GptConfig};
use ndarray::{Array2, Axis, s};
use proptest::prelude::*;
use rand::{RngExt, SeedableRng, rngs::StdRng};

fn config(vocab_size: usize, context: usize, final_norm: bool) -> GptConfig {
    GptConfig {
        mlp_hidden: 24,
        final_norm,
        ..GptConfig::with_sizes(vocab_size, 12, 3, 2, context)
    }
}

fn random_ids(b: usize, t: usize, v: usize, rng: &mut StdRng) -> Array2<usize> {
    Array2::from_shape_simple_fn((b, t), || rng.random_range(0..v))
}

/// Largest absolute difference between two arrays of equal shape.
fn max_diff(a: ndarray::ArrayView3<'_, f64>, b: ndarray::ArrayView3<'_, f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Feeding a sequence in random chunks through the cache gives, for every chunk, the same
    /// logits as the full forward over the whole prefix.
    #[test]
    fn cached_logits_equal_full_forward(
        seed in any::<u64>(),
        b in 1usize..3,
        context in 1usize..10,
        final_norm in any::<bool>(),
        chunks in proptest::collection::vec(1usize..4, 1..10),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut gpt = Gpt::<f64>::new(config(7, context, final_norm), &mut rng).unwrap();
        let ids = random_ids(b, context, 7, &mut rng);
        let full = gpt.forward(&ids).unwrap();
        let mut cache = gpt.kv_cache(b).unwrap();
        let mut start = 0;
        for chunk in chunks {
            let end = (start + chunk).min(context);
            if start == end {
                break;
            }
            let logits = cache
                .infer(&gpt, &ids.slice(s![.., start..end]).to_owned())
                .unwrap();
            prop_assert_eq!(cache.len(), end);
            let diff = max_diff(logits.view(), full.slice(s![.., start..end, ..]));
            prop_assert!(diff < 1e-12, "positions {}..{}: max diff {:e}", start, end, diff);
            start = end;
        }
    }
}

#[test]
fn one_token_at_a_time_matches_full_forward_at_every_step() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut gpt = Gpt::<f64>::new(config(9, 16, true), &mut rng).unwrap();
    let ids = random_ids(1, 16, 9, &mut rng);
    let mut cache = gpt.kv_cache(1).unwrap();
    for t in 0..16 {
        let step = cache
            .infer(&gpt, &ids.slice(s![.., t..t + 1]).to_owned())
            .unwrap();
        // The reference is a fresh full forward over the prefix 0..=t.
        let full = gpt.forward(&ids.slice(s![.., ..=t]).to_owned()).unwrap();
        let diff = max_diff(step.view(), full.slice(s![.., t..=t, ..]));
        assert!(diff < 1e-12, "step {t}: max diff {diff:e}");
    }
}

#[test]
fn cached_generation_equals_full_forward_generation_token_by_token() {
    for (seed, context, options) in [
        (1, 8, SampleOptions::default()),
        (2, 5, SampleOptions::greedy()),
        (
            3,
            6,
            SampleOptions {
                temperature: 1.3,
                top_k: None,
            },
        ),
        (
            4,
            1,
            SampleOptions {
                temperature: 0.5,
                top_k: Some(3),
            },
        ),
    ] {
        let mut rng = StdRng::seed_from_u64(seed);
        let gpt = Gpt::<f64>::new(config(11, context, seed % 2 == 0), &mut rng).unwrap();
        let prompt: Vec<usize> = (0..3).map(|i| (i * 4 + seed as usize) % 11).collect();
        // 40 new tokens is several window restarts for these contexts.
        let mut streamed = Vec::new();
        let cached = generate(
            &gpt,
            &prompt,
            40,
            &options,
            &mut StdRng::seed_from_u64(seed),
            |id| streamed.push(id),
        )
        .unwrap();
        let full = generate_uncached(
            &gpt,
            &prompt,
            40,
            &options,
            &mut StdRng::seed_from_u64(seed),
            |_| {},
        )
        .unwrap();
        assert_eq!(cached, full, "seed {seed}, context {context}");
        assert_eq!(cached, streamed);
        assert_eq!(cached.len(), 40);
    }
}

#[test]
fn uncached_generation_uses_the_documented_window() {
    // With greedy decoding, each token is the argmax of a full forward over the window the
    // module docs describe; rebuild that window here independently and compare.
    let mut rng = StdRng::seed_from_u64(5);
    let context = 4;
    let mut gpt = Gpt::<f64>::new(config(6, context, true), &mut rng).unwrap();
    let prompt = vec![1, 2, 3, 4, 5, 0];
    let out = generate_uncached(
        &gpt,
        &prompt,
        12,
        &SampleOptions::greedy(),
        &mut rng,
        |_| {},
    )
    .unwrap();
    let mut window: Vec<usize> = prompt[prompt.len() - context..].to_vec();
    for &id in &out {
        let ids = Array2::from_shape_vec((1, window.len()), window.clone()).unwrap();
        let logits = gpt.forward(&ids).unwrap();
        let last = logits.index_axis(Axis(1), window.len() - 1);
        let argmax = last
            .row(0)
            .iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 { (i, v) } else { best }
            })
            .0;
        assert_eq!(id, argmax);
        window.push(id);
        if window.len() > context {
            window = window[window.len() - slide_keep(context)..].to_vec();
        }
    }
}

#[test]
fn cached_inference_leaves_training_caches_alone() {
    let mut rng = StdRng::seed_from_u64(8);
    let mut gpt = Gpt::<f64>::new(config(7, 6, true), &mut rng).unwrap();
    let ids = random_ids(2, 6, 7, &mut rng);
    let targets = random_ids(2, 6, 7, &mut rng);
    gpt.loss(&ids, &targets).unwrap();
    gpt.backward_loss().unwrap();
    let mut reference = Vec::new();
    gpt.for_each_param(&mut |_, p| reference.push(p.grad.to_owned()));

    gpt.zero_grad();
    gpt.loss(&ids, &targets).unwrap();
    let mut cache = gpt.kv_cache(1).unwrap();
    cache.infer(&gpt, &random_ids(1, 3, 7, &mut rng)).unwrap();
    gpt.backward_loss().unwrap();
    let mut i = 0;
    gpt.for_each_param(&mut |name, p| {
        assert_eq!(p.grad, reference[i], "{name}");
        i += 1;
    });
}

/// Runs `gpt` on one id through `foreign`, a one-position cache of another model, requires
/// an error, and that the cache is as it was.
fn cache_err(gpt: &Gpt<f64>, foreign: &mut KvCache<f64>) -> Error {
    let keys: Vec<_> = foreign
        .layers()
        .iter()
        .map(|l| l.keys().to_owned())
        .collect();
    let err = foreign.infer(gpt, &ndarray::array![[1]]).unwrap_err();
    assert_eq!(foreign.len(), 1, "{err}");
    let after: Vec<_> = foreign
        .layers()
        .iter()
        .map(|l| l.keys().to_owned())
        .collect();
    assert_eq!(after, keys, "{err}");
    err
}

#[test]
fn bad_input_is_refused_and_the_cache_is_unchanged() {
    let mut rng = StdRng::seed_from_u64(9);
    let mut gpt = Gpt::<f64>::new(config(5, 4, true), &mut rng).unwrap();
    let mut cache = gpt.kv_cache(1).unwrap();
    cache.infer(&gpt, &ndarray::array![[1, 2]]).unwrap();
    let keys_before: Vec<_> = cache.layers().iter().map(|l| l.keys().to_owned()).collect();
    assert_eq!(keys_before.len(), 2, "one slot per attention layer");

    let err = cache.infer(&gpt, &ndarray::array![[1, 2, 3]]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SequenceLength {
                len: 5,
                context: 4,
                ..
            }
        ),
        "{err}"
    );
    let err = cache.infer(&gpt, &ndarray::array![[7]]).unwrap_err();
    assert!(matches!(err, Error::TokenOutOfRange { id: 7, .. }), "{err}");
    let err = cache.infer(&gpt, &ndarray::array![[1], [2]]).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let err = cache.infer(&gpt, &Array2::zeros((1, 0))).unwrap_err();
    assert!(matches!(err, Error::SequenceLength { .. }), "{err}");
    // A cache longer than the model's context still stops at the context.
    let mut long = KvCache::new(1, 8).unwrap();
    long.infer(&gpt, &ndarray::array![[1, 2, 3]]).unwrap();
    let err = long.infer(&gpt, &ndarray::array![[1, 2]]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SequenceLength {
                len: 5,
                context: 4,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(long.len(), 3);

    // A cache filled by another model: one with more attention layers, and one with another
    // key width. Both are refused and left as they were.
    let deeper = Gpt::<f64>::new(
        GptConfig {
            n_layers: 3,
            ..config(5, 8, true)
        },
        &mut rng,
    )
    .unwrap();
    let mut foreign = deeper.kv_cache(1).unwrap();
    foreign.infer(&deeper, &ndarray::array![[1]]).unwrap();
    let err = cache_err(&gpt, &mut foreign);
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    let narrower = Gpt::<f64>::new(
        GptConfig {
            mlp_hidden: 16,
            ..GptConfig::with_sizes(5, 6, 3, 2, 8)
        },
        &mut rng,
    )
    .unwrap();
    let mut foreign = narrower.kv_cache(1).unwrap();
    foreign.infer(&narrower, &ndarray::array![[1]]).unwrap();
    let err = cache_err(&gpt, &mut foreign);
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");

    // After all those errors the cache still holds exactly the two good positions.
    assert_eq!(cache.len(), 2);
    let keys_after: Vec<_> = cache.layers().iter().map(|l| l.keys().to_owned()).collect();
    assert_eq!(keys_after, keys_before);
    let next = cache.infer(&gpt, &ndarray::array![[3]]).unwrap();
    let full = gpt.forward(&ndarray::array![[1, 2, 3]]).unwrap();
    assert!(max_diff(next.view(), full.slice(s![.., 2..3, ..])) < 1e-12);

    let options = SampleOptions::default();
    let err = generate(&gpt, &[], 3, &options, &mut rng, |_| {}).unwrap_err();
    assert!(matches!(err, Error::SequenceLength { len: 0, .. }), "{err}");
    let err = generate(&gpt, &[9], 3, &options, &mut rng, |_| {}).unwrap_err();
    assert!(matches!(err, Error::TokenOutOfRange { id: 9, .. }), "{err}");
    let bad = SampleOptions {
        temperature: -1.0,
        top_k: None,
    };
    let err = generate(&gpt, &[1], 3, &bad, &mut rng, |_| {}).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    assert!(
        generate(&gpt, &[1], 0, &options, &mut rng, |_| {})
            .unwrap()
            .is_empty()
    );
}

#[test]
fn f32_generation_is_reproducible_with_a_seed() {
    let mut rng = StdRng::seed_from_u64(12);
    let gpt = Gpt::<f32>::new(config(13, 8, true), &mut rng).unwrap();
    let options = SampleOptions::default();
    let run = |seed| {
        generate(
            &gpt,
            &[1, 2],
            30,
            &options,
            &mut StdRng::seed_from_u64(seed),
            |_| {},
        )
        .unwrap()
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
}

#[test]
fn attention_maps_are_causal_distributions_and_the_cache_records_the_same_rows() {
    let mut rng = StdRng::seed_from_u64(31);
    let gpt = Gpt::<f64>::new(config(9, 8, true), &mut rng).unwrap();
    let ids = random_ids(2, 7, 9, &mut rng);
    let (logits, maps) = gpt.attention_maps(&ids).unwrap();
    assert_eq!(
        logits,
        gpt.infer(&ids).unwrap(),
        "recording changes nothing"
    );
    assert_eq!(maps.len(), gpt.config().n_layers);
    let heads = gpt.config().n_heads;
    for map in &maps {
        assert_eq!(map.shape(), &[2, heads, 7, 7]);
        for ((b, h, q, k), &p) in map.indexed_iter() {
            if k > q {
                assert_eq!(p, 0.0, "({b}, {h}, {q}, {k}) looks ahead");
            }
        }
        for row in map.lanes(Axis(3)) {
            assert!((row.sum() - 1.0).abs() < 1e-12);
        }
    }
    // Prefill 4 positions, then 3 more: the recorded rows are those of the full pass.
    let mut cache = gpt.kv_cache(2).unwrap();
    let (_, first) = cache
        .infer_recording(&gpt, &ids.slice(s![.., ..4]).to_owned())
        .unwrap();
    let (_, rest) = cache
        .infer_recording(&gpt, &ids.slice(s![.., 4..]).to_owned())
        .unwrap();
    for (layer, full) in maps.iter().enumerate() {
        assert_eq!(first[layer].shape(), &[2, heads, 4, 4]);
        assert_eq!(rest[layer].shape(), &[2, heads, 3, 7]);
        let close = |a: ndarray::ArrayView4<'_, f64>, b: ndarray::ArrayView4<'_, f64>| {
            a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() < 1e-12)
        };
        assert!(close(first[layer].view(), full.slice(s![.., .., ..4, ..4])));
        assert!(close(rest[layer].view(), full.slice(s![.., .., 4.., ..])));
    }
    // A plain cached pass records nothing and costs nothing extra.
    let mut plain = gpt.kv_cache(2).unwrap();
    plain.infer(&gpt, &ids).unwrap();
}

#[test]
fn generation_reports_the_distribution_each_token_was_drawn_from() {
    use baregpt::generate::generate_with;
    let mut rng = StdRng::seed_from_u64(32);
    let gpt = Gpt::<f64>::new(config(11, 6, true), &mut rng).unwrap();
    let options = SampleOptions {
        temperature: 0.9,
        top_k: Some(4),
    };
    let mut seen = Vec::new();
    let with = generate_with(
        &gpt,
        &[1, 2, 3],
        12,
        &options,
        &mut StdRng::seed_from_u64(5),
        |id, c| {
            let all = c.all();
            assert!(all.len() <= 4);
            assert!((all.iter().map(|(_, p)| p).sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(
                all.windows(2).all(|w| w[0].1 >= w[1].1),
                "most likely first"
            );
            assert!(c.probability(id) > 0.0, "{id} was drawn with probability 0");
            assert_eq!(c.top(2), &all[..2.min(all.len())]);
            seen.push(id);
        },
    )
    .unwrap();
    assert_eq!(with, seen);
    let plain = generate(
        &gpt,
        &[1, 2, 3],
        12,
        &options,
        &mut StdRng::seed_from_u64(5),
        |_| {},
    )
    .unwrap();
    assert_eq!(plain, with, "the same seed draws the same ids");
}
