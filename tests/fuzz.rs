//! A seeded fuzz suite over the public API: at least 10,000 bad inputs per run to kernels,
//! layers, `Gpt`, the key/value cache, `Adam`, schedules, clipping, checkpoints (byte flips,
//! truncations, header edits), generation and sampling, the data helpers and the checker.
//!
//! Every call runs inside `catch_unwind` and is counted: a panic is a failure, and so is a
//! failed call after which the caller's values (parameters, gradients, optimizer state, the
//! buffers a kernel adds into, the file on disk) differ from a copy taken before it. Sizes
//! that would abort the process if a check were missing (allocations of terabytes) run in
//! child processes, so an abort is counted rather than ending the run. The counts are
//! printed (`cargo test --release --test fuzz -- --nocapture`) and must be 0 panics,
//! 0 aborts and 0 half-updates.
//!
//! The seed is fixed (`FUZZ_SEED` overrides it), so a failure reproduces.

mod common;

use baregpt::checkpoint::{self, Extras, OptimizerState, Storage};
use baregpt::data::{AdditionTask, CharVocab, Split, TextDataset, TokenDataset};
use baregpt::generate::{
    Candidates, SampleOptions, generate, generate_uncached, generate_with, sample_logits,
};
use baregpt::gpt::Head;
use baregpt::gpt::parts::{AttentionKind, HeadKind, MlpKind, NormKind, PositionKind};
use baregpt::gradcheck::{GradCheckOptions, check_layer};
use baregpt::kernels::{self, LayerNormCache, RmsNormCache};
use baregpt::layer::{InferState, KvCache};
use baregpt::layers::{
    Attention, AttentionConfig, AttentionKernel, Block, Embedding, Gelu, LayerNorm, Linear, Mlp,
    RmsNorm, Sequential, SwiGlu, TiedHead,
};
use baregpt::optim::{clip_grad_norm, clip_grad_norm_slices, grad_norm};
use baregpt::param::{Param2, ParamMap};
use baregpt::prelude::*;
use baregpt::{Adam, AdamConfig, CrossEntropy, Error, Gpt, GptConfig, LrSchedule};
use common::{Snapshot, snapshot};
use ndarray::{Array1, Array2, Array3, Array4, ArrayD, ArrayView2, ArrayView3, IxDyn};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::cell::RefCell;
use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;

thread_local! {
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The counts of one run.
#[derive(Default)]
struct Fuzz {
    /// Calls made.
    calls: usize,
    /// Calls refused with an error (the bad inputs that were caught).
    refused: usize,
    panics: usize,
    half_updates: usize,
    /// Breaches of a documented rule other than "no change" (for example backward after a
    /// failed forward, or an error message that names nothing).
    rule_breaks: usize,
    /// The first few problems, for the failure message.
    problems: Vec<String>,
}

impl Fuzz {
    fn problem(&mut self, what: String) {
        if self.problems.len() < 20 {
            self.problems.push(what);
        }
    }

    /// Runs `call` on `state` under `catch_unwind`; on an error requires `look(state)` to be
    /// what it was before. Returns the call's result (`None` after a panic).
    fn run<S: ?Sized, V: PartialEq, T>(
        &mut self,
        what: &str,
        state: &mut S,
        look: impl Fn(&S) -> V,
        call: impl FnOnce(&mut S) -> baregpt::Result<T>,
    ) -> Option<baregpt::Result<T>> {
        self.calls += 1;
        let before = look(state);
        match catch_unwind(AssertUnwindSafe(|| call(state))) {
            Err(_) => {
                self.panics += 1;
                let msg = LAST_PANIC.with(|m| m.borrow().clone());
                self.problem(format!("PANIC in {what}: {msg}"));
                None
            }
            Ok(Err(e)) => {
                self.refused += 1;
                if e.to_string().trim().is_empty() {
                    self.rule_breaks += 1;
                    self.problem(format!("{what}: an empty error message"));
                }
                if look(state) != before {
                    self.half_updates += 1;
                    self.problem(format!("HALF-UPDATE in {what}: failed with `{e}`"));
                }
                Some(Err(e))
            }
            Ok(Ok(v)) => Some(Ok(v)),
        }
    }

    /// [`Fuzz::run`] for a call with no state of the caller's.
    fn call<T>(&mut self, what: &str, call: impl FnOnce() -> baregpt::Result<T>) -> Option<T> {
        self.run(what, &mut (), |_| (), |_| call())?.ok()
    }

    /// [`Fuzz::run`] for a call that returns no `Result` (it must simply not panic).
    fn infallible<T>(&mut self, what: &str, call: impl FnOnce() -> T) -> Option<T> {
        self.call(what, || Ok(call()))
    }

    fn rule(&mut self, holds: bool, what: impl FnOnce() -> String) {
        if !holds {
            self.rule_breaks += 1;
            let w = what();
            self.problem(format!("RULE: {w}"));
        }
    }

    fn assert_clean(&self, name: &str, min_refused: usize) {
        println!(
            "fuzz {name}: {} calls, {} bad inputs refused, {} panics, {} half-updates, \
             {} rule breaks",
            self.calls, self.refused, self.panics, self.half_updates, self.rule_breaks
        );
        assert!(
            self.panics == 0 && self.half_updates == 0 && self.rule_breaks == 0,
            "{name}: {} panics, {} half-updates, {} rule breaks:\n{}",
            self.panics,
            self.half_updates,
            self.rule_breaks,
            self.problems.join("\n")
        );
        assert!(
            self.refused >= min_refused,
            "{name}: only {} bad inputs were refused (expected at least {min_refused})",
            self.refused
        );
    }
}

fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        LAST_PANIC.with(|m| *m.borrow_mut() = info.to_string());
    }));
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xF022)
}

/// A small size, zero included, now and then one that does not match anything.
fn size(r: &mut StdRng) -> usize {
    [0, 1, 1, 2, 2, 3, 3, 4, 5, 7, 8][r.random_range(0..11usize)]
}

/// A float that is usually ordinary and sometimes NaN, ±inf, huge or tiny.
fn float(r: &mut StdRng) -> f64 {
    match r.random_range(0..20u32) {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => f64::NEG_INFINITY,
        3 => 1e30,
        4 => -1e300,
        5 => f64::MAX,
        6 => 0.0,
        _ => r.random::<f64>() * 4.0 - 2.0,
    }
}

fn array3(shape: (usize, usize, usize), r: &mut StdRng) -> Array3<f64> {
    Array3::from_shape_fn(shape, |_| r.random::<f64>() * 2.0 - 1.0)
}

fn array2(shape: (usize, usize), r: &mut StdRng) -> Array2<f64> {
    Array2::from_shape_fn(shape, |_| r.random::<f64>() * 2.0 - 1.0)
}

fn ids(shape: (usize, usize), end: usize, r: &mut StdRng) -> Array2<usize> {
    Array2::from_shape_fn(shape, |_| r.random_range(0..end.max(1)))
}

fn bits1(a: &Array1<f64>) -> Vec<u64> {
    a.iter().map(|v| v.to_bits()).collect()
}

