//! Finite-difference gradient checks (f64) of every layer and of a whole small GPT, over random
//! shapes, weights and inputs.
//!
//! Every check covers the input (for float layers) and every parameter by name, with the
//! checker's default tolerances. Weights come from a drawn seed and are then jittered so that
//! no check runs at unit gains or zero biases. Run with `--release`: the file takes seconds.

mod common;

use baregpt::gpt::parts::{HeadKind, MlpKind, NormKind};
use baregpt::gradcheck::GradCheckReport;
use baregpt::layer::{DropoutMode, InferState};
use baregpt::layers::{
    Attention, AttentionConfig, AttentionKernel, Block, Dropout, Embedding, Gelu, LayerNorm,
    Linear, Mlp, RmsNorm, Sequential, SwiGlu, TiedHead,
};
use baregpt::param::{Param2, ParamPath, ParamVisitor, ParamVisitorMut};
use baregpt::prelude::*;
use baregpt::{CrossEntropy, DropoutConfig, Gpt, GptConfig, strategies};
use common::{config, gradcheck_passes, jitter_params, rng};
use ndarray::{Array2, Array3};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const REGRESSIONS: &str = "proptest-regressions/gradcheck_props.txt";

/// `(x (B, T, C), seed)` with `B ≤ 3`, `T ≤ 5`, `C ≤ max_c`.
fn activations_and_seed(max_c: usize) -> impl Strategy<Value = (Array3<f64>, u64)> {
    strategies::dims(3, 5, max_c)
        .prop_flat_map(|(b, t, c)| (strategies::activations(b, t, c), strategies::seed()))
}

/// `(x (B, T, H·D), H, seed)` with the head count in `heads` and head size `1..=3`.
fn attention_case(
    heads: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = (Array3<f64>, usize, u64)> {
    (1..=3usize, 1..=5usize, heads, 1..=3usize).prop_flat_map(|(b, t, h, d)| {
        (
            strategies::activations(b, t, h * d),
            Just(h),
            strategies::seed(),
        )
    })
}

/// `(x (B, T, H·D), config, seed)` for an attention layer of any shape: `H_kv` key/value
/// heads shared by `H/H_kv` query heads each, biases or not, rotary embeddings (with an even
/// head size) or not, on either kernel (or the default, which is the plain one at these
/// lengths).
fn attention_variant_case() -> impl Strategy<Value = (Array3<f64>, AttentionConfig, u64)> {
    (
        (1..=2usize, 1..=5usize, 1..=2usize, 1..=3usize, 1..=2usize),
        (
            any::<bool>(),
            prop::option::of(prop_oneof![Just(10_000.0), 2.0..50.0f64]),
            prop_oneof![
                Just(AttentionKernel::Auto),
                Just(AttentionKernel::Tiled),
                Just(AttentionKernel::Plain)
            ],
        ),
    )
        .prop_flat_map(|((b, t, h_kv, group, d), (bias, rope, kernel))| {
            let d = if rope.is_some() { 2 * d } else { d };
            let h = h_kv * group;
            let mut config = AttentionConfig::new(h)
                .kv_heads(h_kv)
                .with_bias(bias)
                .with_kernel(kernel);
            config.rope_theta = rope;
            (
                strategies::activations(b, t, h * d),
                Just(config),
                strategies::seed(),
            )
        })
}

/// A GPT batch from [`strategies::gpt_batch`] with rotary positions (head size doubled to be
/// even), grouped-query attention on a divisor of the heads, and biases or not.
fn rotary_gqa_gpt_case() -> impl Strategy<Value = (GptConfig, Array2<usize>, Array2<usize>, u64)> {
    use baregpt::gpt::parts::{AttentionKind, PositionKind};
    (
        strategies::gpt_batch(),
        strategies::seed(),
        any::<bool>(),
        2.0..1000.0f64,
    )
        .prop_map(|((mut cfg, ids, targets), seed, bias, theta)| {
            // Heads 1–2 of size 1–4 become 2–4 heads of even size 2 or 4 on 1–2 K/V heads.
            let d = 2 * (cfg.d_model / cfg.n_heads).div_ceil(2);
            let n_kv_heads = cfg.n_heads;
            cfg.n_heads *= 2;
            cfg.d_model = cfg.n_heads * d;
            cfg.attention = AttentionKind::GroupedQuery { n_kv_heads, bias };
            cfg.positions = PositionKind::Rotary { theta };
            (cfg, ids, targets, seed)
        })
}

/// A GPT batch from [`strategies::gpt_batch`] with `final_norm` forced, and a weight seed.
fn gpt_case(
    final_norm: bool,
) -> impl Strategy<Value = (GptConfig, Array2<usize>, Array2<usize>, u64)> {
    (strategies::gpt_batch(), strategies::seed()).prop_map(
        move |((mut cfg, ids, targets), seed)| {
            cfg.final_norm = final_norm;
            (cfg, ids, targets, seed)
        },
    )
}

fn check_linear(x: &Array3<f64>, c_out: usize, bias: bool, seed: u64) -> Result<(), TestCaseError> {
    let mut linear = Linear::new(x.dim().2, c_out, bias, &mut rng(seed)).unwrap();
    jitter_params(&mut linear, seed, 0.5);
    let expected: &[&str] = if bias { &["w", "b"] } else { &["w"] };
    prop_assert_eq!(linear.param_names(), expected);
    gradcheck_passes(&mut linear, x, true)?;
    Ok(())
}

/// A layer that is the GPT followed by its loss head: `ids (B, T)` → loss `(1, 1, 1)`.
/// Checking it covers the fused softmax cross-entropy backward feeding the model's backward.
struct GptWithLoss {
    gpt: Gpt<f64>,
    head: CrossEntropy<f64>,
}

/// The GPT's parameters under the GPT's own names (no `gpt.` prefix).
impl Params<f64> for GptWithLoss {
    fn visit_params<'a>(&'a self, path: &mut ParamPath, f: &mut ParamVisitor<'a, '_, f64>) {
        self.gpt.visit_params(path, f);
    }

    fn visit_params_mut<'a>(
        &'a mut self,
        path: &mut ParamPath,
        f: &mut ParamVisitorMut<'a, '_, f64>,
    ) {
        self.gpt.visit_params_mut(path, f);
    }
}

