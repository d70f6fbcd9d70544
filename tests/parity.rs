//! Parity with PyTorch: every layer's forward and backward against autograd, tensor by tensor.
//!
//! The fixtures in `tests/parity/fixtures/` were written by `tests/parity/generate.py` from
//! independent PyTorch modules in float64 (see that script's header and `docs/parity.md`).
//! For each case this test builds our layer, loads the fixture's parameters into it by name
//! through `tests/parity/names.json` (the one mapping between our dotted names and the torch
//! modules', transposing `Linear` weights), runs our forward and backward, and compares every
//! output, input gradient and parameter gradient in the file. A fixture tensor that no check
//! reads is itself a failure, so a case cannot silently skip part of what PyTorch computed.
//!
//! Tolerances, with `Δ = max |ours − torch|` and `M = max |torch|` over a tensor:
//! * f64: `Δ / max(1, M) ≤ 1e-10` (absolute, relative to the tensor's scale when it exceeds 1);
//! * f32 (the same fixture, parameters and inputs rounded to f32, against the f64 truth):
//!   `Δ / max(M, 1e-3) ≤ 1e-4`.
//!
//! The optimizer fixtures apply the same bounds to the loss of each of ten Adam/AdamW steps,
//! the loss after the last step and every parameter after it.
//!
//! Run with `cargo test --release --test parity -- --nocapture` to see every measured error.

use baregpt::gpt::parts::HeadKind;
use baregpt::kernels::{
    attention_backward, attention_forward, flash_attention_backward, flash_attention_forward,
    gelu_backward, gelu_forward,
};
use baregpt::layer::{DropoutMode, KvCache};
use baregpt::layers::{
    Attention, AttentionConfig, AttentionKernel, Block, Dropout, Embedding, LayerNorm, Linear, Mlp,
    RmsNorm, SwiGlu,
};
use baregpt::param::ParamMap;
use baregpt::prelude::*;
use baregpt::{Adam, AdamConfig, CrossEntropy, DropoutConfig, Gpt, GptConfig};
use ndarray::{Array1, Array2, Array3, ArrayD, Axis, Ix2, Ix3, Ix4};
use rand::SeedableRng;
use rand::rngs::StdRng;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const F64_TOL: f64 = 1e-10;
const F32_TOL: f64 = 1e-4;
/// Below this scale an f32 tensor is compared absolutely (its values are themselves
/// rounding-level, so a relative error would measure noise).
const F32_FLOOR: f64 = 1e-3;

fn parity_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/parity")
}

// ----------------------------------------------------------------------------------------
// Fixtures
// ----------------------------------------------------------------------------------------

enum Data {
    F64(Vec<f64>),
    I64(Vec<i64>),
}

/// One safetensors fixture, fully decoded, remembering which tensors were read.
struct Fixture {
    case: String,
    kind: String,
    config: Value,
    tensors: BTreeMap<String, (Vec<usize>, Data)>,
    read: RefCell<BTreeSet<String>>,
}

impl Fixture {
    fn load(stem: &str) -> Self {
        let path = parity_dir()
            .join("fixtures")
            .join(format!("{stem}.safetensors"));
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run tests/parity/generate.py)", path.display()));
        let (_, header) = SafeTensors::read_metadata(&bytes).expect("a safetensors header");
        let meta: BTreeMap<String, String> = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let file = SafeTensors::deserialize(&bytes).expect("a safetensors file");
        let mut tensors = BTreeMap::new();
        for (name, view) in file.tensors() {
            let words = view.data().chunks_exact(8).map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                w
            });
            let data = match view.dtype() {
                Dtype::F64 => Data::F64(words.map(f64::from_le_bytes).collect()),
                Dtype::I64 => Data::I64(words.map(i64::from_le_bytes).collect()),
                other => panic!("{stem}: {name} has unexpected dtype {other:?}"),
            };
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        let config = serde_json::from_str(&meta["config"]).expect("config metadata is JSON");
        assert_eq!(meta["case"], stem, "fixture file and case name disagree");
        Self {
            case: stem.to_owned(),
            kind: meta["kind"].clone(),
            config,
            tensors,
            read: RefCell::new(BTreeSet::new()),
        }
    }

    fn entry(&self, name: &str) -> &(Vec<usize>, Data) {
        self.read.borrow_mut().insert(name.to_owned());
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor {name}", self.case))
    }

    fn f64(&self, name: &str) -> ArrayD<f64> {
        match self.entry(name) {
            (shape, Data::F64(v)) => ArrayD::from_shape_vec(shape.clone(), v.clone()).unwrap(),
            _ => panic!("{}: {name} is not F64", self.case),
        }
    }

    fn float<F: Float>(&self, name: &str) -> ArrayD<F> {
        self.f64(name).mapv(F::of)
    }

    fn float3<F: Float>(&self, name: &str) -> Array3<F> {
        self.float(name).into_dimensionality::<Ix3>().unwrap()
    }

    fn ids_dyn(&self, name: &str) -> ArrayD<usize> {
        match self.entry(name) {
            (shape, Data::I64(v)) => {
                let v = v.iter().map(|&i| usize::try_from(i).unwrap()).collect();
                ArrayD::from_shape_vec(shape.clone(), v).unwrap()
            }
            _ => panic!("{}: {name} is not I64", self.case),
        }
    }

    fn ids(&self, name: &str) -> Array2<usize> {
        self.ids_dyn(name).into_dimensionality::<Ix2>().unwrap()
    }

    fn f64_config(&self, key: &str) -> f64 {
        self.config[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: config.{key}", self.case))
    }

    fn usize(&self, key: &str) -> usize {
        let v = self.config[key].as_u64();
        usize::try_from(v.unwrap_or_else(|| panic!("{}: config.{key}", self.case))).unwrap()
    }

    fn bool(&self, key: &str) -> bool {
        self.config[key]
            .as_bool()
            .unwrap_or_else(|| panic!("{}: config.{key}", self.case))
    }

    fn unread(&self) -> Vec<String> {
        let read = self.read.borrow();
        self.tensors
            .keys()
            .filter(|k| !read.contains(*k))
            .cloned()
            .collect()
    }
}

