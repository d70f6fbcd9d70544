//! One full training step (forward, backward, Adam) of a `Gpt<f32>`, timed per preset.
//!
//! ```sh
//! cargo bench --bench train_step -- --preset baregpt            # one preset, human-readable
//! cargo bench --bench train_step -- --preset all --json         # every preset, JSON lines
//! cargo bench --bench train_step -- --preset tiny --threads 1   # fix the thread count
//! cargo bench --bench train_step -- --preset llama-4l            # a family preset (also gpt2-4l)
//! ```
//!
//! Printed per preset: median, min and max milliseconds per step over `--steps` steps after
//! `--warmup` untimed ones, tokens per second, achieved GFLOP/s, and memory. The FLOP count
//! is the usual model estimate, `6 · (matmul weights) · tokens` plus causal attention counted
//! in full, `layers · B · 3 · (4 · T² · C)` — the same formula as the PyTorch peer script
//! `benches/torch_step.py`, so the two are comparable. Memory: the process's peak resident
//! set (`VmHWM`) and its growth over the resident set before the model was built.
//! Allocations: heap allocations (calls and bytes) per timed step, counted by a global
//! allocator wrapper around the system one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use baregpt::gpt::parts::{AttentionKind, MlpKind};
use baregpt::prelude::*;
use baregpt::{Adam, AdamConfig, Gpt, GptConfig};
use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// `(name, vocab, d_model, heads, layers, T, B)`, as in the PyTorch peer script.
/// The system allocator, counting calls and bytes, so the benchmark can report what a
/// warmed-up step still allocates.
struct CountingAlloc;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size, Ordering::Relaxed);
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
const FAMILY_PRESETS: [FamilyPreset; 2] = [
    ("gpt2-4l", 4096, 256, 8, 8, 4, 128, 4),
    ("llama-4l", 4096, 256, 8, 4, 4, 128, 4),
];

struct Args {
    preset: String,
    steps: usize,
    warmup: usize,
    threads: usize,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        preset: "all".into(),
        steps: 8,
        warmup: 3,
        threads: 0,
        json: false,
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
            "--json" => args.json = true,
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.steps == 0 {
        return Err("--steps must be positive".into());
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

/// The configuration, sequence length and batch of a preset.
fn preset(name: &str) -> Option<(GptConfig, usize, usize)> {
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
    let config = match name.starts_with("gpt2") {
        true => GptConfig::gpt2(vocab, d, heads, layers, t),
        false => GptConfig::llama(vocab, d, heads, kv_heads, layers, t),
    };
    Some((config, t, b))
}

fn run(name: &str, args: &Args) -> Result<String, baregpt::Error> {
    let (config, t, b) = preset(name).ok_or_else(|| baregpt::Error::InvalidConfig {
        layer: "train_step",
        reason: format!("unknown preset {name}"),
    })?;
    let vocab = config.vocab_size;
    let gflop = model_flops(&config, t, b) / 1e9;
    let rss_before = status_mib("VmRSS");
    let mut rng = StdRng::seed_from_u64(0);
    let mut model = Gpt::<f32>::new(config, &mut rng)?;
    let mut adam = Adam::new(AdamConfig::adam(3e-4))?;
    let ids = Array2::from_shape_simple_fn((b, t), || rng.random_range(0..vocab));
    let targets = Array2::from_shape_simple_fn((b, t), || rng.random_range(0..vocab));
    let mut times = Vec::with_capacity(args.steps);
    let mut loss = 0.0;
    let (mut allocations, mut allocated) = (0, 0);
    for i in 0..args.warmup + args.steps {
        if i == args.warmup {
            allocations = ALLOCATIONS.load(Ordering::Relaxed);
            allocated = ALLOCATED_BYTES.load(Ordering::Relaxed);
        }
        let start = Instant::now();
        model.zero_grad();
        loss = model.loss(&ids, &targets)?;
        model.backward_loss()?;
        adam.step(&mut model)?;
        if i >= args.warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let allocs_per_step = (ALLOCATIONS.load(Ordering::Relaxed) - allocations) / args.steps;
    let alloc_mib_per_step = (ALLOCATED_BYTES.load(Ordering::Relaxed) - allocated) as f64
        / args.steps as f64
        / (1024.0 * 1024.0);
    times.sort_by(f64::total_cmp);
    let (median, min, max) = (times[times.len() / 2], times[0], times[times.len() - 1]);
    let gflops = gflop / (median / 1e3);
    let peak = status_mib("VmHWM");
    let growth = peak - rss_before;
    let tokens_per_s = (b * t) as f64 / (median / 1e3);
    let threads = baregpt::num_threads();
    Ok(if args.json {
        format!(
            "{{\"impl\": \"baregpt\", \"preset\": \"{name}\", \"threads\": {threads}, \
             \"ms_per_step_median\": {median:.2}, \"ms_min\": {min:.2}, \"ms_max\": {max:.2}, \
             \"tokens_per_s\": {tokens_per_s:.1}, \"gflop_per_step\": {gflop:.3}, \
             \"gflops\": {gflops:.2}, \"peak_rss_mib\": {peak:.1}, \
             \"rss_growth_mib\": {growth:.1}, \"allocs_per_step\": {allocs_per_step}, \
             \"alloc_mib_per_step\": {alloc_mib_per_step:.1}, \"loss_after\": {loss:.4}}}"
        )
    } else {
        format!(
            "{name:>11} f32 threads={threads}: {median:9.2} ms/step (min {min:.2}, max {max:.2}), \
             {tokens_per_s:9.1} tok/s, {gflops:6.2} GFLOP/s, peak RSS {peak:.0} MiB \
             (+{growth:.0} MiB), {allocs_per_step} allocations ({alloc_mib_per_step:.1} MiB) \
             per step"
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
    let names: Vec<&str> = if args.preset == "all" {
        PRESETS
            .iter()
            .map(|p| p.0)
            .chain(FAMILY_PRESETS.iter().map(|p| p.0))
            .collect()
    } else {
        vec![args.preset.as_str()]
    };
    for name in names {
        match run(name, &args) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("train_step: {e}");
                std::process::exit(1);
            }
        }
    }
}
