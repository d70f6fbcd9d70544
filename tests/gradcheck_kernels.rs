//! Every public kernel of `baregpt::kernels`, checked as a function of its float inputs with
//! `gradcheck::check_fn` in f64, at random (often odd) shapes: the report is per
//! (output, input) pair, and the accumulation contract is checked wherever the kernel adds
//! into caller-provided gradient buffers (`linear`, `layer_norm`, `rms_norm`, `embedding`).
//! into caller-provided gradient buffers (`linear`, `layer_norm`, `embedding`,
//! `token_embedding`).
//! into caller-provided gradient buffers (`linear`, `layer_norm`, `embedding`, `tied_head`).

mod common;

use baregpt::gradcheck::{self, GradCheckReport, as_dim, as_dim_mut};
use baregpt::kernels::{
    DropoutMask, attention_backward, attention_dropout_backward, attention_dropout_forward,
    attention_forward, causal_softmax_forward, cross_entropy_backward, cross_entropy_forward,
    embedding_backward, embedding_forward, gelu_backward, gelu_forward, grouped_attention_backward,
    grouped_attention_forward, layer_norm_backward, layer_norm_forward, linear_backward,
    linear_forward, rms_norm_backward, rms_norm_forward, rope_backward, rope_forward,
    silu_backward, silu_forward, softmax_backward_in_place, swiglu_backward, swiglu_forward,
    tied_head_backward, tied_head_forward, token_embedding_backward, token_embedding_forward,
};
use baregpt::strategies;
use common::config;
use ndarray::{Array2, ArrayD, Ix1, Ix2, IxDyn};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const REGRESSIONS: &str = "proptest-regressions/gradcheck_kernels.txt";

/// An array of `shape` with entries uniform in `±2`.
fn array(shape: Vec<usize>) -> impl Strategy<Value = ArrayD<f64>> {
    let n: usize = shape.iter().product();
    proptest::collection::vec(-2.0..2.0f64, n).prop_map(move |v| {
        ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0])))
    })
}

/// The report passed and has one entry per expected `(output, input)` pair, in order.
fn passes(report: &GradCheckReport, pairs: &[(&str, &str)]) -> Result<(), TestCaseError> {
    let got: Vec<(String, String)> = report
        .tensors
        .iter()
        .map(|t| (t.output.clone().unwrap_or_default(), t.name.clone()))
        .collect();
    let want: Vec<(String, String)> = pairs
        .iter()
        .map(|(o, i)| (o.to_string(), i.to_string()))
        .collect();
    prop_assert_eq!(got, want);
    prop_assert!(report.passed(), "{}", report);
    Ok(())
}