// ----------------------------------------------------------------------------------------
// The name mapping (tests/parity/names.json), expanded as generate.py expands it.
// ----------------------------------------------------------------------------------------

/// One parameter: our dotted name, the torch name, and whether torch stores it transposed.
#[derive(Clone, Debug, PartialEq)]
struct NameMap {
    ours: String,
    torch: String,
    transpose: bool,
}

fn join(prefix: &str, name: &str) -> String {
    match (prefix.is_empty(), name.is_empty()) {
        (true, _) => name.to_owned(),
        (_, true) => prefix.to_owned(),
        _ => format!("{prefix}.{name}"),
    }
}

fn expand(layers: &Value, layer: &str, config: &Value) -> Vec<NameMap> {
    let entries = layers[layer]
        .as_array()
        .unwrap_or_else(|| panic!("names.json has no layer {layer}"));
    let mut out = Vec::new();
    for entry in entries {
        if let Some(key) = entry["when"].as_str() {
            let on = config[key].as_bool();
            if !on.unwrap_or_else(|| panic!("names.json: config has no bool {key}")) {
                continue;
            }
        }
        let count = entry["repeat"].as_str().map(|key| {
            config[key]
                .as_u64()
                .unwrap_or_else(|| panic!("names.json: config has no count {key}"))
        });
        let indices: Vec<Option<u64>> = match count {
            Some(n) => (0..n).map(Some).collect(),
            None => vec![None],
        };
        for i in indices {
            let fill = |key: &str| {
                let text = entry[key].as_str().expect("names.json: string names");
                i.map_or(text.to_owned(), |i| text.replace("{i}", &i.to_string()))
            };
            let (ours, torch) = (fill("ours"), fill("torch"));
            if let Some(sub) = entry["layer"].as_str() {
                let mut sub_config = config.clone();
                if let Some(set) = entry["set"].as_object() {
                    for (k, v) in set {
                        sub_config[k] = v.clone();
                    }
                }
                out.extend(
                    expand(layers, sub, &sub_config)
                        .into_iter()
                        .map(|m| NameMap {
                            ours: join(&ours, &m.ours),
                            torch: join(&torch, &m.torch),
                            transpose: m.transpose,
                        }),
                );
            } else {
                let transpose = entry["transpose"].as_bool().unwrap_or(false);
                out.push(NameMap {
                    ours,
                    torch,
                    transpose,
                });
            }
        }
    }
    out
}

/// The mapping of `layer` for this fixture's configuration, checked against our names.
fn mapping_for<F: Float, X: LayerInput<F>>(
    fx: &Fixture,
    layer_kind: &str,
    layer: &(impl Layer<F, X> + ?Sized),
) -> Vec<NameMap> {
    let text = std::fs::read_to_string(parity_dir().join("names.json")).unwrap();
    let names: Value = serde_json::from_str(&text).expect("names.json is JSON");
    let map = expand(&names["layers"], layer_kind, &fx.config);
    let mapped: Vec<&str> = map.iter().map(|m| m.ours.as_str()).collect();
    assert_eq!(
        layer.param_names(),
        mapped,
        "{}: names.json does not list our parameters of {layer_kind} in visit order",
        fx.case
    );
    map
}

/// A torch tensor in our layout: `(out, in)` matrices become `(in, out)`.
fn ours_layout(fx: &Fixture, key: &str, m: &NameMap) -> ArrayD<f64> {
    let t = fx.f64(&format!("{key}/{}", m.torch));
    if m.transpose { t.reversed_axes() } else { t }
}

/// Loads every parameter of `layer` from the fixture, by name, with one all-or-nothing
/// `import_params` (which refuses a missing or extra name and a wrong shape).
fn load_params<F: Float, X: LayerInput<F>>(
    fx: &Fixture,
    map: &[NameMap],
    layer: &mut (impl Layer<F, X> + ?Sized),
) {
    let mut values = ParamMap::new();
    for m in map {
        let value = ours_layout(fx, "param", m).mapv(F::of);
        assert!(
            values.insert(m.ours.as_str(), value).is_none(),
            "{}: {} mapped twice",
            fx.case,
            m.ours
        );
    }
    layer
        .import_params(&values)
        .unwrap_or_else(|e| panic!("{}: loading the fixture's parameters: {e}", fx.case));
    // Every value is the fixture's, bit for bit, under its name.
    for m in map {
        let p = layer
            .param(&m.ours)
            .unwrap_or_else(|| panic!("{}: no parameter {}", fx.case, m.ours));
        assert!(
            p.value == values.get(&m.ours).unwrap().view(),
            "{}: {} not loaded",
            fx.case,
            m.ours
        );
    }
    layer.zero_grad();
}