impl Layer<f64, Array2<usize>> for GptWithLoss {
    fn kind(&self) -> &'static str {
        "GptWithLoss"
    }

    fn forward(&mut self, ids: &Array2<usize>) -> baregpt::Result<Array3<f64>> {
        let logits = self.gpt.forward(ids)?;
        self.head.forward(&logits)
    }

    fn infer_with(
        &self,
        ids: &Array2<usize>,
        state: &mut InferState<'_, f64>,
    ) -> baregpt::Result<Array3<f64>> {
        let logits = self.gpt.infer_with(ids, state)?;
        self.head.infer_with(&logits, state)
    }

    fn backward(&mut self, dy: &Array3<f64>) -> baregpt::Result<()> {
        let d_logits = self.head.backward(dy)?;
        Layer::backward(&mut self.gpt, &d_logits)
    }

    fn set_dropout(&mut self, mode: DropoutMode) {
        self.gpt.set_dropout(mode);
    }
}

/// Builds a jittered GPT and checks its logits (the `Layer` form) and its loss; returns both
/// reports.
fn check_gpt(
    cfg: &GptConfig,
    ids: &Array2<usize>,
    targets: &Array2<usize>,
    seed: u64,
) -> Result<(GradCheckReport, GradCheckReport), TestCaseError> {
    let mut gpt = Gpt::<f64>::new(cfg.clone(), &mut rng(seed))
        .map_err(|e| TestCaseError::fail(format!("{e}")))?;
    jitter_params(&mut gpt, seed, 0.3);
    let report = gradcheck_passes(&mut gpt, ids, false)?;
    let pos = report.tensor("embed.pos").map(|t| t.shape.clone());
    let learned = cfg.positions == baregpt::gpt::parts::PositionKind::Learned;
    prop_assert_eq!(pos, learned.then(|| vec![cfg.context, cfg.d_model]));

    let mut head = CrossEntropy::new();
    head.set_targets(targets.clone());
    let mut with_loss = GptWithLoss { gpt, head };
    let loss_report = gradcheck_passes(&mut with_loss, ids, false)?;
    Ok((report, loss_report))
}