proptest! {
    #![proptest_config(config(48, REGRESSIONS))]

    #[test]
    fn linear(
        (x, w, b, bias) in (1..=5usize, 1..=5usize, 1..=5usize, any::<bool>())
            .prop_flat_map(|(n, i, o, bias)| (array(vec![n, i]), array(vec![i, o]), array(vec![o]), Just(bias)))
    ) {
        let mut inputs = vec![("x", x), ("w", w)];
        if bias {
            inputs.push(("b", b));
        }
        let report = gradcheck::check_fn(
            &inputs,
            &["y"],
            |i| {
                let b = i.get(2).map(as_dim::<_, Ix1>).transpose()?;
                Ok(vec![linear_forward(as_dim(&i[0])?, as_dim(&i[1])?, b)?.into_dyn()])
            },
            |i, dy, grads| {
                let (dx, rest) = grads.split_at_mut(1);
                let (dw, db) = rest.split_at_mut(1);
                let d_b = db.first_mut().map(as_dim_mut::<_, Ix1>).transpose()?;
                let dx_new = linear_backward(as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&dy[0])?,
                                             as_dim_mut(&mut dw[0])?, d_b)?;
                dx[0] += &dx_new.into_dyn();
                Ok(())
            },
            &Default::default(),
        ).unwrap();
        let pairs: &[(&str, &str)] = if bias { &[("y", "x"), ("y", "w"), ("y", "b")] } else { &[("y", "x"), ("y", "w")] };
        passes(&report, pairs)?;
    }

    #[test]
    fn layer_norm(
        (x, gamma, beta) in (1..=5usize, 3..=7usize)
            .prop_flat_map(|(n, c)| (array(vec![n, c]), array(vec![c]), array(vec![c])))
    ) {
        let report = gradcheck::check_fn(
            &[("x", x), ("gamma", gamma), ("beta", beta)],
            &["y"],
            |i| Ok(vec![layer_norm_forward(as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&i[2])?, 1e-5)?.0.into_dyn()]),
            |i, dy, grads| {
                let gamma = as_dim::<_, Ix1>(&i[1])?;
                let (_, cache) = layer_norm_forward(as_dim(&i[0])?, gamma, as_dim(&i[2])?, 1e-5)?;
                let [dx, d_gamma, d_beta] = grads else { unreachable!("three inputs") };
                let dx_new = layer_norm_backward(&cache, as_dim(&dy[0])?, gamma,
                                                 as_dim_mut(d_gamma)?, as_dim_mut(d_beta)?)?;
                *dx += &dx_new.into_dyn();
                Ok(())
            },
            &Default::default(),
        ).unwrap();
        passes(&report, &[("y", "x"), ("y", "gamma"), ("y", "beta")])?;
    }

    /// Odd widths from 1 (a one-feature RMSNorm is `gamma·x/√(x² + eps)`, steep near 0).
    #[test]
    fn rms_norm(
        (x, gamma) in (1..=5usize, 1..=7usize)
            .prop_flat_map(|(n, c)| (array(vec![n, c]), array(vec![c])))
    ) {
        let report = gradcheck::check_fn(
            &[("x", x), ("gamma", gamma)],
            &["y"],
            |i| Ok(vec![rms_norm_forward(as_dim(&i[0])?, as_dim(&i[1])?, 1e-5)?.0.into_dyn()]),
            |i, dy, grads| {
                let gamma = as_dim::<_, Ix1>(&i[1])?;
                let (_, cache) = rms_norm_forward(as_dim(&i[0])?, gamma, 1e-5)?;
                let [dx, d_gamma] = grads else { unreachable!("two inputs") };
                let dx_new = rms_norm_backward(&cache, as_dim(&dy[0])?, gamma, as_dim_mut(d_gamma)?)?;
                *dx += &dx_new.into_dyn();
                Ok(())
            },
            &Default::default(),
        ).unwrap();
        passes(&report, &[("y", "x"), ("y", "gamma")])?;
    }

    #[test]
    fn silu(x in proptest::collection::vec(1..=4usize, 1..=3).prop_flat_map(array)) {
        let x = x * 3.0;
        let report = gradcheck::check_fn(
            &[("x", x)],
            &["y"],
            |i| Ok(vec![silu_forward(i[0].view())]),
            |i, dy, grads| {
                grads[0] += &silu_backward(i[0].view(), dy[0].view())?;
                Ok(())
            },
            &Default::default(),
        ).unwrap();
        passes(&report, &[("y", "x")])?;
    }

    #[test]
    fn swiglu(
        (gate, up) in proptest::collection::vec(1..=5usize, 1..=3)
            .prop_flat_map(|shape| (array(shape.clone()), array(shape)))
    ) {
        let report = gradcheck::check_fn(
            &[("gate", gate * 3.0), ("up", up)],
            &["a"],
            |i| Ok(vec![swiglu_forward(i[0].view(), i[1].view())?]),
            |i, d, grads| {
                let (d_gate, d_up) = swiglu_backward(i[0].view(), i[1].view(), d[0].view())?;
                grads[0] += &d_gate;
                grads[1] += &d_up;
                Ok(())
            },
            &Default::default(),
        ).unwrap();
        passes(&report, &[("a", "gate"), ("a", "up")])?;
    }

    #[test]
    fn gelu(x in proptest::collection::vec(1..=4usize, 1..=3).prop_flat_map(array)) {
        let report = gradcheck::check_fn(
            &[("x", x)],
            &["y"],
            |i| Ok(vec![gelu_forward(i[0].view())]),
            |i, dy, grads| {
                grads[0] += &gelu_backward(i[0].view(), dy[0].view())?;
                Ok(())
            },
            &Default::default(),
        ).unwrap();
        passes(&report, &[("y", "x")])?;
    }

    #[test]
    fn attention(
        (q, k, v, heads) in strategies::attention_dims(2, 5, 3, 3)
            .prop_flat_map(|(b, t, h, d)| {
                let s = vec![b, t, h * d];
                (array(s.clone()), array(s.clone()), array(s), Just(h))
            })
    ) {
        let report = gradcheck::check_fn(
            &[("q", q), ("k", k), ("v", v)],
            &["ctx"],
            |i| Ok(vec![attention_forward(as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&i[2])?, heads)?.0.into_dyn()]),
            |i, d, grads| {
                let (q, k, v) = (as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&i[2])?);
                let (_, probs) = attention_forward(q, k, v, heads)?;
                let (dq, dk, dv) = attention_backward(q, k, v, probs.view(), as_dim(&d[0])?)?;
                grads[0] += &dq.into_dyn();
                grads[1] += &dk.into_dyn();
                grads[2] += &dv.into_dyn();
                Ok(())
            },
            &Default::default(),
        ).unwrap();
        passes(&report, &[("ctx", "q"), ("ctx", "k"), ("ctx", "v")])?;
    }

    /// `H` query heads on `H_kv` key/value heads (every divisor of `H`, so multi-query and
    /// multi-head included), odd head sizes and `T_q ≤ T_k`.
    #[test]
    fn grouped_attention(
        (q, k, v, heads, kv_heads) in (1..=2usize, 1..=4usize, 0..=2usize, 1..=6usize, 1..=3usize)
            .prop_flat_map(|(b, t_q, extra, h, d)| {
                let divisors: Vec<usize> = (1..=h).filter(|g| h % g == 0).collect();
                (Just((b, t_q, t_q + extra, h, d)), proptest::sample::select(divisors))
            })
            .prop_flat_map(|((b, t_q, t_k, h, d), h_kv)| {
                (array(vec![b, t_q, h * d]), array(vec![b, t_k, h_kv * d]),
                 array(vec![b, t_k, h_kv * d]), Just(h), Just(h_kv))
            })
    ) {
        let report = gradcheck::check_fn(
            &[("q", q), ("k", k), ("v", v)],
            &["ctx"],
            |i| Ok(vec![grouped_attention_forward(as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&i[2])?,
                                                  heads, kv_heads)?.0.into_dyn()]),
            |i, d, grads| {
                let (q, k, v) = (as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&i[2])?);
                let (_, probs) = grouped_attention_forward(q, k, v, heads, kv_heads)?;
                let (dq, dk, dv) = grouped_attention_backward(q, k, v, probs.view(),
                                                              as_dim(&d[0])?, kv_heads)?;
                grads[0] += &dq.into_dyn();
                grads[1] += &dk.into_dyn();
                grads[2] += &dv.into_dyn();
                Ok(())
            },
            &Default::default(),
        ).unwrap();
        passes(&report, &[("ctx", "q"), ("ctx", "k"), ("ctx", "v")])?;
    }

    /// Dropout on the probabilities with a fixed mask: the function is then smooth.
    #[test]
    fn attention_with_dropout(
        (q, k, v, heads, seed) in (1..=2usize, 1..=4usize, 1..=3usize, 1..=3usize, any::<u64>())
            .prop_flat_map(|(b, t, h, d, seed)| {
                (array(vec![b, t, 2 * h * d]), array(vec![b, t, h * d]),
                 array(vec![b, t, h * d]), Just(2 * h), Just(seed))
            })
    ) {
        let mask = DropoutMask::new(0.3, seed, 1).unwrap();
        let kv_heads = heads / 2;
        let report = gradcheck::check_fn(
            &[("q", q), ("k", k), ("v", v)],
            &["ctx"],
            |i| Ok(vec![attention_dropout_forward(as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&i[2])?,
                                                  heads, kv_heads, &mask)?.0.into_dyn()]),
            |i, d, grads| {
                let (q, k, v) = (as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&i[2])?);
                let (_, probs) = attention_dropout_forward(q, k, v, heads, kv_heads, &mask)?;
                let (dq, dk, dv) = attention_dropout_backward(q, k, v, probs.view(),
                                                              as_dim(&d[0])?, kv_heads, &mask)?;
                grads[0] += &dq.into_dyn();
                grads[1] += &dk.into_dyn();
                grads[2] += &dv.into_dyn();
                Ok(())
            },
            &Default::default(),
        ).unwrap();
        passes(&report, &[("ctx", "q"), ("ctx", "k"), ("ctx", "v")])?;
    }

    /// Rotary embeddings at any start position and base, several heads of even size.
    #[test]
    fn rope(
        (x, d, start, theta) in (1..=2usize, 1..=5usize, 1..=3usize, 1..=3usize)
            .prop_flat_map(|(b, t, heads, half)| {
                (array(vec![b, t, heads * 2 * half]), Just(2 * half), 0..20usize,
                 prop_oneof![Just(10_000.0), 2.0..100.0f64])
            })
    ) {
        let report = gradcheck::check_fn(
            &[("x", x)],
            &["y"],
            |i| Ok(vec![rope_forward(as_dim(&i[0])?, d, start, theta)?.into_dyn()]),
            |_, dy, grads| {
                grads[0] += &rope_backward(as_dim(&dy[0])?, d, start, theta)?.into_dyn();
                Ok(())
            },
            &Default::default(),
        ).unwrap();
        passes(&report, &[("y", "x")])?;
    }

    #[test]
    fn cross_entropy(
        (logits, targets) in strategies::dims(3, 4, 6)
            .prop_flat_map(|(b, t, v)| (array(vec![b, t, v]), strategies::token_ids(b, t, v)))
    ) {
        let report = gradcheck::check_fn(
            &[("logits", logits)],
            &["loss"],
            |i| {
                let (loss, _) = cross_entropy_forward(as_dim(&i[0])?, targets.view())?;
                Ok(vec![ArrayD::from_elem(IxDyn(&[]), loss)])
            },
            |i, d, grads| {
                let (_, probs) = cross_entropy_forward(as_dim(&i[0])?, targets.view())?;
                let d_loss = d[0].iter().copied().next().unwrap_or(0.0);
                grads[0] += &cross_entropy_backward(probs.view(), targets.view(), d_loss)?.into_dyn();
                Ok(())
            },
            &Default::default(),
        ).unwrap();
        passes(&report, &[("loss", "logits")])?;
    }

    #[test]
    fn embedding(
        (ids, tok, pos) in (1..=6usize, 1..=4usize, 1..=5usize)
            .prop_flat_map(|(v, c, ctx)| (1..=2usize, 1..=ctx, Just((v, c, ctx))))
            .prop_flat_map(|(b, t, (v, c, ctx))| {
                (strategies::token_ids(b, t, v), array(vec![v, c]), array(vec![ctx, c]))
            })
    ) {
        let report = gradcheck::check_fn(
            &[("tok", tok), ("pos", pos)],
            &["y"],
            |i| Ok(vec![embedding_forward(ids.view(), as_dim(&i[0])?, as_dim(&i[1])?)?.into_dyn()]),
            |_, d, grads| {
                let [d_tok, d_pos] = grads else { unreachable!("two inputs") };
                embedding_backward(ids.view(), as_dim(&d[0])?, as_dim_mut(d_tok)?, as_dim_mut(d_pos)?)
            },
            &Default::default(),
        ).unwrap();
        passes(&report, &[("y", "tok"), ("y", "pos")])?;
    }

    /// The tied head `x·Eᵀ + b`: the table is `(V, C)`, token-major, as the embedding holds it.
    #[test]
    fn tied_head(
        (x, table, b, bias) in (1..=5usize, 1..=5usize, 1..=6usize, any::<bool>())
            .prop_flat_map(|(n, c, v, bias)| (array(vec![n, c]), array(vec![v, c]), array(vec![v]), Just(bias)))
    ) {
        let mut inputs = vec![("x", x), ("table", table)];
        if bias {
            inputs.push(("b", b));
        }
        let report = gradcheck::check_fn(
            &inputs,
            &["y"],
            |i| {
                let b = i.get(2).map(as_dim::<_, Ix1>).transpose()?;
                Ok(vec![tied_head_forward(as_dim(&i[0])?, as_dim(&i[1])?, b)?.into_dyn()])
            },
            |i, dy, grads| {
                let (dx, rest) = grads.split_at_mut(1);
                let (d_table, db) = rest.split_at_mut(1);
                let d_b = db.first_mut().map(as_dim_mut::<_, Ix1>).transpose()?;
                let dx_new = tied_head_backward(as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&dy[0])?,
                                                as_dim_mut(&mut d_table[0])?, d_b)?;
                dx[0] += &dx_new.into_dyn();
                Ok(())
            },
            &Default::default(),
        ).unwrap();
        let pairs: &[(&str, &str)] = if bias {
            &[("y", "x"), ("y", "table"), ("y", "b")]
        } else {
            &[("y", "x"), ("y", "table")]
        };
        passes(&report, pairs)?;
    }

    #[test]
    fn token_embedding(
        (ids, tok) in (1..=6usize, 1..=4usize, 1..=2usize, 1..=5usize)
            .prop_flat_map(|(v, c, b, t)| (strategies::token_ids(b, t, v), array(vec![v, c])))
    ) {
        let report = gradcheck::check_fn(
            &[("tok", tok)],
            &["y"],
            |i| Ok(vec![token_embedding_forward(ids.view(), as_dim(&i[0])?)?.into_dyn()]),
            |_, d, grads| token_embedding_backward(ids.view(), as_dim(&d[0])?, as_dim_mut(&mut grads[0])?),
            &Default::default(),
        ).unwrap();
        passes(&report, &[("y", "tok")])?;
    }

    #[test]
    fn causal_softmax(
        (scores, offset) in (1..=4usize, 1..=5usize)
            .prop_flat_map(|(tq, extra)| (array(vec![tq, tq + extra - 1]), 0..extra))
    ) {
        let report = gradcheck::check_fn(
            &[("scores", scores)],
            &["probs"],
            |i| {
                let mut p: Array2<f64> = as_dim::<_, Ix2>(&i[0])?.to_owned();
                causal_softmax_forward(p.view_mut(), offset);
                Ok(vec![p.into_dyn()])
            },
            |i, d, grads| {
                let mut p: Array2<f64> = as_dim::<_, Ix2>(&i[0])?.to_owned();
                causal_softmax_forward(p.view_mut(), offset);
                let mut ds: Array2<f64> = as_dim::<_, Ix2>(&d[0])?.to_owned();
                softmax_backward_in_place(p.view(), ds.view_mut())?;
                grads[0] += &ds.into_dyn();
                Ok(())
            },
            &Default::default(),
        ).unwrap();
        passes(&report, &[("probs", "scores")])?;
    }
}