// ----------------------------------------------------------------------------------------
// Comparison
// ----------------------------------------------------------------------------------------

/// One compared tensor.
struct Row {
    tensor: String,
    max_abs: f64,
    scale: f64,
    err: f64,
}

/// Collects the comparisons of one case in one float type.
struct Comparer<'a> {
    fx: &'a Fixture,
    float: &'static str,
    rows: Vec<Row>,
}

impl<'a> Comparer<'a> {
    fn new<F: Float>(fx: &'a Fixture) -> Self {
        Self {
            fx,
            float: F::NAME,
            rows: Vec::new(),
        }
    }

    fn tol(&self) -> f64 {
        if self.float == "f64" {
            F64_TOL
        } else {
            F32_TOL
        }
    }

    /// Compares `ours` with the fixture tensor `key` (already in our layout).
    fn check<F: Float>(&mut self, label: &str, ours: ArrayD<F>, torch: ArrayD<f64>) {
        self.check_with_floor(label, ours, torch, F32_FLOOR);
    }

    /// [`Comparer::check`] with another f32 floor (f64 is always compared as there).
    fn check_with_floor<F: Float>(
        &mut self,
        label: &str,
        ours: ArrayD<F>,
        torch: ArrayD<f64>,
        f32_floor: f64,
    ) {
        assert_eq!(
            ours.shape(),
            torch.shape(),
            "{} {}: {label} shape",
            self.fx.case,
            self.float
        );
        let ours = ours.mapv(F::to_f64_exact);
        let max_abs = ours
            .iter()
            .zip(&torch)
            .map(|(a, r)| (a - r).abs())
            .fold(
                0.0,
                |m: f64, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
            );
        let scale = torch.iter().fold(0.0, |m: f64, r| m.max(r.abs()));
        let denom = if self.float == "f64" {
            scale.max(1.0)
        } else {
            scale.max(f32_floor)
        };
        self.rows.push(Row {
            tensor: label.to_owned(),
            max_abs,
            scale,
            err: max_abs / denom,
        });
    }

    fn check_key<F: Float>(&mut self, key: &str, ours: ArrayD<F>) {
        let torch = self.fx.f64(key);
        self.check(key, ours, torch);
    }

    fn check_param_grads<F: Float, X: LayerInput<F>>(
        &mut self,
        map: &[NameMap],
        layer: &(impl Layer<F, X> + ?Sized),
    ) {
        let mut grads = Vec::new();
        layer.for_each_param(&mut |name, p| grads.push((name.to_owned(), p.grad.to_owned())));
        for ((name, grad), m) in grads.into_iter().zip(map) {
            let torch = ours_layout(self.fx, "param_grad", m);
            self.check(&format!("grad {name} ({})", m.torch), grad, torch);
        }
    }

    /// Prints every row and fails on any error above tolerance.
    ///
    /// In f32, a tensor that is exactly zero in the reference has no scale of its own: its
    /// values are the rounding residue of the computation around it (with one position, the
    /// softmax of a single score is constant, so nothing flows into `q`, `k`, `w_q`, `w_k`;
    /// the plain kernel happens to get exact zeros, the tiled one, whose softmax backward
    /// takes its row sum as `dO·O`, the difference of two roundings of the same dot product).
    /// Such a tensor is measured against the largest scale in the case, so an error there
    /// still fails at about `1e-4` of the case's values.
    fn finish(mut self) -> f64 {
        let tol = self.tol();
        if self.float == "f32" {
            let case_scale = self.rows.iter().fold(F32_FLOOR, |m, r| m.max(r.scale));
            for r in self.rows.iter_mut().filter(|r| r.scale == 0.0) {
                r.err = r.max_abs / case_scale;
            }
        }
        let mut failures = Vec::new();
        for r in &self.rows {
            let ok = r.err <= tol;
            println!(
                "parity {:<3} {:<28} {:<44} max|Δ| {:9.2e}  max|ref| {:9.2e}  err {:9.2e} {}",
                self.float,
                self.fx.case,
                r.tensor,
                r.max_abs,
                r.scale,
                r.err,
                if ok { "ok" } else { "FAIL" }
            );
            if !ok {
                failures.push(format!("{} err {:.3e} > {tol:.0e}", r.tensor, r.err));
            }
        }
        assert!(
            failures.is_empty(),
            "{} {}: {}",
            self.fx.case,
            self.float,
            failures.join("; ")
        );
        self.rows.iter().map(|r| r.err).fold(0.0, f64::max)
    }
}

// ----------------------------------------------------------------------------------------
// Runners, one per fixture kind
// ----------------------------------------------------------------------------------------