proptest! {
    #![proptest_config(config(64, REGRESSIONS))]

    #[test]
    fn linear_with_bias((x, seed) in activations_and_seed(5), c_out in 1..=5usize) {
        check_linear(&x, c_out, true, seed)?;
    }

    #[test]
    fn linear_without_bias((x, seed) in activations_and_seed(5), c_out in 1..=5usize) {
        check_linear(&x, c_out, false, seed)?;
    }

    #[test]
    fn layer_norm((x, seed) in activations_and_seed(6)) {
        let mut ln = LayerNorm::new(x.dim().2).unwrap();
        jitter_params(&mut ln, seed, 0.5);
        gradcheck_passes(&mut ln, &x, true)?;
    }

    #[test]
    fn rms_norm((x, seed) in activations_and_seed(7), eps in prop_oneof![Just(1e-5), Just(1e-6), Just(0.1)]) {
        let mut norm = RmsNorm::with_eps(x.dim().2, eps).unwrap();
        jitter_params(&mut norm, seed, 0.5);
        prop_assert_eq!(norm.param_names(), ["gamma"]);
        gradcheck_passes(&mut norm, &x, true)?;
    }

    #[test]
    fn gelu((x, _seed) in activations_and_seed(6)) {
        let mut gelu = Gelu::new();
        gradcheck_passes(&mut gelu, &x, true)?;
    }

    #[test]
    fn cross_entropy_as_a_layer(
        (logits, targets) in strategies::dims(3, 5, 6).prop_flat_map(|(b, t, v)| {
            (strategies::activations(b, t, v), strategies::token_ids(b, t, v))
        })
    ) {
        let mut head = CrossEntropy::new();
        head.set_targets(targets);
        gradcheck_passes(&mut head, &(logits * 2.0), true)?;
    }

    #[test]
    fn embedding_params_only(
        (ids, vocab, c, context, seed) in (1..=8usize, 1..=4usize, 1..=6usize)
            .prop_flat_map(|(v, c, ctx)| (1..=3usize, 1..=ctx, Just((v, c, ctx))))
            .prop_flat_map(|(b, t, (v, c, ctx))| {
                (strategies::token_ids(b, t, v), Just(v), Just(c), Just(ctx), strategies::seed())
            })
    ) {
        let mut embed = Embedding::new(vocab, c, context, &mut rng(seed)).unwrap();
        let report = gradcheck_passes(&mut embed, &ids, false)?;
        prop_assert_eq!(&report.tensors[1].shape, &vec![context, c]);
    }
}

proptest! {
    #![proptest_config(config(48, REGRESSIONS))]

    #[test]
    fn mlp((x, seed) in activations_and_seed(4), hidden in 1..=8usize) {
        let mut mlp = Mlp::new(x.dim().2, hidden, &mut rng(seed)).unwrap();
        jitter_params(&mut mlp, seed, 0.3);
        gradcheck_passes(&mut mlp, &x, true)?;
    }

    #[test]
    fn swiglu((x, seed) in activations_and_seed(5), hidden in 1..=9usize) {
        let mut mlp = SwiGlu::new(x.dim().2, hidden, &mut rng(seed)).unwrap();
        jitter_params(&mut mlp, seed, 0.3);
        prop_assert_eq!(mlp.param_names(), ["w_gate", "w_up", "w_down"]);
        gradcheck_passes(&mut mlp, &(x * 2.0), true)?;
    }

    #[test]
    fn attention_one_head((x, heads, seed) in attention_case(1..=1)) {
        let mut attn = Attention::new(x.dim().2, heads, &mut rng(seed)).unwrap();
        jitter_params(&mut attn, seed, 0.3);
        gradcheck_passes(&mut attn, &x, true)?;
    }

    #[test]
    fn attention_grouped_biased_rotary((x, config, seed) in attention_variant_case()) {
        let mut attn = Attention::with_config(x.dim().2, config, &mut rng(seed)).unwrap();
        jitter_params(&mut attn, seed, 0.3);
        let report = gradcheck_passes(&mut attn, &x, true)?;
        prop_assert_eq!(report.tensor("b_o").is_some(), config.bias);
        let w_k = report.tensor("w_k").map(|t| t.shape.clone());
        prop_assert_eq!(w_k, Some(vec![x.dim().2, config.n_kv_heads * x.dim().2 / config.n_heads]));
    }

    /// Dropout held at one mask (`DropoutMode::Hold`), so the checker sees one function.
    #[test]
    fn attention_with_dropout_held((x, config, seed) in attention_variant_case()) {
        let config = config.with_dropout(0.25, seed);
        let mut attn = Attention::with_config(x.dim().2, config, &mut rng(seed)).unwrap();
        attn.set_dropout(baregpt::layer::DropoutMode::Hold);
        jitter_params(&mut attn, seed, 0.3);
        gradcheck_passes(&mut attn, &x, true)?;
    }

    #[test]
    fn attention_several_heads((x, heads, seed) in attention_case(2..=3)) {
        let mut attn = Attention::new(x.dim().2, heads, &mut rng(seed)).unwrap();
        prop_assert!(attn.n_heads() >= 2);
        jitter_params(&mut attn, seed, 0.3);
        gradcheck_passes(&mut attn, &x, true)?;
    }
}

