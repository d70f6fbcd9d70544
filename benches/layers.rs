//! Criterion benches of every layer's forward and backward, in f32 at the `baregpt` preset
//! shape, plus the kernels they are built on.
//!
//! ```sh
//! cargo bench --bench layers                       # everything: about 2 minutes once built
//! cargo bench --bench layers -- backward/          # one group
//! RAYON_NUM_THREADS=1 cargo bench --bench layers   # fix the thread count
//! ```
//!
//! Shapes: `B = 16`, `T = 128`, `C = 256`, 4 heads, MLP hidden 1024, vocabulary 65 (the
//! `GptConfig::baregpt(65)` model: 2 blocks, no final LayerNorm).
//!
//! Benchmark ids:
//!
//! * `forward/<layer>`: one `forward`, which also builds the layer's cache. Layers: `linear`
//!   (256 → 1024 with bias, on `(B, T, 256)`), `layer_norm`, `gelu` (on `(B, T, 1024)`),
//!   `mlp`, `attention`, `block`, `embedding` (ids `(B, T)`), `cross_entropy` (`loss` of
//!   logits `(B, T, 65)`), `gpt` (ids to logits) and `gpt_loss` (`Gpt::loss`: the forward
//!   plus the loss head).
//! * `backward/<layer>`: one `backward` after a single forward done outside the timing loop.
//!   Backward adds into the parameter gradients, so they grow over the iterations; that does
//!   not change the work done. `cross_entropy` is `backward_loss`; `gpt` is `Gpt::backward`
//!   (the loss head's backward and then every layer's).
//! * `step/adam`: one `Adam::step` over the whole `Gpt` (1.6 M parameters) with gradients set.
//! * `kernel_forward/*`, `kernel_backward/*`: the free functions under the layers, on the same
//!   shapes flattened to rows: `attention` (`q, k, v` of `(B, T, C)`, 4 heads), `linear`
//!   (`(B·T, 256) · (256, 1024) + b`), `gemm` (the same product without a bias). Comparing
//!   `forward/linear` with `kernel_forward/linear`, or `forward/attention` with
//!   `kernel_forward/attention` plus four 256 × 256 projections, separates the layer's
//!   overhead (reshapes, caches, copies) from kernel time.
//!
//! * `attention_length/<kernel>_<pass>/<T>`: the attention kernels against the sequence
//!   length, at `C = 384` with 6 heads (`D = 64`) and `B = 2048 / T` (the same number of
//!   positions at every length), for `T` = 64, 128, …, 2048. `<kernel>` is `plain`
//!   (`grouped_attention_forward` / `_backward`, which keep the `(B, H, T, T)` probabilities)
//!   or `tiled` (`flash_attention_forward` / `_backward`, which keep `lse (B, H, T)`);
//!   `<pass>` is `forward`, `backward` (given that kernel's forward results) or `layer`
//!   (an `Attention` layer on that kernel: one `forward` and one `backward`, the projections
//!   included). `cargo bench --bench layers -- attention_length` runs only these.
//!
//! Sampling is kept short (10 samples, 1 s warm-up, 2 s measurement, 3 s for the whole `Gpt`;
//! flat sampling) so that the whole file runs in a few minutes once built; the numbers are for
//! spotting where time goes, not for resolving a few percent. The kernels run on rayon's global
//! pool (one thread per logical CPU unless `RAYON_NUM_THREADS` says otherwise).

use std::hint::black_box;
use std::time::Duration;

use baregpt::kernels::{
    attention_backward, attention_forward, flash_attention_backward, flash_attention_forward,
    grouped_attention_backward, grouped_attention_forward, linear_backward, linear_forward,
};
use baregpt::layers::{
    Attention, AttentionConfig, AttentionKernel, Block, Embedding, Gelu, LayerNorm, Linear, Mlp,
};
use baregpt::{Adam, AdamConfig, CrossEntropy, Gpt, GptConfig, Layer, LayerInput};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, criterion_group, criterion_main};
use ndarray::{Array1, Array2, Array3};
use rand::{RngExt, SeedableRng, rngs::StdRng};

const B: usize = 16;
const T: usize = 128;
const C: usize = 256;
const HEADS: usize = 4;
const HIDDEN: usize = 1024;
const VOCAB: usize = 65;

/// The measurement time of the whole-`Gpt` benches, whose iterations are the slowest.
const WHOLE_MODEL_TIME: Duration = Duration::from_secs(3);