/// Forward and backward of a float layer whose parameters follow `names.json`'s `layer_kind`.
fn float_layer<F: Float>(fx: &Fixture, layer_kind: &str, layer: &mut dyn Layer<F>) -> f64 {
    let map = mapping_for(fx, layer_kind, layer);
    load_params(fx, &map, layer);
    let mut cmp = Comparer::new::<F>(fx);
    let y = layer.forward(&fx.float3("input/x")).unwrap();
    cmp.check_key("output/y", y.into_dyn());
    let dx = layer.backward(&fx.float3("upstream/dy")).unwrap();
    cmp.check_key("input_grad/x", dx.into_dyn());
    cmp.check_param_grads(&map, layer);
    cmp.finish()
}

fn embedding<F: Float>(fx: &Fixture, rng: &mut StdRng) -> f64 {
    let (v, c, ctx) = (
        fx.usize("vocab_size"),
        fx.usize("d_model"),
        fx.usize("context"),
    );
    let mut layer = Embedding::<F>::new(v, c, ctx, rng).unwrap();
    let map = mapping_for(fx, "Embedding", &layer);
    load_params(fx, &map, &mut layer);
    let mut cmp = Comparer::new::<F>(fx);
    let y = layer.forward(&fx.ids("input/ids")).unwrap();
    cmp.check_key("output/y", y.into_dyn());
    layer.backward(&fx.float3("upstream/dy")).unwrap();
    cmp.check_param_grads(&map, &layer);
    cmp.finish()
}

fn gelu<F: Float>(fx: &Fixture) -> f64 {
    let mut cmp = Comparer::new::<F>(fx);
    let x = fx.float3::<F>("input/x");
    cmp.check_key("output/y", gelu_forward(x.view()).into_dyn());
    let dx = gelu_backward(x.view(), fx.float3::<F>("upstream/dy").view()).unwrap();
    cmp.check_key("input_grad/x", dx.into_dyn());
    cmp.finish()
}

fn attention_core<F: Float>(fx: &Fixture) -> f64 {
    let mut cmp = Comparer::new::<F>(fx);
    let (q, k, v) = (
        fx.float3::<F>("input/q"),
        fx.float3::<F>("input/k"),
        fx.float3::<F>("input/v"),
    );
    let (ctx, probs) =
        attention_forward(q.view(), k.view(), v.view(), fx.usize("n_heads")).unwrap();
    cmp.check_key("output/ctx", ctx.into_dyn());
    cmp.check_key("output/probs", probs.clone().into_dyn());
    let d_ctx = fx.float3::<F>("upstream/d_ctx");
    let probs = probs.into_dimensionality::<Ix4>().unwrap();
    let (dq, dk, dv) =
        attention_backward(q.view(), k.view(), v.view(), probs.view(), d_ctx.view()).unwrap();
    cmp.check_key("input_grad/q", dq.into_dyn());
    cmp.check_key("input_grad/k", dk.into_dyn());
    cmp.check_key("input_grad/v", dv.into_dyn());
    // The tiled kernel against the same reference.
    let h = fx.usize("n_heads");
    let out = flash_attention_forward(q.view(), k.view(), v.view(), h, h, None).unwrap();
    let (dq, dk, dv) = flash_attention_backward(
        q.view(),
        k.view(),
        v.view(),
        out.view(),
        d_ctx.view(),
        h,
        None,
    )
    .unwrap();
    cmp.check_key("output/ctx", out.ctx.into_dyn());
    cmp.check_key("input_grad/q", dq.into_dyn());
    cmp.check_key("input_grad/k", dk.into_dyn());
    cmp.check_key("input_grad/v", dv.into_dyn());
    cmp.finish()
}

/// The attention layer's kernels, each checked against the same fixtures.
const KERNELS: [AttentionKernel; 2] = [AttentionKernel::Tiled, AttentionKernel::Plain];