proptest! {
    #![proptest_config(config(32, REGRESSIONS))]

    /// Width 2 included: see `sequential_of_boxed_layers`.
    #[test]
    fn block(
        (x, heads, seed) in attention_case(1..=2),
        hidden in 1..=8usize,
    ) {
        let mut block = Block::new(x.dim().2, heads, hidden, &mut rng(seed)).unwrap();
        jitter_params(&mut block, seed, 0.3);
        gradcheck_passes(&mut block, &x, true)?;
    }

    /// Widths from 1: a LayerNorm over two features is `±1` by the sign of their difference,
    /// so when the two nearly agree its curvature is large. Plain central differences at
    /// ε = 1e-6 were off by more than the tolerance there (seen as a 1e-4 relative error on a
    /// downstream bias); the Richardson-extrapolated ones are not, and what they cannot judge
    /// is reported unreliable, not failed.
    #[test]
    fn sequential_of_boxed_layers(
        (x, seed) in activations_and_seed(3),
        heads in 1..=2usize,
        head_dim in 1..=4usize,
        hidden in 1..=6usize,
        c_out in 1..=4usize,
    ) {
        let width = heads * head_dim;
        let mut r = rng(seed);
        let layers: Vec<Box<dyn Layer<f64>>> = vec![
            Box::new(Linear::new(x.dim().2, width, true, &mut r).unwrap()),
            Box::new(LayerNorm::new(width).unwrap()),
            Box::new(Attention::new(width, heads, &mut r).unwrap()),
            Box::new(Gelu::new()),
            Box::new(Mlp::new(width, hidden, &mut r).unwrap()),
            Box::new(Block::new(width, heads, hidden, &mut r).unwrap()),
            Box::new(RmsNorm::new(width).unwrap()),
            Box::new(SwiGlu::new(width, hidden, &mut r).unwrap()),
            Box::new(Linear::new(width, c_out, false, &mut r).unwrap()),
        ];
        let mut net = Sequential::from_layers(layers);
        jitter_params(&mut net, seed, 0.3);
        let report = gradcheck_passes(&mut net, &x, true)?;
        prop_assert!(report.tensor("5.attn.w_q").is_some());
    }
}

proptest! {
    #![proptest_config(config(16, REGRESSIONS))]

    #[test]
    fn whole_gpt_with_final_norm((cfg, ids, targets, seed) in gpt_case(true)) {
        let (report, _) = check_gpt(&cfg, &ids, &targets, seed)?;
        prop_assert!(report.tensor("ln_f.gamma").is_some());
    }

    #[test]
    fn whole_gpt_rotary_grouped_query((cfg, ids, targets, seed) in rotary_gqa_gpt_case()) {
        let (report, _) = check_gpt(&cfg, &ids, &targets, seed)?;
        prop_assert!(report.tensor("blocks.0.attn.w_k").is_some());
    }

    #[test]
    fn whole_gpt_without_final_norm((cfg, ids, targets, seed) in gpt_case(false)) {
        let (report, _) = check_gpt(&cfg, &ids, &targets, seed)?;
        prop_assert!(report.tensor("ln_f.gamma").is_none());
    }

    /// Llama's norm and MLP in every block (and `ln_f` when drawn).
    #[test]
    fn whole_gpt_with_rms_norm_and_swiglu(
        (cfg, ids, targets, seed) in (strategies::gpt_batch(), strategies::seed())
            .prop_map(|((cfg, ids, targets), seed)| (llama_parts(cfg), ids, targets, seed))
    ) {
        let (report, _) = check_gpt(&cfg, &ids, &targets, seed)?;
        prop_assert!(report.tensor("blocks.0.mlp.w_gate").is_some());
        prop_assert!(report.tensor("blocks.0.ln1.beta").is_none());
    }
}