/// Uniform values in `[-1, 1)` of the given shape, from `rng`.
fn uniform3(shape: (usize, usize, usize), rng: &mut StdRng) -> Array3<f32> {
    Array3::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

/// Uniform values in `[-1, 1)` of the given shape, from `rng`.
fn uniform2(shape: (usize, usize), rng: &mut StdRng) -> Array2<f32> {
    Array2::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

/// Token ids (or targets) `(B, T)` below the vocabulary size.
fn ids(rng: &mut StdRng) -> Array2<usize> {
    Array2::from_shape_simple_fn((B, T), || rng.random_range(0..VOCAB))
}

fn gpt(rng: &mut StdRng) -> Gpt<f32> {
    Gpt::new(GptConfig::baregpt(VOCAB), rng).expect("the baregpt preset is a valid config")
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    // Every iteration here takes at least tens of microseconds, most take milliseconds:
    // flat sampling keeps the slow ones (a whole GPT) inside the time budget.
    group.sampling_mode(SamplingMode::Flat);
    group
}

/// Times `layer.forward(x)`.
fn bench_forward<X: LayerInput<f32>>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    layer: &mut dyn Layer<f32, X>,
    x: &X,
) {
    g.bench_function(name, |b| {
        b.iter(|| {
            layer
                .forward(black_box(x))
                .expect("forward at a valid shape")
        });
    });
}

/// Runs one forward of `layer` on `x`, then times `layer.backward(dy)` with a random `dy`.
fn bench_backward<X: LayerInput<f32>>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    layer: &mut dyn Layer<f32, X>,
    x: &X,
    rng: &mut StdRng,
) {
    let y = layer.forward(x).expect("forward at a valid shape");
    let dy = uniform3(y.dim(), rng);
    g.bench_function(name, |b| {
        b.iter(|| {
            layer
                .backward(black_box(&dy))
                .expect("backward after forward")
        });
    });
}