/// Llama-style attention (grouped heads, biases, rotary embeddings) on `kernel`: forward and backward as
/// [`float_layer`], then the same output decoded through a key/value cache (a prefix of
/// `⌈T/2⌉` positions, then one position at a time), against torch's full forward.
fn llama_attention<F: Float>(fx: &Fixture, rng: &mut StdRng, kernel: AttentionKernel) -> f64 {
    let mut config = AttentionConfig::new(fx.usize("n_heads"))
        .kv_heads(fx.usize("n_kv_heads"))
        .with_bias(fx.bool("bias"))
        .with_kernel(kernel);
    config.rope_theta = fx.config["rope_theta"].as_f64();
    // With dropout on the probabilities: the first training forward is pass 0 of the seed.
    let dropout = fx.config["dropout_p"].as_f64();
    if let Some(p) = dropout {
        config = config.with_dropout(p, fx.usize("dropout_seed") as u64);
    }
    let mut layer = Attention::<F>::with_config(fx.usize("d_model"), config, rng).unwrap();
    let map = mapping_for(fx, "LlamaAttention", &layer);
    load_params(fx, &map, &mut layer);
    let mut cmp = Comparer::new::<F>(fx);
    let x = fx.float3::<F>("input/x");
    let y = layer.forward(&x).unwrap();
    cmp.check_key("output/y", y.into_dyn());
    let dx = layer.backward(&fx.float3("upstream/dy")).unwrap();
    cmp.check_key("input_grad/x", dx.into_dyn());
    // Without rotation, adding b_k to every key adds q·b_k to all of a query's scores, which
    // the softmax ignores: b_k's true gradient is exactly zero (torch's is ~1e-16), and an
    // f32 one is the rounding residue of sums of dK-sized terms. It is held to the same
    // relative bound against dK's scale (w_k's gradient), and checked to be near zero in f64.
    let w_k_scale = fx
        .f64("param_grad/k_proj.weight")
        .iter()
        .fold(0.0, |m: f64, g| m.max(g.abs()));
    let mut grads = Vec::new();
    layer.for_each_param(&mut |name, p| grads.push((name.to_owned(), p.grad.to_owned())));
    for ((name, grad), m) in grads.into_iter().zip(&map) {
        let torch = ours_layout(fx, "param_grad", m);
        let label = format!("grad {name} ({})", m.torch);
        if name == "b_k" && config.rope_theta.is_none() {
            if F::NAME == "f64" {
                assert!(
                    grad.iter().all(|g| g.to_f64_exact().abs() < 1e-12),
                    "{grad}"
                );
            }
            cmp.check_with_floor(&label, grad, torch, w_k_scale.max(F32_FLOOR));
        } else {
            cmp.check(&label, grad, torch);
        }
    }
    if dropout.is_some() {
        // Inference never drops, so there is no decoding to compare with torch's output.
        return cmp.finish();
    }
    // Decoding: keys are rotated at their absolute positions as they enter the cache.
    let (b, t, _) = x.dim();
    let mut cache = KvCache::<F>::new(b, t).unwrap();
    let prefix = t.div_ceil(2);
    let mut parts = vec![
        cache
            .infer(&layer, &x.slice(ndarray::s![.., ..prefix, ..]).to_owned())
            .unwrap(),
    ];
    for i in prefix..t {
        let step = x.slice(ndarray::s![.., i..=i, ..]).to_owned();
        parts.push(cache.infer(&layer, &step).unwrap());
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    let decoded = ndarray::concatenate(Axis(1), &views).unwrap();
    assert_eq!(cache.layers()[0].width(), layer.kv_width());
    let torch = fx.f64("output/y");
    cmp.check("output/y through a KvCache", decoded.into_dyn(), torch);
    cmp.finish()
}

fn cross_entropy<F: Float>(fx: &Fixture) -> f64 {
    let mut cmp = Comparer::new::<F>(fx);
    let mut head = CrossEntropy::<F>::new();
    head.set_targets(fx.ids("input/targets"));
    let loss = head.forward(&fx.float3("input/logits")).unwrap();
    cmp.check_key("output/loss", ArrayD::from_elem(vec![], loss[[0, 0, 0]]));
    let d_logits = head.backward(&fx.float3("upstream/d_loss")).unwrap();
    cmp.check_key("input_grad/logits", d_logits.into_dyn());
    cmp.finish()
}

/// Whether a whole-GPT fixture ties its head to the token table (`lm_head.weight is
/// wte.weight` in torch); absent in the untied cases.
fn tied_head(fx: &Fixture) -> bool {
    fx.config["tied_head"].as_bool().unwrap_or(false)
}

/// The `names.json` layer of a whole-GPT fixture.
fn gpt_names(fx: &Fixture) -> &'static str {
    if tied_head(fx) { "GptTied" } else { "Gpt" }
}

fn gpt_config(fx: &Fixture) -> GptConfig {
    let head = if tied_head(fx) {
        HeadKind::Tied {
            bias: fx.bool("head_bias"),
        }
    } else {
        HeadKind::default()
    };
    GptConfig {
        mlp_hidden: fx.usize("mlp_hidden"),
        final_norm: fx.bool("final_norm"),
        head,
        ..GptConfig::with_sizes(
            fx.usize("vocab_size"),
            fx.usize("d_model"),
            fx.usize("n_heads"),
            fx.usize("n_layers"),
            fx.usize("context"),
        )
    }
}

fn gpt<F: Float>(fx: &Fixture, rng: &mut StdRng) -> f64 {
    let mut model = Gpt::<F>::new(gpt_config(fx), rng).unwrap();
    let map = mapping_for(fx, gpt_names(fx), &model);
    load_params(fx, &map, &mut model);
    let mut cmp = Comparer::new::<F>(fx);
    let (ids, targets) = (fx.ids("input/ids"), fx.ids("input/targets"));
    let logits = Layer::forward(&mut model, &ids).unwrap();
    cmp.check_key("output/logits", logits.into_dyn());
    let loss = model.loss(&ids, &targets).unwrap();
    cmp.check_key("output/loss", ArrayD::from_elem(vec![], loss));
    model.backward_loss().unwrap();
    cmp.check_param_grads(&map, &model);
    cmp.finish()
}