/// `cfg` with RMSNorm (`eps = 1e-6`) and the SwiGLU MLP.
fn llama_parts(cfg: GptConfig) -> GptConfig {
    GptConfig {
        norm: NormKind::RmsNorm { eps: 1e-6 },
        mlp: MlpKind::SwiGlu,
        ..cfg
    }
}

/// A [`TiedHead`] with the table it borrows, as one float layer `(B, T, C)` → `(B, T, V)`
/// whose parameters are `table` and the head's `b`.
struct TableAndHead {
    table: Param2<f64>,
    head: TiedHead<f64>,
}

impl Params<f64> for TableAndHead {
    baregpt::params!(f64; table, head);
}

impl Layer<f64> for TableAndHead {
    fn kind(&self) -> &'static str {
        "TableAndHead"
    }

    fn forward(&mut self, x: &Array3<f64>) -> baregpt::Result<Array3<f64>> {
        self.head.forward(x, &self.table)
    }

    fn infer_with(
        &self,
        x: &Array3<f64>,
        _: &mut InferState<'_, f64>,
    ) -> baregpt::Result<Array3<f64>> {
        self.head.infer(x, &self.table)
    }

    fn backward(&mut self, dy: &Array3<f64>) -> baregpt::Result<Array3<f64>> {
        self.head.backward(dy, &mut self.table)
    }
}

proptest! {
    #![proptest_config(config(48, REGRESSIONS))]

    #[test]
    fn tied_head((x, seed) in activations_and_seed(5), vocab in 1..=6usize, bias in any::<bool>()) {
        let table = baregpt::layers::normal(vocab, x.dim().2, 1.0, &mut rng(seed));
        let mut layer = TableAndHead { table: Param2::new(table), head: TiedHead::new(vocab, bias).unwrap() };
        jitter_params(&mut layer, seed, 0.5);
        let report = gradcheck_passes(&mut layer, &x, true)?;
        prop_assert_eq!(report.tensor("table").map(|t| t.shape.clone()), Some(vec![vocab, x.dim().2]));
        prop_assert_eq!(report.tensor("head.b").is_some(), bias);
    }
}

proptest! {
    #![proptest_config(config(16, REGRESSIONS))]

    /// A tied head: `embed.tok` is used twice and checked once, as the sum of both uses.
    #[test]
    fn whole_gpt_with_tied_head(
        (cfg, ids, targets, seed) in gpt_case(true),
        bias in any::<bool>(),
    ) {
        let cfg = GptConfig { head: HeadKind::Tied { bias }, ..cfg };
        let (report, loss_report) = check_gpt(&cfg, &ids, &targets, seed)?;
        for r in [&report, &loss_report] {
            prop_assert!(r.tensor("embed.tok").is_some());
            prop_assert!(r.tensor("head.w").is_none());
            prop_assert_eq!(r.tensor("head.b").is_some(), bias);
        }
    }
}

/// A 2-layer, 2-head GPT with context 6 and a final LayerNorm.
fn small_config() -> GptConfig {
    GptConfig {
        mlp_hidden: 16,
        final_norm: true,
        ..GptConfig::with_sizes(11, 8, 2, 2, 6)
    }
}

fn ids_for(b: usize, t: usize, vocab: usize, salt: usize) -> Array2<usize> {
    Array2::from_shape_fn((b, t), |(i, j)| (7 * i + 3 * j + salt) % vocab)
}