/// A float layer to bench: its id, the layer, and an input at the preset's shape.
type Case = (&'static str, Box<dyn Layer<f32>>, Array3<f32>);

/// The float layers at the preset's shapes.
fn float_layers(rng: &mut StdRng) -> Vec<Case> {
    let x = uniform3((B, T, C), rng);
    let hidden = uniform3((B, T, HIDDEN), rng);
    vec![
        (
            "linear",
            Box::new(Linear::new(C, HIDDEN, true, rng).expect("valid sizes")),
            x.clone(),
        ),
        (
            "layer_norm",
            Box::new(LayerNorm::new(C).expect("valid width")),
            x.clone(),
        ),
        ("gelu", Box::new(Gelu::new()), hidden),
        (
            "mlp",
            Box::new(Mlp::new(C, HIDDEN, rng).expect("valid sizes")),
            x.clone(),
        ),
        (
            "attention",
            Box::new(Attention::new(C, HEADS, rng).expect("4 heads divide 256")),
            x.clone(),
        ),
        (
            "block",
            Box::new(Block::new(C, HEADS, HIDDEN, rng).expect("4 heads divide 256")),
            x,
        ),
    ]
}

fn forward(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let mut g = group(c, "forward");
    for (name, mut layer, x) in float_layers(&mut rng) {
        bench_forward(&mut g, name, layer.as_mut(), &x);
    }
    let ids_in = ids(&mut rng);
    let mut embed = Embedding::<f32>::new(VOCAB, C, T, &mut rng).expect("valid sizes");
    bench_forward(&mut g, "embedding", &mut embed, &ids_in);

    let logits = uniform3((B, T, VOCAB), &mut rng);
    let targets = ids(&mut rng);
    let mut head = CrossEntropy::<f32>::new();
    g.bench_function("cross_entropy", |b| {
        b.iter(|| {
            head.loss(black_box(&logits), black_box(&targets))
                .expect("valid targets")
        });
    });

    let mut model = gpt(&mut rng);
    // One pass of the whole model takes about a fifth of a second here: give it more time.
    g.measurement_time(WHOLE_MODEL_TIME);
    bench_forward(&mut g, "gpt", &mut model, &ids_in);
    g.bench_function("gpt_loss", |b| {
        b.iter(|| {
            model
                .loss(black_box(&ids_in), black_box(&targets))
                .expect("valid ids and targets")
        });
    });
    g.finish();
}

fn backward(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let mut g = group(c, "backward");
    for (name, mut layer, x) in float_layers(&mut rng) {
        bench_backward(&mut g, name, layer.as_mut(), &x, &mut rng);
    }
    let ids_in = ids(&mut rng);
    let mut embed = Embedding::<f32>::new(VOCAB, C, T, &mut rng).expect("valid sizes");
    bench_backward(&mut g, "embedding", &mut embed, &ids_in, &mut rng);

    let logits = uniform3((B, T, VOCAB), &mut rng);
    let targets = ids(&mut rng);
    let mut head = CrossEntropy::<f32>::new();
    head.loss(&logits, &targets).expect("valid targets");
    g.bench_function("cross_entropy", |b| {
        b.iter(|| head.backward_loss().expect("backward after loss"));
    });

    let mut model = gpt(&mut rng);
    model
        .loss(&ids_in, &targets)
        .expect("valid ids and targets");
    g.measurement_time(WHOLE_MODEL_TIME);
    g.bench_function("gpt", |b| {
        b.iter(|| model.backward_loss().expect("backward after loss"));
    });
    g.finish();
}

fn adam_step(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let mut model = gpt(&mut rng);
    let (ids_in, targets) = (ids(&mut rng), ids(&mut rng));
    model
        .loss(&ids_in, &targets)
        .expect("valid ids and targets");
    model.backward_loss().expect("backward after loss");
    let mut adam = Adam::new(AdamConfig::adam(3e-4)).expect("a valid Adam config");
    let mut g = group(c, "step");
    g.bench_function("adam", |b| {
        b.iter(|| adam.step(black_box(&mut model)).expect("finite gradients"));
    });
    g.finish();
}

fn kernels(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(4);
    let [q, k, v] = [(); 3].map(|()| uniform3((B, T, C), &mut rng));
    let x = uniform2((B * T, C), &mut rng);
    let w = uniform2((C, HIDDEN), &mut rng);
    let bias = Array1::from_shape_simple_fn(HIDDEN, || rng.random_range(-1.0f32..1.0));

    let mut g = group(c, "kernel_forward");
    g.bench_function("attention", |b| {
        b.iter(|| {
            attention_forward(black_box(q.view()), k.view(), v.view(), HEADS).expect("valid shapes")
        });
    });
    g.bench_function("linear", |b| {
        b.iter(|| {
            linear_forward(black_box(x.view()), w.view(), Some(bias.view())).expect("valid shapes")
        });
    });
    g.bench_function("gemm", |b| {
        b.iter(|| linear_forward(black_box(x.view()), w.view(), None).expect("valid shapes"));
    });
    g.finish();

    let (_, probs) = attention_forward(q.view(), k.view(), v.view(), HEADS).expect("valid shapes");
    let d_ctx = uniform3((B, T, C), &mut rng);
    let dy = uniform2((B * T, HIDDEN), &mut rng);
    let mut d_w = Array2::<f32>::zeros((C, HIDDEN));
    let mut d_b = Array1::<f32>::zeros(HIDDEN);
    let mut g = group(c, "kernel_backward");
    g.bench_function("attention", |b| {
        b.iter(|| {
            attention_backward(
                q.view(),
                k.view(),
                v.view(),
                probs.view(),
                black_box(d_ctx.view()),
            )
            .expect("valid shapes")
        });
    });
    g.bench_function("linear", |b| {
        b.iter(|| {
            linear_backward(
                x.view(),
                w.view(),
                black_box(dy.view()),
                d_w.view_mut(),
                Some(d_b.view_mut()),
            )
            .expect("valid shapes")
        });
    });
    g.finish();
}

/// The width, heads and positions per batch of the `attention_length` group.
const LENGTH_C: usize = 384;
const LENGTH_HEADS: usize = 6;
const LENGTH_POSITIONS: usize = 2048;

/// The plain and the tiled attention kernels, and a layer on each, against the length.
fn attention_length(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(5);
    let mut g = group(c, "attention_length");
    for t in [64, 128, 256, 512, 1024, 2048] {
        let shape = (LENGTH_POSITIONS / t, t, LENGTH_C);
        let [q, k, v, d_ctx] = [(); 4].map(|()| uniform3(shape, &mut rng));
        let (q, k, v, d_ctx) = (q.view(), k.view(), v.view(), d_ctx.view());
        let h = LENGTH_HEADS;
        let id = |name: &str| format!("{name}/{t}");
        g.bench_function(id("plain_forward"), |b| {
            b.iter(|| grouped_attention_forward(black_box(q), k, v, h, h).expect("valid shapes"));
        });
        g.bench_function(id("tiled_forward"), |b| {
            b.iter(|| {
                flash_attention_forward(black_box(q), k, v, h, h, None).expect("valid shapes")
            });
        });
        let (_, probs) = grouped_attention_forward(q, k, v, h, h).expect("valid shapes");
        g.bench_function(id("plain_backward"), |b| {
            b.iter(|| {
                grouped_attention_backward(q, k, v, probs.view(), black_box(d_ctx), h)
                    .expect("valid shapes")
            });
        });
        drop(probs);
        let out = flash_attention_forward(q, k, v, h, h, None).expect("valid shapes");
        g.bench_function(id("tiled_backward"), |b| {
            b.iter(|| {
                flash_attention_backward(q, k, v, out.view(), black_box(d_ctx), h, None)
                    .expect("valid shapes")
            });
        });
        let x = uniform3(shape, &mut rng);
        for (name, kernel) in [
            ("plain_layer", AttentionKernel::Plain),
            ("tiled_layer", AttentionKernel::Tiled),
        ] {
            let config = AttentionConfig::new(h).with_kernel(kernel);
            let mut layer = Attention::<f32>::with_config(LENGTH_C, config, &mut rng)
                .expect("6 heads divide 384");
            g.bench_function(id(name), |b| {
                b.iter(|| {
                    let y = layer.forward(black_box(&x)).expect("valid shape");
                    layer.backward(&y).expect("backward after forward")
                });
            });
        }
    }
    g.finish();
}

/// Short sampling, so that the file runs in minutes on a small machine.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = forward, backward, adam_step, kernels, attention_length
}
criterion_main!(benches);