/// A `Gpt` with embedding and residual dropout whose sites get the fixture's seeds, held at
/// pass 0 (the masks the torch reference multiplies by) for the forward and the loss.
fn gpt_dropout<F: Float>(fx: &Fixture, rng: &mut StdRng) -> f64 {
    let config = GptConfig {
        dropout: DropoutConfig {
            embed: fx.f64_config("embd_pdrop"),
            residual: fx.f64_config("resid_pdrop"),
            ..DropoutConfig::default()
        },
        ..gpt_config(fx)
    };
    let mut model = Gpt::<F>::new(config, rng).unwrap();
    let seeds = seeds(fx);
    let sites = model.dropout_sites_mut();
    assert_eq!(sites.len(), seeds.len(), "{}: one seed per site", fx.case);
    for (site, seed) in sites.into_iter().zip(seeds) {
        site.set_seed(seed);
    }
    model.set_dropout(DropoutMode::Hold);
    let map = mapping_for(fx, "Gpt", &model);
    load_params(fx, &map, &mut model);
    let mut cmp = Comparer::new::<F>(fx);
    let (ids, targets) = (fx.ids("input/ids"), fx.ids("input/targets"));
    let logits = Layer::forward(&mut model, &ids).unwrap();
    cmp.check_key("output/logits", logits.into_dyn());
    let loss = model.loss(&ids, &targets).unwrap();
    cmp.check_key("output/loss", ArrayD::from_elem(vec![], loss));
    model.backward_loss().unwrap();
    cmp.check_param_grads(&map, &model);
    // Pass 0 was used throughout.
    assert!(model.dropout_sites().iter().all(|s| s.passes() == 1));
    cmp.finish()
}

/// The fixture's dropout seeds.
fn seeds(fx: &Fixture) -> Vec<u64> {
    fx.config["seeds"]
        .as_array()
        .expect("seeds")
        .iter()
        .map(|s| s.as_u64().expect("a seed"))
        .collect()
}

/// Ten steps of our `Adam` on a whole `Gpt`, one batch per step, as the fixture's torch
/// optimizer took them: every step's loss, the loss after the last step and every final
/// parameter must match.
fn optimizer<F: Float>(fx: &Fixture) -> f64 {
    let mut model = Gpt::<F>::new(gpt_config(fx), &mut StdRng::seed_from_u64(0)).unwrap();
    let map = mapping_for(fx, gpt_names(fx), &model);
    load_params(fx, &map, &mut model);
    let config = AdamConfig {
        lr: fx.f64_config("lr"),
        beta1: fx.f64_config("beta1"),
        beta2: fx.f64_config("beta2"),
        eps: fx.f64_config("eps"),
        weight_decay: fx.f64_config("weight_decay"),
        decoupled_weight_decay: fx.bool("decoupled_weight_decay"),
        amsgrad: fx.bool("amsgrad"),
        max_grad_norm: fx.config["max_grad_norm"].as_f64(),
        ..AdamConfig::default()
    };
    let mut adam = Adam::<F>::new(config).unwrap();
    let ids = fx
        .ids_dyn("input/ids")
        .into_dimensionality::<Ix3>()
        .unwrap();
    let targets = fx
        .ids_dyn("input/targets")
        .into_dimensionality::<Ix3>()
        .unwrap();
    let batch = |a: &ndarray::Array3<usize>, step| a.index_axis(Axis(0), step).to_owned();
    let mut losses = Vec::new();
    for step in 0..fx.usize("steps") {
        model.zero_grad();
        losses.push(
            model
                .loss(&batch(&ids, step), &batch(&targets, step))
                .unwrap(),
        );
        model.backward_loss().unwrap();
        adam.step(&mut model).unwrap();
    }
    let mut cmp = Comparer::new::<F>(fx);
    cmp.check_key("output/losses", Array1::from(losses).into_dyn());
    let after = model.loss(&batch(&ids, 0), &batch(&targets, 0)).unwrap();
    cmp.check_key("output/loss_after", ArrayD::from_elem(vec![], after));
    let mut finals = Vec::new();
    model.for_each_param(&mut |name, p| finals.push((name.to_owned(), p.value.to_owned())));
    for ((name, value), m) in finals.into_iter().zip(&map) {
        let torch = ours_layout(fx, "final_param", m);
        cmp.check(&format!("final {name} ({})", m.torch), value, torch);
    }
    cmp.finish()
}

/// The model of a family fixture, built by the family's constructor (`GptConfig::gpt2`,
/// `GptConfig::llama`) with the fixture's sizes.
fn family_config(fx: &Fixture) -> (GptConfig, &'static str) {
    let (v, c, h, layers, ctx) = (
        fx.usize("vocab_size"),
        fx.usize("d_model"),
        fx.usize("n_heads"),
        fx.usize("n_layers"),
        fx.usize("context"),
    );
    let (config, names) = match fx.config["family"].as_str() {
        Some("gpt2") => (GptConfig::gpt2(v, c, h, layers, ctx), "Gpt2Family"),
        Some("llama") => (
            GptConfig::llama(v, c, h, fx.usize("n_kv_heads"), layers, ctx),
            "LlamaFamily",
        ),
        other => panic!("{}: unknown family {other:?}", fx.case),
    };
    let config = GptConfig {
        mlp_hidden: fx.usize("mlp_hidden"),
        ..config
    };
    (config, names)
}

