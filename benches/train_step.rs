//! One full training step (forward, backward, Adam) of a `Gpt<f32>`, timed per preset.
//!
//! ```sh
//! cargo bench --bench train_step -- --preset baregpt            # one preset, human-readable
//! cargo bench --bench train_step -- --preset all --json         # every preset, JSON lines
//! cargo bench --bench train_step -- --preset tiny --threads 1   # fix the thread count
//! cargo bench --bench train_step -- --preset llama-4l            # a family preset (also gpt2-4l)
//! cargo bench --bench train_step -- --preset char-6l-t1024       # a scaling preset
//! cargo bench --bench train_step -- --preset scaling             # all five scaling presets
//! cargo bench --bench train_step -- --preset char-6l --context 512 --batch 4  # custom shape
//! cargo bench --bench train_step -- --preset char-6l --alloc-histogram       # sizes >= 1 MiB
//! ```
//!
//! Printed per preset: median, min and max milliseconds per step over `--steps` steps after
//! `--warmup` untimed ones, tokens per second, achieved GFLOP/s, and memory. The FLOP count
//! is the usual model estimate, `6 · (matmul weights) · tokens` plus causal attention counted
//! in full, `layers · B · 3 · (4 · T² · C)` — the same formula as the PyTorch peer script
//! `benches/torch_step.py`, so the two are comparable. Memory: the process's peak resident
//! set (`VmHWM`) and its growth over the resident set before the model was built.
//!
//! Scaling presets `char-6l-t256`, `-t512`, `-t1024`, `-t2048` and `-t4096` are `char-6l`'s
//! model (V 65, C 384, 6 heads, 6 layers, MLP 4·C) at that context with a fixed
//! [`SCALING_TOKENS`] = 4,096 tokens per step (`B = 4096 / T`: 16, 8, 4, 2, 1), so every row
//! does the same matrix-product work and only the attention's `T²` terms grow. `--context T`
//! and `--batch B` override any preset's sequence length and batch (the position table grows
//! with `T`).
//!
//! Allocations: heap allocations (calls and bytes) of every timed step, counted by a global
//! allocator wrapper around the system one, with the largest single allocation of each step.
//! The report gives the mean per step, the means over the first and the last half of the timed
//! steps and the maximum of any step (so that growth with the step count shows), and the
//! largest allocation; `--alloc-histogram` adds every size of at least 1 MiB allocated during
//! the timed steps, with its count per step (in `--json`: `"alloc_histogram"`, pairs of the
//! size in bytes and the count per step, largest first).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use baregpt::gpt::parts::{AttentionKind, MlpKind};
use baregpt::prelude::*;
use baregpt::{Adam, AdamConfig, Gpt, GptConfig};
use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// The system allocator, counting calls and bytes and keeping the largest size, so the
/// benchmark can report what a warmed-up step still allocates.
struct CountingAlloc;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED_BYTES: AtomicUsize = AtomicUsize::new(0);
/// The largest single size since it was last reset (once per timed step).
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// Whether sizes of at least [`HISTOGRAM_MIN`] bytes go into the histogram (timed steps of a
/// `--alloc-histogram` run only).
static HISTOGRAM_ON: AtomicBool = AtomicBool::new(false);
/// The smallest size the histogram records: 1 MiB.
const HISTOGRAM_MIN: usize = 1 << 20;
/// Slots of the histogram's open-addressing table (distinct sizes it can hold).
const HISTOGRAM_SLOTS: usize = 1024;
/// The histogram's sizes (0: empty slot) and their counts, filled without allocating (the
/// allocator cannot allocate) by linear probing with compare-and-swap.
static HISTOGRAM_SIZES: [AtomicUsize; HISTOGRAM_SLOTS] =
    [const { AtomicUsize::new(0) }; HISTOGRAM_SLOTS];
static HISTOGRAM_COUNTS: [AtomicUsize; HISTOGRAM_SLOTS] =
    [const { AtomicUsize::new(0) }; HISTOGRAM_SLOTS];
/// Allocations of at least 1 MiB that found the histogram full.
static HISTOGRAM_DROPPED: AtomicUsize = AtomicUsize::new(0);