fn unwrap_check<T>(result: Result<T, TestCaseError>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn gpt_single_token_sequence() {
    let cfg = small_config();
    let (ids, targets) = (ids_for(2, 1, 11, 0), ids_for(2, 1, 11, 5));
    let (report, _) = unwrap_check(check_gpt(&cfg, &ids, &targets, 11));
    // T = 1: only row 0 of the position table receives a gradient, yet it keeps its shape.
    let pos = report.tensor("embed.pos").unwrap();
    assert_eq!(pos.shape, vec![6, 8]);
}

#[test]
fn gpt_sequence_shorter_than_context() {
    let cfg = small_config();
    let (ids, targets) = (ids_for(3, 4, 11, 1), ids_for(3, 4, 11, 2));
    let (report, _) = unwrap_check(check_gpt(&cfg, &ids, &targets, 12));
    assert_eq!(report.tensor("embed.pos").unwrap().shape, vec![6, 8]);

    // Rows T..context of the position gradient are exactly zero after a real backward.
    let mut gpt = Gpt::<f64>::new(cfg, &mut rng(12)).unwrap();
    gpt.loss(&ids, &targets).unwrap();
    gpt.backward_loss().unwrap();
    let mut unused_rows_zero = None;
    gpt.for_each_param(&mut |name, p| {
        if name == "embed.pos" {
            let grad = p.grad.into_dimensionality::<ndarray::Ix2>().unwrap();
            let used = grad.slice(ndarray::s![..4, ..]).iter().any(|&g| g != 0.0);
            let unused = grad.slice(ndarray::s![4.., ..]).iter().all(|&g| g == 0.0);
            unused_rows_zero = Some(used && unused);
        }
    });
    assert_eq!(unused_rows_zero, Some(true));
}

/// Prints the worst relative and absolute errors of a report (for the closing note).
fn summarize(what: &str, report: &GradCheckReport) {
    let worst = report
        .tensors
        .iter()
        .max_by(|a, b| a.max_rel_error.total_cmp(&b.max_rel_error))
        .map_or("-", |t| t.name.as_str());
    let elements: usize = report.tensors.iter().map(|t| t.checked).sum();
    eprintln!(
        "{what}: {} tensors, {elements} elements; worst relative error {:.3e} (in `{worst}`), \
         worst absolute error {:.3e}",
        report.tensors.len(),
        report.max_rel_error(),
        report.max_abs_error(),
    );
}

/// The numbers quoted in the closing note: the checker's worst errors over every parameter of
/// a whole small GPT in f64 (2 layers, 2 heads, final LayerNorm, B = 2 at the full context
/// T = 6), through the logits and through the mean cross-entropy.
///
/// The bounds: a wrong gradient term shows up as a relative error of order one, while the
/// central difference's own error here is round-off, about `ε_mach·|f| / eps ≈ 1e-10·|f|`.
/// So every element must be within the checker's default `atol` (1e-7) on the absolute error
/// alone, and the relative error (counted only above `atol`) below 1e-4.
#[test]
fn worst_relative_error_over_a_small_gpt() {
    let cfg = small_config();
    let (ids, targets) = (ids_for(2, 6, 11, 3), ids_for(2, 6, 11, 4));
    let (logits, loss) = unwrap_check(check_gpt(&cfg, &ids, &targets, 2024));
    summarize("whole small Gpt (f64), logits projected", &logits);
    summarize("whole small Gpt (f64), mean cross-entropy", &loss);
    for report in [&logits, &loss] {
        assert!(report.max_rel_error() < 1e-4, "{report}");
        assert!(report.max_abs_error() < report.atol, "{report}");
    }
}

/// The same small GPT assembled from RMSNorm and SwiGLU, under the same bounds.
#[test]
fn worst_relative_error_over_a_small_gpt_with_rms_norm_and_swiglu() {
    let cfg = llama_parts(small_config());
    let (ids, targets) = (ids_for(2, 6, 11, 3), ids_for(2, 6, 11, 4));
    let (logits, loss) = unwrap_check(check_gpt(&cfg, &ids, &targets, 2025));
    summarize(
        "small Gpt, RMSNorm + SwiGLU (f64), logits projected",
        &logits,
    );
    summarize(
        "small Gpt, RMSNorm + SwiGLU (f64), mean cross-entropy",
        &loss,
    );
    assert!(logits.tensor("ln_f.gamma").is_some());
    assert!(logits.tensor("blocks.1.mlp.w_down").is_some());
    for report in [&logits, &loss] {
        assert!(report.max_rel_error() < 1e-4, "{report}");
        assert!(report.max_abs_error() < report.atol, "{report}");
    }
}

/// A fixed rotary + grouped-query (4 heads on 2, head size 2) + biased GPT at the full
/// context, through the logits and the loss, held to the bounds of the test above.
#[test]
fn worst_relative_error_over_a_rotary_gqa_gpt() {
    use baregpt::gpt::parts::{AttentionKind, PositionKind};
    let cfg = GptConfig {
        attention: AttentionKind::GroupedQuery {
            n_kv_heads: 2,
            bias: true,
        },
        positions: PositionKind::Rotary { theta: 100.0 },
        n_heads: 4,
        ..small_config()
    };
    let (ids, targets) = (ids_for(2, 5, 11, 3), ids_for(2, 5, 11, 4));
    let (logits, loss) = unwrap_check(check_gpt(&cfg, &ids, &targets, 2025));
    summarize("rotary GQA Gpt (f64), logits projected", &logits);
    summarize("rotary GQA Gpt (f64), mean cross-entropy", &loss);
    for report in [&logits, &loss] {
        assert!(report.tensor("blocks.1.attn.b_k").is_some(), "{report}");
        assert!(report.max_rel_error() < 1e-4, "{report}");
        assert!(report.max_abs_error() < report.atol, "{report}");
    }
}

// Dropout: the checker holds each site's mask (DropoutMode::Hold), so a layer with dropout on
// is one fixed function whose backward must multiply by that mask.

/// A drop probability in `[0.1, 0.3]`.
fn drop_p() -> impl Strategy<Value = f64> {
    0.1..=0.3f64
}

proptest! {
    #![proptest_config(config(64, REGRESSIONS))]

    #[test]
    fn dropout_layer((x, seed) in activations_and_seed(6), p in drop_p(), warm in 0..3u64) {
        let mut drop = Dropout::new(p, seed).unwrap();
        for _ in 0..warm {
            drop.forward(&x).unwrap(); // the check holds whichever pass came last
        }
        gradcheck_passes(&mut drop, &x, true)?;
        prop_assert_eq!(drop.site().passes(), warm.max(1));
        prop_assert_eq!(drop.site().mode(), DropoutMode::Train);
    }
}

proptest! {
    #![proptest_config(config(32, REGRESSIONS))]

    #[test]
    fn block_with_residual_dropout(
        (x, heads, seed) in attention_case(1..=2),
        hidden in 1..=8usize,
        p in drop_p(),
    ) {
        let block = Block::new(x.dim().2, heads, hidden, &mut rng(seed)).unwrap();
        let mut block = block.with_residual_dropout(p, [seed, seed ^ 1]).unwrap();
        jitter_params(&mut block, seed, 0.3);
        gradcheck_passes(&mut block, &x, true)?;
    }
}

proptest! {
    #![proptest_config(config(16, REGRESSIONS))]

    #[test]
    fn whole_gpt_with_embedding_and_residual_dropout(
        (mut cfg, ids, targets, seed) in gpt_case(true),
        p in drop_p(),
    ) {
        cfg.dropout = DropoutConfig { embed: p, residual: p, ..DropoutConfig::default() };
        let (report, loss_report) = check_gpt(&cfg, &ids, &targets, seed)?;
        prop_assert!(report.tensor("embed.tok").is_some());
        prop_assert!(loss_report.passed());
    }
}

#[test]
fn gpt_with_dropout_is_checked_with_its_masks_on() {
    let cfg = GptConfig {
        dropout: DropoutConfig::uniform(0.3),
        ..small_config()
    };
    let (ids, targets) = (ids_for(2, 5, 11, 3), ids_for(2, 5, 11, 4));
    let mut gpt = Gpt::<f64>::new(cfg.clone(), &mut rng(21)).unwrap();
    gpt.set_dropout(DropoutMode::Hold);
    let held = gpt.forward(&ids).unwrap();
    // The held function is not the clean one: the check below differentiates a dropped model.
    assert_ne!(held, gpt.infer(&ids).unwrap());
    let (report, _) = unwrap_check(check_gpt(&cfg, &ids, &targets, 21));
    summarize("gpt with dropout 0.3", &report);
}