/// A whole model of a family: logits, loss and every gradient at the fixture's parameters on
/// the first batch, then ten AdamW steps (decay on every parameter, clipping) with every
/// step's loss, the loss after them and every final parameter.
fn family<F: Float>(fx: &Fixture) -> f64 {
    let (config, names) = family_config(fx);
    let mut model = Gpt::<F>::new(config, &mut StdRng::seed_from_u64(0)).unwrap();
    let map = mapping_for(fx, names, &model);
    load_params(fx, &map, &mut model);
    let mut cmp = Comparer::new::<F>(fx);
    let ids = fx
        .ids_dyn("input/ids")
        .into_dimensionality::<Ix3>()
        .unwrap();
    let targets = fx
        .ids_dyn("input/targets")
        .into_dimensionality::<Ix3>()
        .unwrap();
    let batch = |a: &ndarray::Array3<usize>, step| a.index_axis(Axis(0), step).to_owned();
    let logits = Layer::forward(&mut model, &batch(&ids, 0)).unwrap();
    cmp.check_key("output/logits", logits.into_dyn());
    let loss = model.loss(&batch(&ids, 0), &batch(&targets, 0)).unwrap();
    cmp.check_key("output/loss", ArrayD::from_elem(vec![], loss));
    model.backward_loss().unwrap();
    cmp.check_param_grads(&map, &model);

    let config = AdamConfig {
        lr: fx.f64_config("lr"),
        beta1: fx.f64_config("beta1"),
        beta2: fx.f64_config("beta2"),
        eps: fx.f64_config("eps"),
        weight_decay: fx.f64_config("weight_decay"),
        decoupled_weight_decay: true,
        max_grad_norm: Some(fx.f64_config("max_grad_norm")),
        ..AdamConfig::default()
    };
    let mut adam = Adam::<F>::new(config).unwrap();
    let mut losses = Vec::new();
    for step in 0..fx.usize("steps") {
        model.zero_grad();
        losses.push(
            model
                .loss(&batch(&ids, step), &batch(&targets, step))
                .unwrap(),
        );
        model.backward_loss().unwrap();
        adam.step(&mut model).unwrap();
    }
    cmp.check_key("output/losses", Array1::from(losses).into_dyn());
    let after = model.loss(&batch(&ids, 0), &batch(&targets, 0)).unwrap();
    cmp.check_key("output/loss_after", ArrayD::from_elem(vec![], after));
    let mut finals = Vec::new();
    model.for_each_param(&mut |name, p| finals.push((name.to_owned(), p.value.to_owned())));
    for ((name, value), m) in finals.into_iter().zip(&map) {
        let torch = ours_layout(fx, "final_param", m);
        // GPT-2's key bias shifts all scores of a query's row alike, so the softmax ignores
        // it: its gradient is zero in exact arithmetic, and what both sides compute is
        // rounding noise (1e-17 in f64, 1e-9 in f32). Adam divides that noise by its own RMS,
        // so in f32, where it is not small against eps, the key bias takes noise-driven steps
        // of up to lr each. Its final f32 value is therefore not compared (the f64 run
        // compares it, and both runs compare its gradient).
        let zero_grad = fx
            .f64(&format!("param_grad/{}", m.torch))
            .iter()
            .all(|g| g.abs() < 1e-12);
        if F::NAME == "f32" && zero_grad {
            println!(
                "parity f32 {:<28} final {name}: gradient identically zero, not compared",
                fx.case
            );
            continue;
        }
        cmp.check(&format!("final {name} ({})", m.torch), value, torch);
    }
    cmp.finish()
}