/// Counts one allocation of `size` bytes.
fn record(size: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    ALLOCATED_BYTES.fetch_add(size, Ordering::Relaxed);
    LARGEST.fetch_max(size, Ordering::Relaxed);
    if size >= HISTOGRAM_MIN && HISTOGRAM_ON.load(Ordering::Relaxed) {
        histogram_add(size);
    }
}

/// Adds one allocation of `size` (non-zero) bytes to the histogram.
fn histogram_add(size: usize) {
    let start = (size >> 12).wrapping_mul(0x9E37_79B9) % HISTOGRAM_SLOTS;
    for probe in 0..HISTOGRAM_SLOTS {
        let slot = (start + probe) % HISTOGRAM_SLOTS;
        let held = match HISTOGRAM_SIZES[slot].compare_exchange(
            0,
            size,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => size,
            Err(held) => held,
        };
        if held == size {
            HISTOGRAM_COUNTS[slot].fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    HISTOGRAM_DROPPED.fetch_add(1, Ordering::Relaxed);
}

/// The histogram's `(size in bytes, count)` pairs, largest size first.
fn histogram() -> Vec<(usize, usize)> {
    let mut sizes: Vec<(usize, usize)> = HISTOGRAM_SIZES
        .iter()
        .zip(&HISTOGRAM_COUNTS)
        .map(|(s, c)| (s.load(Ordering::Acquire), c.load(Ordering::Relaxed)))
        .filter(|&(s, _)| s != 0)
        .collect();
    sizes.sort_unstable_by_key(|&(size, _)| std::cmp::Reverse(size));
    sizes
}

/// Empties the histogram.
fn histogram_clear() {
    for (s, c) in HISTOGRAM_SIZES.iter().zip(&HISTOGRAM_COUNTS) {
        s.store(0, Ordering::Release);
        c.store(0, Ordering::Relaxed);
    }
    HISTOGRAM_DROPPED.store(0, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counting touches
// only atomics and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: forwarded unchanged; the caller upholds realloc's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// `(name, vocab, d_model, heads, layers, T, B)`, as in the PyTorch peer script.
const PRESETS: [(&str, usize, usize, usize, usize, usize, usize); 4] = [
    ("tiny", 65, 64, 4, 2, 32, 8),
    ("baregpt", 65, 256, 4, 2, 128, 16),
    ("char-6l", 65, 384, 6, 6, 256, 8),
    ("gpt2-small", 50257, 768, 12, 12, 64, 4),
];

/// `(name, vocab, d_model, heads, kv heads, layers, T, B)`.
type FamilyPreset = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

/// The family presets, as benches/torch_step.py builds them: `(name, vocab, d_model, heads,
/// kv heads, layers, T, B)`; `gpt2-*` is [`GptConfig::gpt2`], `llama-*` [`GptConfig::llama`].
/// `gpt2-124m` is GPT-2 small itself ([`GptConfig::gpt2_small`], 124,439,808 parameters
/// with its 1,024 positions), stepped on sequences of 128.
const FAMILY_PRESETS: [FamilyPreset; 3] = [
    ("gpt2-4l", 4096, 256, 8, 8, 4, 128, 4),
    ("llama-4l", 4096, 256, 8, 4, 4, 128, 4),
    ("gpt2-124m", 50257, 768, 12, 12, 12, 128, 4),
];

/// The contexts of the scaling presets `char-6l-t{T}`.
const SCALING_CONTEXTS: [usize; 5] = [256, 512, 1024, 2048, 4096];

/// Tokens per step of every scaling preset (`B = SCALING_TOKENS / T`), as in
/// benches/torch_step.py.
const SCALING_TOKENS: usize = 4096;

struct Args {
    preset: String,
    steps: usize,
    warmup: usize,
    threads: usize,
    json: bool,
    /// `--context T`: overrides the preset's sequence length.
    context: Option<usize>,
    /// `--batch B`: overrides the preset's batch.
    batch: Option<usize>,
    /// `--alloc-histogram`: list the sizes of at least 1 MiB allocated in the timed steps.
    alloc_histogram: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        preset: "all".into(),
        steps: 8,
        warmup: 3,
        threads: 0,
        json: false,
        context: None,
        batch: None,
        alloc_histogram: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| v.parse::<usize>().map_err(|e| format!("{name}: {e}"));
        match arg.as_str() {
            "--preset" => args.preset = value("--preset")?,
            "--steps" => args.steps = number("--steps", value("--steps")?)?,
            "--warmup" => args.warmup = number("--warmup", value("--warmup")?)?,
            "--threads" => args.threads = number("--threads", value("--threads")?)?,
            "--context" => args.context = Some(number("--context", value("--context")?)?),
            "--batch" => args.batch = Some(number("--batch", value("--batch")?)?),
            "--alloc-histogram" => args.alloc_histogram = true,
            "--json" => args.json = true,
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.steps == 0 {
        return Err("--steps must be positive".into());
    }
    if args.context == Some(0) || args.batch == Some(0) {
        return Err("--context and --batch must be positive".into());
    }
    Ok(args)
}

/// A field of `/proc/self/status` in MiB (`VmRSS`, `VmHWM`); 0 where unavailable.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `6·(matrix parameters)·tokens + attention`, the formula torch_step.py uses: the blocks'
/// projections (grouped K/V narrower), their MLP matrices (three for SwiGLU), the head.
fn model_flops(config: &GptConfig, t: usize, b: usize) -> f64 {
    let (vocab, d, layers) = (config.vocab_size, config.d_model, config.n_layers);
    let kv = match config.attention {
        AttentionKind::GroupedQuery { n_kv_heads, .. } => n_kv_heads * (d / config.n_heads),
        _ => d,
    };
    let mlp_matrices = if config.mlp == MlpKind::SwiGlu { 3 } else { 2 };
    let per_layer = 2 * d * d + 2 * d * kv + mlp_matrices * d * config.mlp_hidden;
    let matmul_params = layers * per_layer + d * vocab;
    let attention = layers * b * 3 * 4 * t * t * d;
    (6 * matmul_params * b * t + attention) as f64
}

/// The configuration, sequence length and batch of a preset, before any override.
fn preset(name: &str) -> Option<(GptConfig, usize, usize)> {
    if let Some(t) = name
        .strip_prefix("char-6l-t")
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|t| SCALING_CONTEXTS.contains(t))
    {
        let (config, _, _) = preset("char-6l")?;
        return Some((config, t, SCALING_TOKENS / t));
    }
    if let Some(&(_, vocab, d, heads, layers, t, b)) = PRESETS.iter().find(|p| p.0 == name) {
        let config = GptConfig {
            mlp_hidden: 4 * d,
            final_norm: true,
            ..GptConfig::with_sizes(vocab, d, heads, layers, t)
        };
        return Some((config, t, b));
    }
    let &(_, vocab, d, heads, kv_heads, layers, t, b) =
        FAMILY_PRESETS.iter().find(|p| p.0 == name)?;
    let config = match name {
        "gpt2-124m" => GptConfig::gpt2_small(),
        _ if name.starts_with("gpt2") => GptConfig::gpt2(vocab, d, heads, layers, t),
        _ => GptConfig::llama(vocab, d, heads, kv_heads, layers, t),
    };
    Some((config, t, b))
}

/// Heap allocations of one timed step.
#[derive(Clone, Copy, Default)]
struct StepAllocs {
    calls: usize,
    bytes: usize,
    /// The largest single allocation (or reallocation) of the step, in bytes.
    largest: usize,
}

/// Bytes to MiB.
fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The mean of `f` over `steps`.
fn mean(steps: &[StepAllocs], f: impl Fn(&StepAllocs) -> usize) -> f64 {
    steps.iter().map(&f).sum::<usize>() as f64 / steps.len().max(1) as f64
}

/// What the timed steps allocated: means over all, the first and the last half, maxima.
struct AllocReport {
    mean_calls: f64,
    mean_mib: f64,
    first_calls: f64,
    last_calls: f64,
    first_mib: f64,
    last_mib: f64,
    max_calls: usize,
    max_mib: f64,
    largest_mib: f64,
    by_step: Vec<StepAllocs>,
    /// `(size in bytes, count over all timed steps)` of sizes of at least 1 MiB.
    histogram: Vec<(usize, usize)>,
    histogram_dropped: usize,
}

impl AllocReport {
    fn new(by_step: Vec<StepAllocs>, histogram: Vec<(usize, usize)>, dropped: usize) -> Self {
        // With one timed step the two halves are that step; with an odd count the middle step
        // is in neither.
        let half = (by_step.len() / 2).max(1);
        let (first, last) = (&by_step[..half], &by_step[by_step.len() - half..]);
        Self {
            mean_calls: mean(&by_step, |s| s.calls),
            mean_mib: mib(mean(&by_step, |s| s.bytes) as usize),
            first_calls: mean(first, |s| s.calls),
            last_calls: mean(last, |s| s.calls),
            first_mib: mib(mean(first, |s| s.bytes) as usize),
            last_mib: mib(mean(last, |s| s.bytes) as usize),
            max_calls: by_step.iter().map(|s| s.calls).max().unwrap_or(0),
            max_mib: mib(by_step.iter().map(|s| s.bytes).max().unwrap_or(0)),
            largest_mib: mib(by_step.iter().map(|s| s.largest).max().unwrap_or(0)),
            by_step,
            histogram,
            histogram_dropped: dropped,
        }
    }

    /// The JSON fields (without braces), keys `allocs_*` and `alloc_*`.
    fn json(&self) -> String {
        let list = |f: &dyn Fn(&StepAllocs) -> String| {
            self.by_step.iter().map(f).collect::<Vec<_>>().join(", ")
        };
        let steps = self.by_step.len() as f64;
        let histogram = self
            .histogram
            .iter()
            .map(|&(size, count)| format!("[{size}, {:.3}]", count as f64 / steps))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "\"allocs_per_step\": {:.1}, \"alloc_mib_per_step\": {:.1}, \
             \"allocs_first_half\": {:.1}, \"allocs_last_half\": {:.1}, \
             \"alloc_mib_first_half\": {:.1}, \"alloc_mib_last_half\": {:.1}, \
             \"allocs_max_step\": {}, \"alloc_mib_max_step\": {:.1}, \
             \"largest_alloc_mib\": {:.2}, \"allocs_by_step\": [{}], \
             \"alloc_mib_by_step\": [{}], \"largest_alloc_mib_by_step\": [{}], \
             \"alloc_histogram\": [{histogram}], \
             \"alloc_histogram_dropped\": {}",
            self.mean_calls,
            self.mean_mib,
            self.first_calls,
            self.last_calls,
            self.first_mib,
            self.last_mib,
            self.max_calls,
            self.max_mib,
            self.largest_mib,
            list(&|s| s.calls.to_string()),
            list(&|s| format!("{:.1}", mib(s.bytes))),
            list(&|s| format!("{:.2}", mib(s.largest))),
            self.histogram_dropped,
        )
    }

    /// The human-readable lines after the timing line.
    fn text(&self) -> String {
        let mut out = format!(
            "{:>11}  allocations per step: mean {:.0} ({:.1} MiB), first half {:.0} ({:.1} \
             MiB), last half {:.0} ({:.1} MiB), max {} ({:.1} MiB); largest single {:.2} MiB",
            "",
            self.mean_calls,
            self.mean_mib,
            self.first_calls,
            self.first_mib,
            self.last_calls,
            self.last_mib,
            self.max_calls,
            self.max_mib,
            self.largest_mib,
        );
        if !self.histogram.is_empty() || self.histogram_dropped > 0 {
            let steps = self.by_step.len() as f64;
            out.push_str(&format!(
                "\n{:>11}  allocations of at least 1 MiB, per step (size in MiB x count):",
                ""
            ));
            for &(size, count) in &self.histogram {
                out.push_str(&format!(
                    "\n{:>11}  {:10.3} MiB x {:7.2}  ({size} bytes)",
                    "",
                    mib(size),
                    count as f64 / steps
                ));
            }
            if self.histogram_dropped > 0 {
                out.push_str(&format!(
                    "\n{:>11}  ({} more of other sizes: the table was full)",
                    "", self.histogram_dropped
                ));
            }
        }
        out
    }
}

fn run(name: &str, args: &Args) -> Result<String, baregpt::Error> {
    let invalid = |reason: String| baregpt::Error::InvalidConfig {
        layer: "bench preset",
        reason,
    };
    let (mut config, t, b) =
        preset(name).ok_or_else(|| invalid(format!("unknown preset {name}")))?;
    let (t, b) = (args.context.unwrap_or(t), args.batch.unwrap_or(b));
    config.context = t;
    let tokens = b
        .checked_mul(t)
        .ok_or_else(|| invalid(format!("batch {b} x context {t} overflows")))?;
    let vocab = config.vocab_size;
    let gflop = model_flops(&config, t, b) / 1e9;
    let rss_before = status_mib("VmRSS");
    let mut rng = StdRng::seed_from_u64(0);
    let mut model = Gpt::<f32>::new(config, &mut rng)?;
    let mut adam = Adam::new(AdamConfig::adam(3e-4))?;
    let ids = Array2::from_shape_simple_fn((b, t), || rng.random_range(0..vocab));
    let targets = Array2::from_shape_simple_fn((b, t), || rng.random_range(0..vocab));
    let mut times = Vec::with_capacity(args.steps);
    let mut allocs = Vec::with_capacity(args.steps);
    let mut loss = 0.0;
    histogram_clear();
    for i in 0..args.warmup + args.steps {
        let timed = i >= args.warmup;
        if timed {
            HISTOGRAM_ON.store(args.alloc_histogram, Ordering::Relaxed);
        }
        let (calls, bytes) = (
            ALLOCATIONS.load(Ordering::Relaxed),
            ALLOCATED_BYTES.load(Ordering::Relaxed),
        );
        LARGEST.store(0, Ordering::Relaxed);
        let start = Instant::now();
        model.zero_grad();
        loss = model.loss(&ids, &targets)?;
        model.backward_loss()?;
        adam.step(&mut model)?;
        let elapsed = start.elapsed().as_secs_f64() * 1e3;
        if timed {
            allocs.push(StepAllocs {
                calls: ALLOCATIONS.load(Ordering::Relaxed) - calls,
                bytes: ALLOCATED_BYTES.load(Ordering::Relaxed) - bytes,
                largest: LARGEST.load(Ordering::Relaxed),
            });
            times.push(elapsed);
        }
    }
    HISTOGRAM_ON.store(false, Ordering::Relaxed);
    let report = AllocReport::new(
        allocs,
        histogram(),
        HISTOGRAM_DROPPED.load(Ordering::Relaxed),
    );
    times.sort_by(f64::total_cmp);
    let (median, min, max) = (times[times.len() / 2], times[0], times[times.len() - 1]);
    let gflops = gflop / (median / 1e3);
    let peak = status_mib("VmHWM");
    let growth = peak - rss_before;
    let tokens_per_s = tokens as f64 / (median / 1e3);
    let threads = baregpt::num_threads();
    Ok(if args.json {
        format!(
            "{{\"impl\": \"baregpt\", \"preset\": \"{name}\", \"context\": {t}, \"batch\": {b}, \
             \"threads\": {threads}, \
             \"ms_per_step_median\": {median:.2}, \"ms_min\": {min:.2}, \"ms_max\": {max:.2}, \
             \"tokens_per_s\": {tokens_per_s:.1}, \"gflop_per_step\": {gflop:.3}, \
             \"gflops\": {gflops:.2}, \"peak_rss_mib\": {peak:.1}, \
             \"rss_growth_mib\": {growth:.1}, {}, \"loss_after\": {loss:.4}}}",
            report.json()
        )
    } else {
        format!(
            "{name:>11} f32 T={t} B={b} threads={threads}: {median:9.2} ms/step (min {min:.2}, \
             max {max:.2}), {tokens_per_s:9.1} tok/s, {gflops:6.2} GFLOP/s, peak RSS {peak:.0} \
             MiB (+{growth:.0} MiB)\n{}",
            report.text()
        )
    })
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("train_step: {e}");
            std::process::exit(2);
        }
    };
    if args.threads > 0
        && let Err(e) = baregpt::set_num_threads(args.threads)
    {
        eprintln!("train_step: {e}");
        std::process::exit(2);
    }
    let names: Vec<String> = match args.preset.as_str() {
        "all" => PRESETS
            .iter()
            .map(|p| p.0.to_string())
            .chain(FAMILY_PRESETS.iter().map(|p| p.0.to_string()))
            .collect(),
        "scaling" => SCALING_CONTEXTS
            .iter()
            .map(|t| format!("char-6l-t{t}"))
            .collect(),
        name => vec![name.to_string()],
    };
    for name in &names {
        match run(name, &args) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("train_step: {e}");
                std::process::exit(1);
            }
        }
    }
}