fn bits2(a: &Array2<f64>) -> Vec<u64> {
    a.iter().map(|v| v.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------------
// Kernels

fn fuzz_kernels(f: &mut Fuzz, r: &mut StdRng, rounds: usize) {
    for _ in 0..rounds {
        let (n, c, c_out) = (size(r), size(r), size(r));
        let x = array2((n, c), r);
        let c_in = if r.random_range(0..4u32) != 0 {
            c
        } else {
            size(r)
        };
        let w = array2((c_in, c_out), r);
        let b = Array1::<f64>::zeros(if r.random() { c_out } else { size(r) });
        let dy = array2((if r.random() { n } else { size(r) }, c_out), r);
        f.call("linear_forward", || {
            kernels::linear_forward(x.view(), w.view(), Some(b.view()))
        });
        let mut grads = (
            Array2::<f64>::from_elem(
                if r.random() {
                    w.dim()
                } else {
                    (size(r), size(r))
                },
                0.5,
            ),
            Array1::<f64>::from_elem(if r.random() { c_out } else { size(r) }, 0.25),
        );
        f.run(
            "linear_backward",
            &mut grads,
            |(gw, gb)| (bits2(gw), bits1(gb)),
            |(gw, gb)| {
                kernels::linear_backward(
                    x.view(),
                    w.view(),
                    dy.view(),
                    gw.view_mut(),
                    Some(gb.view_mut()),
                )
            },
        );

        // Layer norm, with caches that may not match (an `rstd` of the wrong length).
        let gamma = Array1::<f64>::ones(if r.random() { c } else { size(r) });
        let beta = Array1::<f64>::zeros(if r.random() { c } else { size(r) });
        let eps = if r.random() { 1e-5 } else { float(r) };
        let cache = f
            .call("layer_norm_forward", || {
                kernels::layer_norm_forward(x.view(), gamma.view(), beta.view(), eps)
            })
            .map(|(_, cache)| cache)
            .unwrap_or_else(|| LayerNormCache {
                x_hat: array2((n, c), r),
                rstd: Array1::ones(n),
            });
        let cache = if r.random_range(0..3u32) == 0 {
            LayerNormCache {
                rstd: Array1::ones(size(r)),
                ..cache
            }
        } else {
            cache
        };
        let dy_ln = array2(
            if r.random() {
                (n, c)
            } else {
                (size(r), size(r))
            },
            r,
        );
        let mut ln_grads = (
            Array1::<f64>::from_elem(if r.random() { c } else { size(r) }, 0.5),
            Array1::<f64>::from_elem(if r.random() { c } else { size(r) }, 0.5),
        );
        f.run(
            "layer_norm_backward",
            &mut ln_grads,
            |(g, b)| (bits1(g), bits1(b)),
            |(g, b)| {
                kernels::layer_norm_backward(
                    &cache,
                    dy_ln.view(),
                    gamma.view(),
                    g.view_mut(),
                    b.view_mut(),
                )
            },
        );

        // RMS norm, with caches that may not match (an `rstd` of the wrong length).
        let cache = f
            .call("rms_norm_forward", || {
                kernels::rms_norm_forward(x.view(), gamma.view(), eps)
            })
            .map(|(_, cache)| cache)
            .unwrap_or_else(|| RmsNormCache {
                x_hat: array2((n, c), r),
                rstd: Array1::ones(n),
            });
        let cache = if r.random_range(0..3u32) == 0 {
            RmsNormCache {
                rstd: Array1::ones(size(r)),
                ..cache
            }
        } else {
            cache
        };
        let mut rms_grad = Array1::<f64>::from_elem(if r.random() { c } else { size(r) }, 0.5);
        f.run("rms_norm_backward", &mut rms_grad, bits1, |g| {
            kernels::rms_norm_backward(&cache, dy_ln.view(), gamma.view(), g.view_mut())
        });

        // Element-wise, softmax.
        let x3 = array3((size(r), size(r), size(r)), r);
        let d3 = array3(
            if r.random() {
                x3.dim()
            } else {
                (size(r), size(r), size(r))
            },
            r,
        );
        f.infallible("gelu_forward", || kernels::gelu_forward(x3.view()));
        f.call("gelu_backward", || {
            kernels::gelu_backward(x3.view(), d3.view())
        });
        f.infallible("silu_forward", || kernels::silu_forward(x3.view()));
        f.call("silu_backward", || {
            kernels::silu_backward(x3.view(), d3.view())
        });
        let up = array3(
            if r.random() {
                x3.dim()
            } else {
                (size(r), size(r), size(r))
            },
            r,
        );
        f.call("swiglu_forward", || {
            kernels::swiglu_forward(x3.view(), up.view())
        });
        f.call("swiglu_backward", || {
            kernels::swiglu_backward(x3.view(), up.view(), d3.view())
        });
        let mut scores = array2((size(r), size(r)), r);
        let offset = match r.random_range(0..4u32) {
            0 => usize::MAX - r.random_range(0..3usize),
            _ => size(r),
        };
        f.infallible("causal_softmax_forward", || {
            kernels::causal_softmax_forward(scores.view_mut(), offset)
        });
        f.rule(
            scores
                .iter()
                .all(|p| p.is_finite() && (0.0..=1.0).contains(p)),
            || format!("causal_softmax_forward at offset {offset} gave {scores:?}"),
        );
        let mut d_probs = array2(
            if r.random() {
                scores.dim()
            } else {
                (size(r), size(r))
            },
            r,
        );
        f.run("softmax_backward_in_place", &mut d_probs, bits2, |d| {
            kernels::softmax_backward_in_place(scores.view(), d.view_mut())
        });

        // Embedding.
        let (v, t_max) = (size(r), size(r));
        let tok = array2((v, c), r);
        let pos = array2((t_max, if r.random() { c } else { size(r) }), r);
        let id = ids((size(r), size(r)), v + r.random_range(0..2usize), r);
        f.call("embedding_forward", || {
            kernels::embedding_forward(id.view(), tok.view(), pos.view())
        });
        let dy_e = array3((id.nrows(), id.ncols(), c), r);
        let mut e_grads = (
            Array2::<f64>::from_elem(tok.dim(), 0.5),
            Array2::<f64>::from_elem(if r.random() { pos.dim() } else { (size(r), c) }, 0.5),
        );
        f.run(
            "embedding_backward",
            &mut e_grads,
            |(a, b)| (bits2(a), bits2(b)),
            |(a, b)| {
                kernels::embedding_backward(id.view(), dy_e.view(), a.view_mut(), b.view_mut())
            },
        );

        // Attention.
        let (b_, t_q, t_k, h) = (size(r), size(r), size(r), size(r));
        let width = if r.random() { h * size(r) } else { size(r) };
        let q = array3((b_, t_q, width), r);
        let k = array3((b_, t_k, width), r);
        let vv = array3((if r.random() { b_ } else { size(r) }, t_k, width), r);
        let out = f.call("attention_forward", || {
            kernels::attention_forward(q.view(), k.view(), vv.view(), h)
        });
        let probs = match out {
            Some((_, p)) if r.random() => p,
            _ => Array4::from_elem((b_, h.max(1), size(r), t_k), 0.1),
        };
        let d_ctx = array3(
            if r.random() {
                q.dim()
            } else {
                (b_, size(r), width)
            },
            r,
        );
        f.call("attention_backward", || {
            kernels::attention_backward(q.view(), k.view(), vv.view(), probs.view(), d_ctx.view())
        });

        // Token-only embedding.
        f.call("token_embedding_forward", || {
            kernels::token_embedding_forward(id.view(), tok.view())
        });
        let mut t_grad = Array2::<f64>::from_elem(
            if r.random() {
                tok.dim()
            } else {
                (size(r), size(r))
            },
            0.5,
        );
        f.run("token_embedding_backward", &mut t_grad, bits2, |g| {
            kernels::token_embedding_backward(id.view(), dy_e.view(), g.view_mut())
        });

        // Grouped-query attention: key/value heads that may not divide the heads, keys of
        // any width.
        let h_kv = size(r);
        let kv_width = if r.random() {
            h_kv * width / h.max(1)
        } else {
            size(r)
        };
        let gk = array3((b_, t_k, kv_width), r);
        let gv = array3((b_, if r.random() { t_k } else { size(r) }, kv_width), r);
        let out = f.call("grouped_attention_forward", || {
            kernels::grouped_attention_forward(q.view(), gk.view(), gv.view(), h, h_kv)
        });
        let g_probs = match out {
            Some((_, p)) if r.random() => p,
            _ => Array4::from_elem((b_, h.max(1), size(r), t_k), 0.1),
        };
        f.call("grouped_attention_backward", || {
            kernels::grouped_attention_backward(
                q.view(),
                gk.view(),
                gv.view(),
                g_probs.view(),
                d_ctx.view(),
                h_kv,
            )
        });

        if let Ok(mask) = kernels::DropoutMask::new(r.random::<f64>() * 0.9, r.random(), 0) {
            let out = f.call("attention_dropout_forward", || {
                kernels::attention_dropout_forward(q.view(), gk.view(), gv.view(), h, h_kv, &mask)
            });
            let d_probs = match out {
                Some((_, p)) if r.random() => p,
                _ => g_probs.clone(),
            };
            f.call("attention_dropout_backward", || {
                kernels::attention_dropout_backward(
                    q.view(),
                    gk.view(),
                    gv.view(),
                    d_probs.view(),
                    d_ctx.view(),
                    h_kv,
                    &mask,
                )
            });
        }

        // Rotary embeddings: odd, zero and non-dividing head sizes, bad bases, huge starts.
        let head_dim = size(r);
        let start = if r.random() {
            size(r)
        } else {
            usize::MAX - size(r)
        };
        let theta = if r.random() { 10_000.0 } else { float(r) };
        f.call("rope_forward", || {
            kernels::rope_forward(q.view(), head_dim, start, theta)
        });
        f.call("rope_backward", || {
            kernels::rope_backward(q.view(), head_dim, start, theta)
        });

        // Cross-entropy, NaN and inf logits included.
        let logits = Array3::from_shape_fn((size(r), size(r), size(r)), |_| float(r));
        let targets = ids(
            if r.random() {
                (logits.dim().0, logits.dim().1)
            } else {
                (size(r), size(r))
            },
            logits.dim().2 + 1,
            r,
        );
        if let Some((loss, probs)) = f.call("cross_entropy_forward", || {
            kernels::cross_entropy_forward(logits.view(), targets.view())
        }) {
            // NaN policy: a NaN logit gives a NaN loss (f32 and f64 alike, checked below).
            if logits.iter().any(|v| v.is_nan()) {
                f.rule(loss.is_nan(), || format!("a NaN logit gave loss {loss}"));
            }
            f.call("cross_entropy_backward", || {
                kernels::cross_entropy_backward(probs.view(), targets.view(), float(r))
            });
        }
        let bad_probs = array3((size(r), size(r), size(r)), r);
        f.call("cross_entropy_backward", || {
            kernels::cross_entropy_backward(bad_probs.view(), targets.view(), 1.0)
        });
    }
    // Zero-element arrays whose other axes are huge: the outputs' sizes must be refused.
    let empty: [f64; 0] = [];
    let huge = 1usize << 40;
    let x = ArrayView2::from_shape((huge, 0), &empty).unwrap();
    let w = ArrayView2::from_shape((0, huge), &empty).unwrap();
    f.call("linear_forward (huge, 0)·(0, huge)", || {
        kernels::linear_forward(x, w, None)
    });
    let q = ArrayView3::from_shape((1 << 20, 1 << 20, 0), &empty).unwrap();
    f.call("attention_forward (2^20, 2^20, 0)", || {
        kernels::attention_forward(q, q, q, 1)
    });
}

// ---------------------------------------------------------------------------------------------
// Layers

/// Drives one float layer with bad shapes: every failed call changes nothing, and after a
/// failed forward backward is `BackwardBeforeForward` (the one rule for caches).
fn drive_layer<L: Layer<f64> + ?Sized>(
    f: &mut Fuzz,
    r: &mut StdRng,
    name: &str,
    layer: &mut L,
    width: usize,
) {
    let good = array3((1 + size(r) % 3, 1 + size(r) % 3, width), r);
    for _ in 0..4 {
        let shape = match r.random_range(0..3u32) {
            0 => good.dim(),
            1 => (size(r), size(r), width),
            _ => (size(r), size(r), size(r)),
        };
        let x = array3(shape, r);
        let y = f.run(name, layer, snapshot, |l| l.forward(&x));
        if let Some(Err(_)) = &y {
            let dy = array3(shape, r);
            let again = f.run(name, layer, snapshot, |l| l.backward(&dy));
            f.rule(
                matches!(again, Some(Err(Error::BackwardBeforeForward { .. }))),
                || format!("{name}: backward after a failed forward gave {again:?}"),
            );
        }
        let dy_shape = match (&y, r.random::<bool>()) {
            (Some(Ok(y)), true) => y.dim(),
            _ => (size(r), size(r), size(r)),
        };
        let dy = array3(dy_shape, r);
        f.run(name, layer, snapshot, |l| l.backward(&dy));
        f.run(name, layer, snapshot, |l| l.infer(&x));
        // A map with one wrong entry: import is all or nothing.
        let mut map = layer.export_params();
        let first = map.names().next().map(str::to_owned);
        if let Some(first) = first {
            match r.random_range(0..3u32) {
                0 => {
                    map.insert(first, ArrayD::zeros(IxDyn(&[size(r) + 9])));
                }
                1 => {
                    map.remove(&first);
                }
                _ => {
                    map.insert("no.such.param", ArrayD::zeros(IxDyn(&[1])));
                }
            }
            f.run(name, layer, snapshot, |l| l.import_params(&map));
        }
    }
}

fn fuzz_layers(f: &mut Fuzz, r: &mut StdRng, rounds: usize) {
    for _ in 0..rounds {
        let (c, h, k) = (size(r), size(r), size(r));
        let eps = if r.random() { 1e-5 } else { float(r) };
        if let Some(mut l) = f.call("Linear::new", || Linear::<f64>::new(c, h, r.random(), r)) {
            drive_layer(f, r, "Linear", &mut l, c);
        }
        f.call("Linear::from_arrays", || {
            Linear::from_arrays(array2((c, h), r), Some(Array1::zeros(k)))
        });
        if let Some(mut l) = f.call("LayerNorm::with_eps", || LayerNorm::<f64>::with_eps(c, eps)) {
            drive_layer(f, r, "LayerNorm", &mut l, c);
        }
        drive_layer(f, r, "Gelu", &mut Gelu::new(), c);
        if let Some(mut l) = f.call("Attention::new", || Attention::<f64>::new(c, h, r)) {
            drive_layer(f, r, "Attention", &mut l, c);
        }
        let attention = AttentionConfig {
            n_heads: h,
            n_kv_heads: if r.random() { h } else { size(r) },
            bias: r.random(),
            rope_theta: r
                .random::<bool>()
                .then(|| if r.random() { 1e4 } else { float(r) }),
            dropout: (if r.random() { 0.0 } else { float(r) }, r.random()),
            kernel: [
                AttentionKernel::Auto,
                AttentionKernel::Tiled,
                AttentionKernel::Plain,
            ][r.random_range(0..3)],
        };
        if let Some(mut l) = f.call("Attention::with_config", || {
            Attention::<f64>::with_config(c, attention, r)
        }) {
            drive_layer(f, r, "Attention (configured)", &mut l, c);
            // Decoding at an offset through a cache, which may be too short or too narrow.
            if let Ok(mut cache) = KvCache::new(1 + size(r) % 2, 1 + size(r)) {
                for _ in 0..2 {
                    let x = array3((size(r), size(r), if r.random() { c } else { size(r) }), r);
                    f.call("KvCache::infer (configured attention)", || {
                        cache.infer(&l, &x)
                    });
                }
            }
        }
        if let Some(mut l) = f.call("Mlp::new", || Mlp::<f64>::new(c, h, r)) {
            drive_layer(f, r, "Mlp", &mut l, c);
        }
        if let Some(mut l) = f.call("RmsNorm::with_eps", || RmsNorm::<f64>::with_eps(c, eps)) {
            f.rule(l.width() == c && l.gamma().value.len() == c, || {
                format!("RmsNorm::with_eps({c}, {eps}) has width {}", l.width())
            });
            drive_layer(f, r, "RmsNorm", &mut l, c);
        }
        if let Some(mut l) = f.call("SwiGlu::new", || SwiGlu::<f64>::new(c, h, r)) {
            let shapes = [
                l.w_gate().value.dim(),
                l.w_up().value.dim(),
                l.w_down().value.dim(),
            ];
            f.rule(
                l.width() == c && l.hidden() == h && shapes == [(c, h), (c, h), (h, c)],
                || format!("SwiGlu::new({c}, {h}) has weights {shapes:?}"),
            );
            drive_layer(f, r, "SwiGlu", &mut l, c);
        }
        // The part enums build what they count (or refuse, as the layer's constructor does).
        let norm = if r.random() {
            NormKind::LayerNorm { eps }
        } else {
            NormKind::RmsNorm { eps }
        };
        if let Some(l) = f.call("NormKind::build", || norm.build::<f64>(c)) {
            f.rule(Some(l.num_params()) == norm.param_count(c), || {
                format!("{norm:?} at width {c} has {} parameters", l.num_params())
            });
        }
        let mlp = if r.random() {
            MlpKind::Gelu
        } else {
            MlpKind::SwiGlu
        };
        if let Some(l) = f.call("MlpKind::build", || mlp.build::<f64, _>(c, h, r)) {
            f.rule(Some(l.num_params()) == mlp.param_count(c, h), || {
                format!("{mlp:?} at ({c}, {h}) has {} parameters", l.num_params())
            });
        }
        if let Some(mut l) = f.call("Block::new", || Block::<f64>::new(c, h, k, r)) {
            drive_layer(f, r, "Block", &mut l, c);
        }
        let seq = f.call("Sequential", || {
            Ok(Sequential::new()
                .push(Linear::<f64>::new(c.max(1), h.max(1), true, r)?)
                .push(Gelu::new())
                .push(LayerNorm::new(if r.random() {
                    h.max(1)
                } else {
                    k.max(1)
                })?))
        });
        if let Some(mut seq) = seq {
            drive_layer(f, r, "Sequential", &mut seq, c.max(1));
            let mut boxed: Box<dyn Layer<f64>> = Box::new(seq);
            drive_layer(f, r, "Box<dyn Layer>", &mut boxed, c.max(1));
        }
        // Embedding: ids out of range, too long, empty.
        let (v, t_max) = (size(r), size(r));
        let embed = if r.random() {
            f.call("Embedding::new", || Embedding::<f64>::new(v, c, t_max, r))
        } else {
            f.call("Embedding::token_only", || {
                Embedding::<f64>::token_only(v, c, t_max, r)
            })
        };
        if let Some(mut e) = embed {
            for _ in 0..3 {
                let id = ids((size(r), size(r)), v + r.random_range(0..2usize), r);
                let y = f.run("Embedding", &mut e, snapshot, |l| l.forward(&id));
                let dy = match &y {
                    Some(Ok(y)) if r.random() => Array3::ones(y.dim()),
                    _ => array3((size(r), size(r), size(r)), r),
                };
                f.run("Embedding", &mut e, snapshot, |l| l.backward(&dy));
                f.run("Embedding", &mut e, snapshot, |l| l.infer(&id));
            }
        }
        // CrossEntropy as a layer and as a loss.
        let mut ce = CrossEntropy::<f64>::new();
        let logits = array3((size(r), size(r), size(r)), r);
        let targets = ids((size(r), size(r)), logits.dim().2 + 1, r);
        f.call("CrossEntropy::forward without targets", || {
            ce.forward(&logits)
        });
        ce.set_targets(targets.clone());
        f.call("CrossEntropy::forward", || ce.forward(&logits));
        f.call("CrossEntropy::backward", || {
            ce.backward(&array3((1, 1, size(r)), r))
        });
        if f.call("CrossEntropy::loss", || ce.loss(&logits, &targets))
            .is_none()
        {
            let back = ce.backward_loss();
            f.rule(back.is_err(), || {
                "CrossEntropy: backward_loss after a failed loss".into()
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gpt, its cache and generation

fn small_config(r: &mut StdRng) -> GptConfig {
    let heads = 1 + size(r) % 2;
    GptConfig {
        mlp_hidden: 1 + size(r),
        final_norm: r.random(),
        norm: if r.random() {
            NormKind::default()
        } else {
            NormKind::RmsNorm { eps: 1e-6 }
        },
        mlp: if r.random() {
            MlpKind::Gelu
        } else {
            MlpKind::SwiGlu
        },
        ..GptConfig::with_sizes(
            1 + size(r),
            heads * (1 + size(r) % 3),
            heads,
            size(r) % 3,
            1 + size(r),
        )
    }
}

fn fuzz_gpt(f: &mut Fuzz, r: &mut StdRng, rounds: usize) {
    for _ in 0..rounds {
        let mut config = small_config(r);
        match r.random_range(0..6u32) {
            0 => config.d_model = size(r),
            1 => config.n_heads = size(r),
            2 => config.vocab_size = size(r),
            3 => config.context = size(r),
            _ => {}
        }
        // Any attention and positions: key/value heads that may not divide the heads,
        // rotary bases that may be invalid, head sizes that may be odd.
        if r.random() {
            config.attention = AttentionKind::GroupedQuery {
                n_kv_heads: if r.random() { 1 } else { size(r) },
                bias: r.random(),
            };
        }
        if r.random() {
            config.positions = PositionKind::Rotary {
                theta: if r.random() { 1e4 } else { float(r) },
            };
        }
        if r.random_range(0..3u32) == 0 {
            config.head = HeadKind::Tied { bias: r.random() };
        }
        let Some(mut gpt) = f.call("Gpt::new", || Gpt::<f64>::new(config.clone(), r)) else {
            continue;
        };
        let cfg = gpt.config().clone();
        for _ in 0..3 {
            let shape = (size(r), size(r) + r.random_range(0..2usize) * cfg.context);
            let id = ids(shape, cfg.vocab_size + r.random_range(0..2usize), r);
            let tg = ids(
                if r.random() {
                    shape
                } else {
                    (size(r), size(r))
                },
                cfg.vocab_size + r.random_range(0..2usize),
                r,
            );
            let loss = f.run("Gpt::loss", &mut gpt, snapshot, |g| g.loss(&id, &tg));
            if let Some(Err(_)) = loss {
                let back = f.run("Gpt::backward_loss", &mut gpt, snapshot, |g| {
                    g.backward_loss()
                });
                f.rule(matches!(back, Some(Err(_))), || {
                    "Gpt: backward_loss after a failed loss succeeded".into()
                });
            } else {
                f.run("Gpt::backward_loss", &mut gpt, snapshot, |g| {
                    g.backward_loss()
                });
            }
            let dy = array3((size(r), size(r), size(r)), r);
            f.run("Gpt::backward", &mut gpt, snapshot, |g| g.backward(&dy));
            f.run("Gpt::infer", &mut gpt, snapshot, |g| g.infer(&id));
            if let Some(Ok((logits, maps))) =
                f.run("Gpt::attention_maps", &mut gpt, snapshot, |g| {
                    g.attention_maps(&id)
                })
            {
                let t = id.ncols();
                f.rule(maps.len() == cfg.n_layers, || {
                    format!(
                        "attention_maps gave {} maps for {} layers",
                        maps.len(),
                        cfg.n_layers
                    )
                });
                f.rule(maps.iter().all(|m| m.shape()[2..] == [t, t]), || {
                    "attention_maps: a map that is not (B, H, T, T)".into()
                });
                f.rule(gpt.infer(&id).is_ok_and(|l| l == logits), || {
                    "attention_maps changed the logits".into()
                });
            }
            // Named access with names that exist and names that do not.
            let names = gpt.param_names();
            let name = match r.random_range(0..3u32) {
                0 => names[r.random_range(0..names.len())].clone(),
                1 => format!("blocks.{}.attn.w_q", size(r)),
                _ => String::new(),
            };
            let found = f.infallible("Params::param", || gpt.param(&name).is_some());
            f.rule(found == Some(names.contains(&name)), || {
                format!("param({name:?}) disagrees with param_names")
            });
            f.run("Params::param_mut", &mut gpt, snapshot, |g| {
                Ok(g.param_mut(&name).is_some())
            });
            // The key/value cache: bad batches and lengths change neither model nor cache.
            if let Some(mut cache) = f.call("Gpt::kv_cache", || gpt.kv_cache(1 + size(r) % 3)) {
                for _ in 0..3 {
                    let step = ids(
                        (if r.random() { cache.batch() } else { size(r) }, size(r)),
                        cfg.vocab_size + r.random_range(0..2usize),
                        r,
                    );
                    f.run(
                        "KvCache::infer",
                        &mut cache,
                        |c| (c.len(), c.layers().len()),
                        |c| c.infer(&gpt, &step),
                    );
                    f.run(
                        "KvCache::infer_recording",
                        &mut cache,
                        |c| (c.len(), c.layers().len()),
                        |c| c.infer_recording(&gpt, &step),
                    );
                }
            }
            // Generation: prompts with an out-of-range id (also where the window crops it),
            // empty prompts, bad options, absurd lengths.
            let mut prompt: Vec<usize> = (0..size(r) + cfg.context)
                .map(|_| r.random_range(0..cfg.vocab_size))
                .collect();
            if r.random() && !prompt.is_empty() {
                prompt[0] = cfg.vocab_size + r.random_range(0..3usize);
            }
            let options = SampleOptions {
                temperature: if r.random() { 1.0 } else { float(r) },
                top_k: if r.random() { Some(size(r)) } else { None },
            };
            let max_new = match r.random_range(0..4u32) {
                0 => usize::MAX,
                _ => size(r),
            };
            let bad_id = prompt.iter().any(|&i| i >= cfg.vocab_size);
            let got = f.call("generate", || {
                generate(&gpt, &prompt, max_new, &options, r, |_| {})
            });
            f.rule(!(bad_id && got.is_some()), || {
                "generate accepted a prompt with an out-of-range id".into()
            });
            f.call("generate_uncached", || {
                generate_uncached(&gpt, &prompt, max_new.min(3), &options, r, |_| {})
            });
            let mut drawn_from_nothing = false;
            let got = f.call("generate_with", || {
                generate_with(&gpt, &prompt, max_new.min(3), &options, r, |id, c| {
                    drawn_from_nothing |= c.probability(id) <= 0.0;
                })
            });
            f.rule(!(bad_id && got.is_some()), || {
                "generate_with accepted a prompt with an out-of-range id".into()
            });
            f.rule(!drawn_from_nothing, || {
                "generate_with drew a token of probability 0".into()
            });
        }
        // Loading parameters: any one bad entry refuses the whole map.
        let mut map: ParamMap<f64> = gpt.export_params();
        let names: Vec<String> = map.names().map(str::to_owned).collect();
        let victim = names[r.random_range(0..names.len())].clone();
        match r.random_range(0..3u32) {
            0 => {
                map.insert(victim, ArrayD::zeros(IxDyn(&[size(r), 1])));
            }
            1 => {
                map.remove(&victim);
            }
            _ => {
                map.insert(format!("{victim}.extra"), ArrayD::zeros(IxDyn(&[1])));
            }
        }
        f.run("Gpt::import_params", &mut gpt, snapshot, |g| {
            g.import_params(&map)
        });
    }
}

/// The tied head: its kernels, the layer and a built [`baregpt::gpt::Head`], each given tables,
/// inputs and upstream gradients whose sizes may disagree. A failed call changes neither the
/// head nor the table (value or gradient).
fn fuzz_tied_head(f: &mut Fuzz, r: &mut StdRng, rounds: usize) {
    let pick = |r: &mut StdRng, good: usize| if r.random() { good } else { size(r) };
    for _ in 0..rounds {
        let (n, c, v) = (size(r), size(r), size(r));
        let x = array2((n, pick(r, c)), r);
        let table = array2((v, c), r);
        let b = Array1::<f64>::zeros(pick(r, v));
        f.call("tied_head_forward", || {
            kernels::tied_head_forward(x.view(), table.view(), Some(b.view()))
        });
        let dy = array2((pick(r, n), pick(r, v)), r);
        let mut grads = (
            Array2::<f64>::from_elem((pick(r, v), pick(r, c)), 0.5),
            Array1::<f64>::from_elem(pick(r, v), 0.25),
        );
        f.run(
            "tied_head_backward",
            &mut grads,
            |(gt, gb)| (bits2(gt), bits1(gb)),
            |(gt, gb)| {
                kernels::tied_head_backward(
                    x.view(),
                    table.view(),
                    dy.view(),
                    gt.view_mut(),
                    Some(gb.view_mut()),
                )
            },
        );

        // The layer and the built head, with a table that may not fit them.
        let vocab = pick(r, v);
        let bias = r.random();
        let kind = HeadKind::Tied { bias };
        let Some(mut head) = f.call("HeadKind::build", || kind.build::<f64, _>(c, vocab, r)) else {
            continue;
        };
        let Some(mut layer) = f.call("TiedHead::new", || TiedHead::<f64>::new(vocab, bias)) else {
            continue;
        };
        let mut table = Param2::new(array2((v, c), r));
        let look = head_and_table::<TiedHead<f64>>;
        for _ in 0..3 {
            let x = array3((1 + size(r) % 3, 1 + size(r) % 3, pick(r, c)), r);
            let mut pair = (layer, table);
            let y = f.run("TiedHead::forward", &mut pair, look, |(l, t)| {
                l.forward(&x, t)
            });
            if let Some(Err(_)) = &y {
                let dy = array3((size(r), size(r), size(r)), r);
                let again = f.run("TiedHead::backward", &mut pair, look, |(l, t)| {
                    l.backward(&dy, t)
                });
                f.rule(
                    matches!(again, Some(Err(Error::BackwardBeforeForward { .. }))),
                    || format!("TiedHead: backward after a failed forward gave {again:?}"),
                );
            }
            f.run("TiedHead::infer", &mut pair, look, |(l, t)| l.infer(&x, t));
            let dy_shape = match (&y, r.random::<bool>()) {
                (Some(Ok(y)), true) => y.dim(),
                _ => (size(r), size(r), size(r)),
            };
            let dy = array3(dy_shape, r);
            f.run("TiedHead::backward", &mut pair, look, |(l, t)| {
                l.backward(&dy, t)
            });
            // The same calls through the Gpt's head type.
            let (l, t) = pair;
            let mut built = (head, t);
            let look = head_and_table::<Head<f64>>;
            f.run("Head::forward", &mut built, look, |(h, t)| h.forward(&x, t));
            f.run("Head::backward", &mut built, look, |(h, t)| {
                h.backward(&dy, t)
            });
            f.run("Head::infer_with", &mut built, look, |(h, t)| {
                h.infer_with(&x, &mut InferState::new(), t)
            });
            (layer, (head, table)) = (l, built);
        }
    }
}

/// What a failed head call must leave unchanged: the head's parameters and the table.
fn head_and_table<H: Params<f64>>(s: &(H, Param2<f64>)) -> (Snapshot, Vec<u64>, Vec<u64>) {
    (snapshot(&s.0), bits2(&s.1.value), bits2(&s.1.grad))
}

/// `n_layers = 0` works like any other depth: positions advance in the cache, cached and
/// uncached generation agree, and more ids than the context are refused.
fn zero_layers(f: &mut Fuzz, r: &mut StdRng) {
    let config = GptConfig {
        mlp_hidden: 4,
        ..GptConfig::with_sizes(7, 4, 2, 0, 5)
    };
    let gpt = Gpt::<f64>::new(config, r).unwrap();
    let prompt = [1, 2, 3];
    let (mut r1, mut r2) = (StdRng::seed_from_u64(1), StdRng::seed_from_u64(1));
    let opts = SampleOptions::default();
    let a = generate(&gpt, &prompt, 12, &opts, &mut r1, |_| {}).unwrap();
    let b = generate_uncached(&gpt, &prompt, 12, &opts, &mut r2, |_| {}).unwrap();
    f.rule(a == b, || {
        format!("n_layers = 0: cached {a:?} vs uncached {b:?}")
    });
    let mut cache = gpt.kv_cache(1).unwrap();
    let first = cache.infer(&gpt, &Array2::from_elem((1, 1), 3)).unwrap();
    let second = cache.infer(&gpt, &Array2::from_elem((1, 1), 3)).unwrap();
    f.rule(first != second, || {
        "n_layers = 0: positions restarted".into()
    });
    let too_long = Array2::zeros((1, 6));
    f.rule(gpt.infer(&too_long).is_err(), || {
        "n_layers = 0: T > context accepted".into()
    });
    let mut full = gpt.kv_cache(1).unwrap();
    f.run(
        "KvCache::infer",
        &mut full,
        |c| c.len(),
        |c| c.infer(&gpt, &Array2::zeros((1, 5))),
    );
    f.run(
        "KvCache::infer",
        &mut full,
        |c| c.len(),
        |c| c.infer(&gpt, &Array2::zeros((1, 1))),
    );
}

fn fuzz_sampling(f: &mut Fuzz, r: &mut StdRng, rounds: usize) {
    for _ in 0..rounds {
        let logits: Array1<f64> = (0..size(r)).map(|_| float(r)).collect();
        let options = SampleOptions {
            temperature: if r.random() { 0.8 } else { float(r) },
            top_k: if r.random() { None } else { Some(size(r)) },
        };
        let got = f.call("sample_logits", || {
            sample_logits(logits.view(), &options, r)
        });
        if let Some(id) = got {
            // An id of probability zero is never drawn: with a +inf logit, it is a +inf one.
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            f.rule(id < logits.len(), || format!("sample_logits gave id {id}"));
            if max == f64::INFINITY {
                f.rule(logits[id] == f64::INFINITY, || {
                    format!("sample_logits drew {id} of {logits:?}")
                });
            }
        }
        if let Some(c) = f.call("Candidates::new", || {
            Candidates::new(logits.view(), &options)
        }) {
            let total: f64 = c.all().iter().map(|(_, p)| p).sum();
            f.rule((total - 1.0).abs() < 1e-9, || {
                format!("Candidates of {logits:?}: probabilities sum to {total}")
            });
            f.rule(c.top(size(r)).len() <= c.all().len(), || {
                "Candidates::top gave more than all".into()
            });
        }
        let logits32 = logits.mapv(|v| v as f32);
        f.call("sample_logits f32", || {
            sample_logits(logits32.view(), &options, r)
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Optimizer, schedules, clipping

/// A small model with non-zero gradients.
fn trained_linear(r: &mut StdRng) -> Linear<f64> {
    let mut l = Linear::new(3, 2, true, r).unwrap();
    let x = array3((2, 2, 3), r);
    let y = l.forward(&x).unwrap();
    l.backward(&Array3::ones(y.dim())).unwrap();
    l
}

fn set_grads(l: &mut Linear<f64>, r: &mut StdRng, bad: bool) {
    l.for_each_param_mut(&mut |_, mut p| {
        p.grad
            .mapv_inplace(|_| if bad { float(r) } else { r.random::<f64>() });
    });
}

fn fuzz_optim(f: &mut Fuzz, r: &mut StdRng, rounds: usize) {
    for _ in 0..rounds {
        let config = AdamConfig {
            lr: if r.random() { 1e-3 } else { float(r) },
            beta1: if r.random() { 0.9 } else { float(r) },
            beta2: if r.random() { 0.999 } else { float(r) },
            eps: if r.random() { 1e-8 } else { float(r) },
            weight_decay: if r.random() { 0.0 } else { float(r) },
            decoupled_weight_decay: r.random(),
            amsgrad: r.random(),
            max_grad_norm: if r.random() { None } else { Some(float(r)) },
            schedule: LrSchedule::constant(),
        };
        f.call("Adam::new f32", || Adam::<f32>::new(config.clone()));
        let lr32 = AdamConfig::adam(1e39);
        let refused = Adam::<f32>::new(lr32).is_err();
        f.rule(refused, || "Adam<f32> accepted lr 1e39".into());
        f.call("LrSchedule::linear_warmup", || {
            LrSchedule::linear_warmup(r.random_range(0..3u64))
        });
        f.call("LrSchedule::warmup_cosine", || {
            LrSchedule::warmup_cosine(r.random_range(0..4u64), r.random_range(0..4u64), float(r))
        });
        let Some(mut adam) = f.call("Adam::new", || Adam::<f64>::new(config.clone())) else {
            continue;
        };
        let mut model = trained_linear(r);
        for _ in 0..4 {
            let bad = r.random();
            set_grads(&mut model, r, bad);
            let mut both = (&mut model, &mut adam);
            f.run(
                "Adam::step",
                &mut both,
                |(m, a)| (snapshot(&**m), a.export_state()),
                |(m, a)| a.step(&mut **m),
            );
            let reload = adam.load_state(adam.export_state());
            f.rule(reload.is_ok(), || {
                format!(
                    "Adam ({:?}) refuses to load its own exported state: {reload:?}",
                    adam.config()
                )
            });
            f.run(
                "Adam::set_lr",
                &mut adam,
                |a| a.config().clone(),
                |a| a.set_lr(float(r)),
            );
        }
        // Corrupted state: never loaded, never half-loaded.
        let mut state = adam.export_state();
        if let Some(p) = state.params.values_mut().next() {
            match r.random_range(0..3u32) {
                0 => p.m = ArrayD::from_elem(IxDyn(&[size(r) + 7]), 0.0),
                1 => p.v.iter_mut().for_each(|v| *v = -1.0),
                _ => p.m.iter_mut().for_each(|m| *m = f64::NAN),
            }
        }
        f.run(
            "Adam::load_state",
            &mut adam,
            |a| a.export_state(),
            |a| a.load_state(state),
        );
        // Huge finite gradients in f32: refused, never an infinite moment.
        let mut adam32 = Adam::<f32>::new(AdamConfig::adam(1e-3)).unwrap();
        let mut w = [0.0f32; 3];
        let g = [1e21f32, -3.0, 2e30];
        let mut both = (&mut w, &mut adam32);
        f.run(
            "Adam<f32>::step_slices huge",
            &mut both,
            |(w, a)| (w.map(f32::to_bits), a.export_state()),
            |(w, a)| a.step_slices(&mut [(&mut w[..], &g[..])]),
        );
        f.rule(adam32.load_state(adam32.export_state()).is_ok(), || {
            "Adam<f32> cannot reload its state after a huge gradient".into()
        });
        // Clipping.
        set_grads(&mut model, r, true);
        let max_norm = if r.random() { 1.0 } else { float(r) };
        f.run("clip_grad_norm", &mut model, snapshot, |m| {
            clip_grad_norm(m, max_norm)
        });
        f.call("grad_norm", || grad_norm(&model));
        let mut g: Vec<f64> = (0..size(r)).map(|_| float(r)).collect();
        f.run(
            "clip_grad_norm_slices",
            &mut g,
            |g| g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            |g| clip_grad_norm_slices(&mut [&mut g[..]], max_norm),
        );
        if max_norm == 1.0 && g.iter().all(|v| v.is_finite()) && !g.is_empty() {
            let norm: f64 = g.iter().map(|v| v * v).sum::<f64>().sqrt();
            f.rule(norm <= 1.0 + 1e-9, || {
                format!("clipped to norm {norm}: {g:?}")
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

fn fuzz_checkpoints(f: &mut Fuzz, r: &mut StdRng, rounds: usize) {
    let vocab = CharVocab::from_chars("abc\"\\\n".chars()).unwrap();
    let config = GptConfig {
        mlp_hidden: 4,
        ..GptConfig::with_sizes(vocab.len(), 4, 2, 1, 4)
    };
    let mut model = Gpt::<f64>::new(config.clone(), r).unwrap();
    let mut adam = Adam::new(AdamConfig::adam(1e-2)).unwrap();
    let ids = Array2::from_shape_fn((1, 4), |(_, t)| t % vocab.len());
    model.loss(&ids, &ids).unwrap();
    model.backward_loss().unwrap();
    adam.step(&mut model).unwrap();
    let extras = Extras {
        vocab: Some(vocab.clone()),
        optimizer: Some(OptimizerState::from_adam(&adam)),
        metadata: [("note".to_owned(), "ü \"quoted\"".to_owned())].into(),
    };
    let bytes = checkpoint::to_bytes(&model, &extras).unwrap();
    f.rule(
        checkpoint::to_bytes(&model, &extras).unwrap() == bytes,
        || "to_bytes is not deterministic".into(),
    );
    let (back, back_extras) = checkpoint::from_bytes::<f64>(&bytes).unwrap();
    f.rule(
        snapshot(&back)
            .iter()
            .map(|p| &p.1)
            .eq(snapshot(&model).iter().map(|p| &p.1)),
        || "a checkpoint does not round-trip".into(),
    );
    f.rule(back_extras == extras, || {
        "the extras do not round-trip".into()
    });
    // A vocabulary of another size is refused when saving, not only when loading.
    let wrong = Extras {
        vocab: Some(CharVocab::from_chars("xy".chars()).unwrap()),
        ..Extras::default()
    };
    f.call("to_bytes with a mismatched vocabulary", || {
        checkpoint::to_bytes(&model, &wrong)
    });

    // 16-bit storage: half the parameter bytes, the same guarantees when corrupted.
    let half_bytes = checkpoint::to_bytes_with(&model, &extras, Storage::F16).unwrap();
    f.call("to_bytes_with F16 of a huge value", || {
        let mut big = Gpt::<f64>::new(config.clone(), &mut StdRng::seed_from_u64(1))?;
        if let Some(mut p) = big.param_mut("embed.tok") {
            p.value[[0, 0]] = 1e300;
        }
        checkpoint::to_bytes_with(&big, &Extras::default(), Storage::F16)
    });

    let mut target = Gpt::<f64>::new(config.clone(), r).unwrap();
    for round in 0..rounds {
        let bytes = if round % 2 == 0 { &bytes } else { &half_bytes };
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut bad = bytes.clone();
        match r.random_range(0..5u32) {
            0 => {
                for _ in 0..1 + r.random_range(0..4usize) {
                    let i = r.random_range(0..bad.len());
                    bad[i] ^= 1 << r.random_range(0..8u32);
                }
            }
            1 => bad.truncate(r.random_range(0..bytes.len())),
            2 => {
                // An edit in the header's JSON (a digit, a quote, a brace).
                let i = 8 + r.random_range(0..header_len);
                bad[i] = b"0123456789\"{}[],:9e"[r.random_range(0..19usize)];
            }
            3 => {
                // A header length that lies.
                let n = r.random_range(0..u64::MAX);
                bad[..8].copy_from_slice(&n.to_le_bytes());
            }
            _ => {
                // A plausible edit of a recorded size, the header length kept consistent.
                let header = String::from_utf8_lossy(&bytes[8..8 + header_len]).into_owned();
                let field = ["vocab_size", "d_model", "n_layers", "context", "n_heads"]
                    [r.random_range(0..5usize)];
                let value = ["0", "1", "99999999999", "18446744073709551615", "-1", "x"]
                    [r.random_range(0..6usize)];
                let key = format!("\"config.{field}\":\"");
                if let Some(at) = header.find(&key) {
                    let start = at + key.len();
                    let end = start + header[start..].find('"').unwrap_or(0);
                    let edited = header[..start].to_owned() + value + &header[end..];
                    bad = (edited.len() as u64).to_le_bytes().to_vec();
                    bad.extend_from_slice(edited.as_bytes());
                    bad.extend_from_slice(&bytes[8 + header_len..]);
                }
            }
        }
        f.call("from_bytes", || checkpoint::from_bytes::<f64>(&bad));
        f.call("from_bytes f32", || checkpoint::from_bytes::<f32>(&bad));
        f.run("load_bytes_into", &mut target, snapshot, |m| {
            checkpoint::load_bytes_into(&bad, m)
        });
        f.run("load_params_bytes_into", &mut target, snapshot, |m| {
            checkpoint::load_params_bytes_into(&bad, m)
        });
    }
    // Files: a failed save leaves the file as it was; a failed load leaves the model.
    let dir = std::env::temp_dir().join(format!("baregpt-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    checkpoint::save(&path, &model, &extras).unwrap();
    let on_disk = |p: &std::path::Path| std::fs::read(p).ok();
    let mut p = path.clone();
    f.run(
        "save with a bad vocabulary",
        &mut p,
        |p| on_disk(p),
        |p| checkpoint::save(&*p, &model, &wrong),
    );
    let mut missing_dir = dir.join("no/such/dir/model.safetensors");
    f.run(
        "save into a missing directory",
        &mut missing_dir,
        |p| on_disk(p),
        |p| checkpoint::save(&*p, &model, &extras),
    );
    let other = Gpt::<f64>::new(GptConfig::with_sizes(5, 4, 2, 1, 4), r).unwrap();
    let mut other = other;
    f.run("load_into another config", &mut other, snapshot, |m| {
        checkpoint::load_into(&path, m)
    });
    f.call("load a missing file", || {
        checkpoint::load::<f64>(dir.join("absent"))
    });
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    f.rule(leftovers.is_empty(), || {
        format!("temporary files left: {leftovers:?}")
    });
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Data helpers and the checker

/// The helpers a user's layer is written with: the row reshapes, the width check and `Cache`.
fn fuzz_layer_helpers(f: &mut Fuzz, r: &mut StdRng, rounds: usize) {
    use baregpt::layer::{Cache, check_width, from_rows, into_rows, rows};
    for _ in 0..rounds {
        let x = array3((size(r), size(r), size(r)), r);
        let c = size(r);
        let bt = f.call("check_width", || check_width("fuzz", "input", x.view(), c));
        f.rule(bt.is_some() == (x.dim().2 == c), || {
            format!("check_width accepted {:?} for width {c}", x.shape())
        });
        let flat = f.infallible("rows", || rows(x.view()).into_owned());
        let owned = f.infallible("into_rows", || into_rows(x.clone()));
        f.rule(flat == owned, || "rows and into_rows disagree".into());
        let shape = (size(r), size(r));
        if let (Some(flat), Some(back)) = (
            flat.clone(),
            flat.and_then(|m| f.call("from_rows", || from_rows("fuzz", m, shape))),
        ) {
            f.rule(
                back.len() == flat.len() && back.dim().2 == flat.ncols(),
                || "from_rows changed the elements".into(),
            );
        }
        let mut cache = Cache::<Vec<f64>>::new();
        if r.random() {
            cache.store(vec![1.0], (size(r), size(r), size(r)));
        }
        let dy = array3((size(r), size(r), size(r)), r);
        let expected = cache.output_shape();
        let got = f.call("Cache::get", || cache.get("fuzz", &dy).map(|v| v.len()));
        f.rule(got.is_some() == (expected == Some(dy.dim())), || {
            format!(
                "Cache::get with dy {:?} and output {expected:?}",
                dy.shape()
            )
        });
    }
}

fn fuzz_data(f: &mut Fuzz, r: &mut StdRng, rounds: usize) {
    let alphabet = ['a', 'b', 'c', 'é', '\n', ' ', '\u{0}'];
    for _ in 0..rounds {
        let text: String = (0..size(r) * 3)
            .map(|_| alphabet[r.random_range(0..7usize)])
            .collect();
        f.call("CharVocab::from_text", || CharVocab::from_text(&text));
        f.call("CharVocab::from_chars", || {
            CharVocab::from_chars(text.chars())
        });
        if let Some(vocab) = f.call("CharVocab::from_text", || CharVocab::from_text("abc")) {
            f.call("encode", || vocab.encode(&text));
            let bad: Vec<usize> = (0..size(r)).map(|_| r.random_range(0..6usize)).collect();
            f.call("decode", || vocab.decode(&bad));
        }
        let fraction = if r.random() { 0.2 } else { float(r) };
        if let Some(data) = f.call("TextDataset::new", || TextDataset::new(&text, fraction)) {
            let (b, t) = match r.random_range(0..4u32) {
                0 => (usize::MAX, 2),
                1 => (1 << 40, 1 << 40),
                _ => (size(r), size(r)),
            };
            let split = if r.random() {
                Split::Train
            } else {
                Split::Validation
            };
            f.call("TextDataset::batch", || data.batch(split, b, t, r));
        }
        let ids: Vec<usize> = (0..size(r) * 2)
            .map(|_| r.random_range(0..9usize))
            .collect();
        if let Some(data) = f.call("TokenDataset::from_ids", || {
            TokenDataset::from_ids(ids, fraction)
        }) {
            let (b, t) = if r.random() {
                (1 << 40, 1 << 40)
            } else {
                (size(r), size(r))
            };
            f.call("TokenDataset::batch", || {
                data.batch(Split::Validation, b, t, r)
            });
        }
        let digits = size(r) + r.random_range(0..2usize) * 5;
        if let Some(task) = f.call("AdditionTask::new", || AdditionTask::new(digits)) {
            let n = match r.random_range(0..3u32) {
                0 => usize::MAX,
                1 => 1 << 60,
                _ => size(r),
            };
            f.call("train_pairs", || task.train_pairs(n, r));
            f.call("held_out_pairs", || task.held_out_pairs(n.min(3), r));
            f.infallible("AdditionTask::parse_answer", || task.parse_answer(&text));
        }
    }
}

fn fuzz_checker(f: &mut Fuzz, r: &mut StdRng, rounds: usize) {
    // Valid options only (the options' validation belongs to the checker's own tests); the
    // inputs are what is bad here.
    let options = GradCheckOptions::default();
    for _ in 0..rounds {
        let c = 1 + size(r) % 3;
        let mut layer = Linear::<f64>::new(c, 2, true, r).unwrap();
        let x = array3((size(r), size(r), if r.random() { c } else { size(r) }), r);
        f.run("check_layer", &mut layer, snapshot, |l| {
            check_layer(l, &x, &options)
        });
    }
}

// ---------------------------------------------------------------------------------------------
// f32 and f64 agree on NaN and inf

fn nan_policy(f: &mut Fuzz) {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let logits = ndarray::array![[[0.5, bad, -1.0]]];
        let targets = ndarray::array![[0]];
        let l64 = kernels::cross_entropy_forward(logits.view(), targets.view());
        let l32 = kernels::cross_entropy_forward(logits.mapv(|v| v as f32).view(), targets.view());
        match (l64, l32) {
            (Ok((a, _)), Ok((b, _))) => {
                let same = (a.is_nan() && b.is_nan())
                    || (a - f64::from(b)).abs() <= 1e-5 * a.abs().max(1.0);
                f.rule(same, || format!("logit {bad}: f64 loss {a}, f32 loss {b}"));
            }
            (a, b) => f.rule(a.is_err() == b.is_err(), || {
                format!("logit {bad}: {a:?} vs {b:?}")
            }),
        }
        let x = ndarray::array![[[0.5, bad, -1.0, 2.0]]];
        let ln64 = LayerNorm::<f64>::new(4).unwrap().infer(&x).unwrap();
        let ln32 = LayerNorm::<f32>::new(4)
            .unwrap()
            .infer(&x.mapv(|v| v as f32))
            .unwrap();
        let agree = ln64
            .iter()
            .zip(&ln32)
            .all(|(a, b)| a.is_nan() == b.is_nan() && a.is_infinite() == b.is_infinite());
        f.rule(agree, || {
            format!("LayerNorm of {bad}: {ln64:?} vs {ln32:?}")
        });
        let rms64 = RmsNorm::<f64>::new(4).unwrap().infer(&x).unwrap();
        let rms32 = RmsNorm::<f32>::new(4)
            .unwrap()
            .infer(&x.mapv(|v| v as f32))
            .unwrap();
        let agree = rms64
            .iter()
            .zip(&rms32)
            .all(|(a, b)| a.is_nan() == b.is_nan() && a.is_infinite() == b.is_infinite());
        f.rule(agree, || {
            format!("RmsNorm of {bad}: {rms64:?} vs {rms32:?}")
        });
        let s64 = kernels::silu_forward(x.view());
        let s32 = kernels::silu_forward(x.mapv(|v| v as f32).view());
        let agree = s64
            .iter()
            .zip(&s32)
            .all(|(a, b)| a.is_nan() == b.is_nan() && a.is_infinite() == b.is_infinite());
        f.rule(agree, || format!("silu of {bad}: {s64:?} vs {s32:?}"));
        let g64 = kernels::gelu_forward(x.view());
        let g32 = kernels::gelu_forward(x.mapv(|v| v as f32).view());
        let agree = g64.iter().zip(&g32).all(|(a, b)| a.is_nan() == b.is_nan());
        f.rule(agree, || format!("gelu of {bad}: {g64:?} vs {g32:?}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes that would abort if a check were missing: in child processes.

const CHILD: &str = "BAREGPT_FUZZ_CHILD";

/// The huge-size cases of group `group`; each must be refused with an error.
fn huge_sizes(f: &mut Fuzz, group: &str) {
    let mut r = StdRng::seed_from_u64(1);
    let r = &mut r;
    // Each is over the per-allocation limit (or overflows) in every place it is used.
    let big = [1usize << 40, usize::MAX / 2, usize::MAX];
    match group {
        "layers" => {
            for &n in &big {
                f.call("Linear::new", || Linear::<f32>::new(n, n, true, r));
                f.call("Linear::new", || Linear::<f32>::new(1, n, true, r));
                f.call("Embedding::new", || Embedding::<f32>::new(n, 8, 4, r));
                f.call("Embedding::new", || Embedding::<f32>::new(8, 8, n, r));
                f.call("Attention::new", || Attention::<f32>::new(n, 1, r));
                f.call("Attention::with_config", || {
                    Attention::<f32>::with_config(n, AttentionConfig::new(1).rotary(1e4), r)
                });
                f.call("Embedding::token_only", || {
                    Embedding::<f32>::token_only(n, 8, 4, r)
                });
                f.call("Mlp::new", || Mlp::<f32>::new(8, n, r));
                f.call("Block::new", || Block::<f32>::new(8, 2, n, r));
                f.call("LayerNorm::new", || LayerNorm::<f32>::new(n));
                f.call("RmsNorm::new", || RmsNorm::<f32>::new(n));
                f.call("SwiGlu::new", || SwiGlu::<f32>::new(8, n, r));
                f.call("SwiGlu::new", || SwiGlu::<f32>::new(n, 8, r));
            }
            // Just over the limit: (2^17 + 1)² f32s.
            let n = (1 << 17) + 1;
            f.call("Linear::new just over", || {
                Linear::<f32>::new(n, n, true, r)
            });
        }
        "gpt" => {
            for &n in &big {
                for edit in 0..5 {
                    let mut c = GptConfig::tiny(10);
                    match edit {
                        0 => c.vocab_size = n,
                        1 => c.context = n,
                        2 => c.d_model = n,
                        3 => c.n_layers = n,
                        _ => c.mlp_hidden = n,
                    }
                    f.call("Gpt::new", || Gpt::<f32>::new(c.clone(), r));
                    c.norm = NormKind::RmsNorm { eps: 1e-6 };
                    c.mlp = MlpKind::SwiGlu;
                    f.call("Gpt::new (RMSNorm, SwiGLU)", || Gpt::<f32>::new(c, r));
                }
            }
            let mut c = GptConfig::tiny(10);
            c.d_model = 1 << 40;
            c.n_heads = 1;
            f.call("Gpt::new d_model 2^40", || Gpt::<f32>::new(c, r));
            let mut c = GptConfig::tiny(10);
            c.n_layers = 1 << 30;
            f.call("Gpt::new n_layers 2^30", || Gpt::<f32>::new(c, r));
        }
        "cache" => {
            for &n in &big {
                f.call("KvCache::new", || KvCache::<f32>::new(n, 8));
                f.call("KvCache::new", || KvCache::<f32>::new(8, n));
            }
            let gpt = Gpt::<f32>::new(GptConfig::tiny(10), r).unwrap();
            f.call("Gpt::kv_cache 2^40", || gpt.kv_cache(1 << 40));
            // Lazily made slots: 2^13 sequences of capacity 2^16, width 64 (2^37 bytes).
            let mut cache = KvCache::<f32>::new(1 << 13, 1 << 16).unwrap();
            let mut c = GptConfig::tiny(10);
            c.context = 1 << 16;
            let wide = Gpt::<f32>::new(c, r).unwrap();
            let ids = Array2::zeros((1 << 13, 1));
            f.run(
                "KvCache::infer, slots too large",
                &mut cache,
                |c| c.len(),
                |c| c.infer(&wide, &ids),
            );
            let opts = SampleOptions::default();
            f.call("generate usize::MAX", || {
                generate(&gpt, &[1], usize::MAX, &opts, r, |_| {})
            });
            f.call("generate_uncached usize::MAX", || {
                generate_uncached(&gpt, &[1], usize::MAX, &opts, r, |_| {})
            });
        }
        "data" => {
            let data = TextDataset::new(&"abcdefgh".repeat(10), 0.1).unwrap();
            for &n in &big {
                f.call("TextDataset::batch", || data.batch(Split::Train, n, 2, r));
                f.call("TextDataset::batch", || data.batch(Split::Train, 2, n, r));
            }
            let task = AdditionTask::new(3).unwrap();
            for &n in &big {
                f.call("train_pairs", || task.train_pairs(n, r));
            }
        }
        other => panic!("no group {other}"),
    }
}

#[test]
#[ignore = "run in a child process by `huge_sizes_are_refused_in_child_processes`"]
fn huge_sizes_child() {
    let Ok(group) = std::env::var(CHILD) else {
        return;
    };
    quiet_panics();
    let mut f = Fuzz::default();
    huge_sizes(&mut f, &group);
    // Every huge size must be refused (an accepted one would have allocated terabytes).
    let accepted = f.calls - f.refused - f.panics;
    println!(
        "CHILD calls={} refused={} panics={} half={} accepted={accepted} problems={:?}",
        f.calls, f.refused, f.panics, f.half_updates, f.problems
    );
}

#[test]
fn huge_sizes_are_refused_in_child_processes() {
    let exe = std::env::current_exe().unwrap();
    let (mut calls, mut refused, mut panics, mut aborts, mut half) = (0, 0, 0, 0, 0);
    let mut problems = Vec::new();
    for group in ["layers", "gpt", "cache", "data"] {
        let out = Command::new(&exe)
            .args([
                "--exact",
                "huge_sizes_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, group)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        // (The harness may print the test's name on the same line.)
        let line = stdout
            .lines()
            .find_map(|l| l.find("CHILD ").map(|at| &l[at..]));
        match (out.status.success(), line) {
            (true, Some(line)) => {
                let field = |name: &str| -> usize {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{name}=")))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(usize::MAX)
                };
                calls += field("calls");
                refused += field("refused");
                panics += field("panics");
                half += field("half");
                if field("accepted") != 0 || field("panics") != 0 || field("half") != 0 {
                    problems.push(format!("{group}: {line}"));
                }
            }
            _ => {
                aborts += 1;
                problems.push(format!(
                    "{group}: the child process died ({:?}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    println!(
        "fuzz huge sizes (child processes): {calls} calls, {refused} refused, {panics} panics, \
         {aborts} aborts, {half} half-updates"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(refused >= 50, "only {refused} huge sizes were tried");
}

// ---------------------------------------------------------------------------------------------
// Dropout: the mask kernels, sites, the layer, residual dropout and a Gpt with dropout

/// A drop probability, valid or not (out of range, NaN, infinite, at the edges).
fn probability(r: &mut StdRng) -> f64 {
    match r.random_range(0..8u32) {
        0 => 1.0,
        1 => -r.random::<f64>(),
        2 => f64::NAN,
        3 => f64::INFINITY,
        4 => 1.0 - f64::EPSILON / 2.0,
        5 => 0.0,
        _ => r.random::<f64>() * 0.9,
    }
}

fn fuzz_dropout(f: &mut Fuzz, r: &mut StdRng, rounds: usize) {
    use baregpt::layer::{DropoutMode, DropoutSite};
    use baregpt::layers::Dropout;
    for _ in 0..rounds {
        let p = probability(r);
        let (seed, pass) = (r.random::<u64>(), r.random::<u64>());
        f.call("check_probability", || {
            kernels::dropout::check_probability(p)
        });
        if let Some(mask) = f.call("DropoutMask::new", || {
            kernels::DropoutMask::new(p, seed, pass)
        }) {
            let x = array3((size(r), size(r), size(r)), r);
            f.infallible("dropout_forward", || {
                kernels::dropout_forward(x.view(), &mask)
            });
            f.infallible("dropout_backward", || {
                kernels::dropout_backward(x.view(), &mask)
            });
            f.infallible("DropoutMask::apply_in_place", || {
                let mut y = x.clone();
                mask.apply_in_place(y.view_mut(), r.random());
            });
        }
        if let Some(mut site) = f.call("DropoutSite::new", || DropoutSite::new(p, seed)) {
            site.set_passes(if r.random() { u64::MAX } else { pass });
            f.infallible("DropoutSite::next_mask", || site.next_mask());
            site.set_mode(DropoutMode::Hold);
            f.infallible("DropoutSite::peek_mask", || site.peek_mask());
        }
        let c = size(r);
        if let Some(mut l) = f.call("Dropout::new", || Dropout::<f64>::new(p, seed)) {
            drive_layer(f, r, "Dropout", &mut l, c);
            l.set_dropout(DropoutMode::Hold);
            drive_layer(f, r, "Dropout (Hold)", &mut l, c);
        }
        let block = f.call("Block::with_residual_dropout", || {
            Block::<f64>::new(c, 1 + size(r) % 2, size(r), r)?
                .with_residual_dropout(p, [seed, pass])
        });
        if let Some(mut l) = block {
            drive_layer(f, r, "Block (residual dropout)", &mut l, c);
        }
        let mut config = small_config(r);
        config.dropout = baregpt::DropoutConfig {
            embed: probability(r),
            attention: if r.random() { 0.0 } else { probability(r) },
            residual: probability(r),
        };
        f.call("GptConfig::validate (dropout)", || config.validate());
        let Some(mut gpt) = f.call("Gpt::new (dropout)", || Gpt::<f64>::new(config.clone(), r))
        else {
            continue;
        };
        let cfg = gpt.config().clone();
        for mode in [DropoutMode::Train, DropoutMode::Hold, DropoutMode::Off] {
            gpt.set_dropout(mode);
            let shape = (size(r), size(r) + r.random_range(0..2usize) * cfg.context);
            let id = ids(shape, cfg.vocab_size + r.random_range(0..2usize), r);
            let tg = ids(shape, cfg.vocab_size + r.random_range(0..2usize), r);
            // A failed call draws no mask either: the sites' pass counts are part of the look.
            let look = |g: &Gpt<f64>| {
                let passes: Vec<u64> = g.dropout_sites().iter().map(|s| s.passes()).collect();
                (snapshot(g), passes)
            };
            f.run("Gpt::loss (dropout)", &mut gpt, look, |g| g.loss(&id, &tg));
            f.run("Gpt::backward_loss (dropout)", &mut gpt, look, |g| {
                g.backward_loss()
            });
            f.run("Gpt::eval_loss", &mut gpt, look, |g| g.eval_loss(&id, &tg));
        }
        for site in gpt.dropout_sites_mut() {
            site.set_passes(u64::MAX);
        }
        let id = ids((1, 1), cfg.vocab_size, r);
        f.call("Gpt::forward at the last pass", || gpt.forward(&id));
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn ten_thousand_bad_inputs_no_panic_no_half_update() {
    quiet_panics();
    let mut r = StdRng::seed_from_u64(seed());
    let mut f = Fuzz::default();
    fuzz_kernels(&mut f, &mut r, 1500);
    fuzz_layers(&mut f, &mut r, 300);
    fuzz_gpt(&mut f, &mut r, 300);
    fuzz_tied_head(&mut f, &mut r, 300);
    zero_layers(&mut f, &mut r);
    fuzz_sampling(&mut f, &mut r, 1500);
    fuzz_optim(&mut f, &mut r, 500);
    fuzz_checkpoints(&mut f, &mut r, 2000);
    fuzz_data(&mut f, &mut r, 800);
    fuzz_layer_helpers(&mut f, &mut r, 500);
    fuzz_checker(&mut f, &mut r, 150);
    fuzz_dropout(&mut f, &mut r, 200);
    #[cfg(feature = "hf")]
    fuzz_hf(&mut f, &mut r, 300);
    nan_policy(&mut f);
    let _ = std::panic::take_hook();
    f.assert_clean("public API", 10_000);
}

/// A random JSON value of a kind a config field might wrongly hold.
#[cfg(feature = "hf")]
fn wild_json(r: &mut StdRng) -> serde_json::Value {
    use serde_json::json;
    match r.random_range(0..9u32) {
        0 => json!(null),
        1 => json!(-1),
        2 => json!(0),
        3 => json!(u64::MAX),
        4 => json!(1e300),
        5 => json!("gelu"),
        6 => json!(true),
        7 => json!({"rope_type": "dynamic", "factor": 4.0}),
        _ => json!(size(r)),
    }
}

/// Hugging Face interop: configs with random fields replaced, folders with corrupted weights
/// and configs, tokenizers with flipped bytes, random texts and ids, saves of models of
/// neither family. A failed load returns no model, so "no half-update" is the file on disk.
#[cfg(feature = "hf")]
fn fuzz_hf(f: &mut Fuzz, r: &mut StdRng, rounds: usize) {
    use baregpt::hf::{self, Family, Tokenizer};
    let fixtures = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hf/fixtures");
    let folders = ["tiny-gpt2", "tiny-llama"];
    let configs: Vec<serde_json::Value> = folders
        .iter()
        .map(|d| {
            serde_json::from_str(
                &std::fs::read_to_string(fixtures.join(d).join("config.json")).unwrap(),
            )
            .unwrap()
        })
        .collect();
    let tokenizer_bytes: Vec<Vec<u8>> = folders
        .iter()
        .map(|d| std::fs::read(fixtures.join(d).join("tokenizer.json")).unwrap())
        .collect();
    let tokenizers: Vec<Tokenizer> = tokenizer_bytes
        .iter()
        .map(|b| Tokenizer::from_bytes(b).unwrap())
        .collect();
    let weights: Vec<Vec<u8>> = folders
        .iter()
        .map(|d| std::fs::read(fixtures.join(d).join("model.safetensors")).unwrap())
        .collect();
    let scratch = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-hf");
    for round in 0..rounds {
        let k = r.random_range(0..2usize);
        // A config with one field replaced (or removed).
        let mut config = configs[k].clone();
        let keys: Vec<String> = config.as_object().unwrap().keys().cloned().collect();
        let key = keys[r.random_range(0..keys.len())].clone();
        if r.random_range(0..4u32) == 0 {
            config.as_object_mut().unwrap().remove(&key);
        } else {
            config[&key] = wild_json(r);
        }
        let text = config.to_string();
        if let Some((family, parsed)) = f.call("hf::parse_config", || hf::parse_config(&text)) {
            f.infallible("hf::config_json", || {
                hf::config_json(family, &parsed, "float32", None)
            });
            f.call("Family::of", || Family::of(&parsed));
        }
        let cut = r.random_range(0..=text.len());
        f.call("hf::parse_config (truncated)", || {
            hf::parse_config(&text[..cut])
        });
        // Tokenizers: flipped bytes, random text, random ids.
        let mut bytes = tokenizer_bytes[k].clone();
        for _ in 0..r.random_range(1..4usize) {
            let i = r.random_range(0..bytes.len());
            bytes[i] = r.random();
        }
        f.call("Tokenizer::from_bytes", || Tokenizer::from_bytes(&bytes));
        let alphabet = ['a', ' ', '\n', 'é', '日', '\u{0}', '🙂', '\t', '<', '|'];
        let sample: String = (0..size(r) * 3)
            .map(|_| alphabet[r.random_range(0..alphabet.len())])
            .collect();
        let tok = &tokenizers[k];
        if let Some(ids) = f.call("Tokenizer::encode", || tok.encode(&sample, r.random())) {
            let back = f.call("Tokenizer::decode", || tok.decode(&ids, false));
            f.rule(k == 1 || back.as_deref() == Some(sample.as_str()), || {
                format!("byte-level BPE does not round-trip {sample:?}")
            });
        }
        let ids: Vec<usize> = (0..size(r))
            .map(|_| r.random_range(0..tok.vocab_size() + 3))
            .collect();
        f.call("Tokenizer::decode", || tok.decode(&ids, r.random()));
        // A folder with corrupted weights or config (fewer rounds: it touches the disk).
        if round % 6 == 0 {
            let dir = scratch.join(format!("{round}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut w = weights[k].clone();
            match r.random_range(0..3u32) {
                0 => w.truncate(r.random_range(0..w.len())),
                1 => {
                    // A flip in the header (names, shapes, offsets).
                    let i = 8 + r.random_range(0..600usize.min(w.len() - 8));
                    w[i] = r.random();
                }
                _ => {
                    // A NaN or infinity somewhere in the data.
                    let i = (w.len() - 4 - r.random_range(0..1000usize)) & !3;
                    let bad = if r.random() { f32::NAN } else { f32::INFINITY };
                    w[i..i + 4].copy_from_slice(&bad.to_le_bytes());
                }
            }
            std::fs::write(dir.join("model.safetensors"), &w).unwrap();
            let config_text = if r.random() {
                configs[k].to_string()
            } else {
                text.clone()
            };
            std::fs::write(dir.join("config.json"), config_text).unwrap();
            f.run(
                "hf::load",
                &mut (),
                |_| std::fs::read(dir.join("model.safetensors")).unwrap(),
                |_| hf::load::<f32>(&dir).map(|_| ()),
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    // Models of neither family are refused before anything is written.
    for _ in 0..20 {
        let config = small_config(r);
        if let Ok(model) = Gpt::<f64>::new(config, r) {
            let dir = scratch.join("save");
            let _ = std::fs::remove_dir_all(&dir);
            if f.call("hf::save", || hf::save(&dir, &model, None))
                .is_none()
            {
                f.rule(!dir.exists(), || "a refused hf::save wrote files".into());
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Kept so that the helpers' types are checked even where a group does not use them.
#[allow(dead_code)]
fn _types(_: Snapshot, _: &dyn Debug) {}