/// Runs one fixture in float type `F`; returns the worst error (already checked).
fn run<F: Float>(fx: &Fixture) -> f64 {
    // Our constructors draw initial weights; every one is then overwritten from the fixture.
    let mut rng = StdRng::seed_from_u64(0);
    let (c, h) = (|| fx.usize("d_model"), || fx.usize("n_heads"));
    match fx.kind.as_str() {
        "linear" => {
            let mut layer = Linear::<F>::new(
                fx.usize("c_in"),
                fx.usize("c_out"),
                fx.bool("bias"),
                &mut rng,
            )
            .unwrap();
            float_layer(fx, "Linear", &mut layer)
        }
        "layer_norm" => float_layer(fx, "LayerNorm", &mut LayerNorm::<F>::new(c()).unwrap()),
        "rms_norm" => {
            let mut layer = RmsNorm::<F>::with_eps(c(), fx.f64_config("eps")).unwrap();
            float_layer(fx, "RmsNorm", &mut layer)
        }
        "swiglu" => {
            let mut layer = SwiGlu::<F>::new(c(), fx.usize("mlp_hidden"), &mut rng).unwrap();
            float_layer(fx, "SwiGlu", &mut layer)
        }
        // Both kernels (the weights are the fixture's): the tiled one, the default, and the
        // plain one.
        "attention" => {
            let mut worst = 0.0f64;
            for kernel in KERNELS {
                let config = AttentionConfig::new(h()).with_kernel(kernel);
                let mut layer = Attention::<F>::with_config(c(), config, &mut rng).unwrap();
                worst = worst.max(float_layer(fx, "Attention", &mut layer));
            }
            worst
        }
        "llama_attention" => {
            let mut worst = 0.0f64;
            for kernel in KERNELS {
                worst = worst.max(llama_attention::<F>(fx, &mut rng, kernel));
            }
            worst
        }
        "mlp" => {
            let mut layer = Mlp::<F>::new(c(), fx.usize("mlp_hidden"), &mut rng).unwrap();
            float_layer(fx, "Mlp", &mut layer)
        }
        "block" => {
            let mut layer = Block::<F>::new(c(), h(), fx.usize("mlp_hidden"), &mut rng).unwrap();
            float_layer(fx, "Block", &mut layer)
        }
        "dropout" => {
            let seed = fx.config["seed"].as_u64().expect("seed");
            let mut layer = Dropout::<F>::new(fx.f64_config("p"), seed).unwrap();
            float_layer(fx, "Dropout", &mut layer)
        }
        "block_dropout" => {
            let [a, m] = seeds(fx)[..] else {
                panic!("{}: two seeds", fx.case)
            };
            let mut layer = Block::<F>::new(c(), h(), fx.usize("mlp_hidden"), &mut rng)
                .unwrap()
                .with_residual_dropout(fx.f64_config("p"), [a, m])
                .unwrap();
            float_layer(fx, "Block", &mut layer)
        }
        "gpt_dropout" => gpt_dropout::<F>(fx, &mut rng),
        "embedding" => embedding::<F>(fx, &mut rng),
        "gelu" => gelu::<F>(fx),
        "attention_core" => attention_core::<F>(fx),
        "cross_entropy" => cross_entropy::<F>(fx),
        "gpt" => gpt::<F>(fx, &mut rng),
        "optimizer" => optimizer::<F>(fx),
        "family" => family::<F>(fx),
        other => panic!("{}: unknown fixture kind {other}", fx.case),
    }
}

/// Checks one fixture in f64 and in f32, and that every tensor in it was compared or used.
fn parity(stem: &str) {
    let fx = Fixture::load(stem);
    let worst64 = run::<f64>(&fx);
    let worst32 = run::<f32>(&fx);
    println!("parity worst {stem}: f64 {worst64:.2e}, f32 {worst32:.2e}");
    let unread = fx.unread();
    assert!(
        unread.is_empty(),
        "{stem}: tensors never checked: {unread:?}"
    );
}

macro_rules! parity_cases {
    ($($stem:ident),* $(,)?) => {
        const CASES: &[&str] = &[$(stringify!($stem)),*];
        /// One test per fixture file, named after it.
        mod case {
            $(
                #[test]
                fn $stem() {
                    super::parity(stringify!($stem));
                }
            )*
        }
    };
}

parity_cases! {
    linear,
    linear_b1_t1_nobias,
    embedding,
    embedding_b1_t1,
    layer_norm,
    layer_norm_large,
    gelu,
    attention_core_1head,
    attention_core_3heads,
    attention_core_b1_t1,
    attention_1head,
    attention_3heads,
    attention_mha_bias,
    attention_gqa,
    attention_mqa,
    attention_rotary,
    attention_rotary_gqa,
    attention_dropout_rotary_gqa,
    mlp,
    block,
    block_b1_t1,
    cross_entropy,
    cross_entropy_large_logits,
    gpt_ln_f,
    gpt_no_ln_f,
    gpt_b1_t1,
    dropout,
    block_dropout,
    gpt_dropout,
    adam_10_steps,
    adamw_10_steps,
    adam_l2_amsgrad_clip_10_steps,
    family_gpt2,
    family_llama,
    rms_norm,
    rms_norm_large,
    swiglu,
    swiglu_b1_t1,
    gpt_tied,
    gpt_tied_bias_no_ln_f,
    adamw_tied_10_steps,
}

#[test]
fn every_fixture_file_has_a_test() {
    let mut on_disk: Vec<String> = std::fs::read_dir(parity_dir().join("fixtures"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".safetensors").map(str::to_owned)
        })
        .collect();
    on_disk.sort();
    let mut tested: Vec<String> = CASES.iter().map(|s| (*s).to_owned()).collect();
    tested.sort();
    assert_eq!(on_disk, tested);
}

#[test]
fn mapping_transposes_exactly_the_matrices_torch_stores_out_by_in() {
    let fx = Fixture::load("gpt_ln_f");
    let model = Gpt::<f64>::new(gpt_config(&fx), &mut StdRng::seed_from_u64(0)).unwrap();
    let map = mapping_for(&fx, "Gpt", &model);
    let transposed: Vec<&str> = map
        .iter()
        .filter(|m| m.transpose)
        .map(|m| m.ours.as_str())
        .collect();
    // Every weight matrix of a Linear or an attention projection, nothing else.
    assert_eq!(transposed.len(), 2 * (4 + 2) + 1);
    assert!(
        transposed
            .iter()
            .all(|n| n.ends_with(".w") || n.contains(".w_"))
    );
    assert!(!transposed.iter().any(|n| n.starts_with("embed.")));
}
