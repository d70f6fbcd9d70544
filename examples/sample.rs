//! Continue a prompt from a checkpoint written by `examples/train.rs`, streaming characters
//! as they are drawn.
//!
//! ```text
//! cargo run --release --example sample                                  # the default run's checkpoint
//! cargo run --release --example sample -- --prompt "1234+5678="
//! cargo run --release --example sample -- --checkpoint runs/input/model.safetensors \
//!     --prompt "ROMEO:" --tokens 500 --temperature 0.8 --top-k 20 --seed 1
//! ```
//!
//! Generation uses a key/value cache: the prompt is run once, then each new character costs
//! one position.

#[path = "common/prompt.rs"]
mod prompt;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use baregpt::data::AdditionTask;
use baregpt::generate::generate;
use baregpt::prelude::*;
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Continue a prompt from a baregpt checkpoint, streaming characters as they come.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The checkpoint to load.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "runs/addition/model.safetensors"
    )]
    checkpoint: PathBuf,
    /// The text to continue (default: the prompt stored in the checkpoint by `train`).
    #[arg(long)]
    prompt: Option<String>,
    /// How many characters to generate (default: one answer for the addition task, else 400).
    #[arg(long)]
    tokens: Option<usize>,
    #[command(flatten)]
    sampling: prompt::Sampling,
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> AnyResult<()> {
    let (model, extras, vocab) = prompt::load(&args.checkpoint)?;
    let addition = extras
        .metadata
        .get("task")
        .and_then(|t| t.strip_prefix("addition-"))
        .and_then(|d| d.parse().ok())
        .and_then(|d| AdditionTask::new(d).ok());
    let (prompt, ids) = prompt::encode(args.prompt.as_deref(), &extras, &vocab)?;
    let options = args.sampling.options()?;
    let tokens = args
        .tokens
        .unwrap_or(addition.as_ref().map_or(400, AdditionTask::answer_len));

    eprintln!(
        "{}: {} parameters, context {}, vocabulary of {}; temperature {}, top-k {}, seed {}",
        args.checkpoint.display(),
        model.num_params(),
        model.config().context,
        vocab.len(),
        args.sampling.temperature,
        options.top_k.map_or("off".into(), |k| k.to_string()),
        args.sampling.seed
    );
    let mut rng = StdRng::seed_from_u64(args.sampling.seed);
    let mut out = std::io::stdout().lock();
    write!(out, "{prompt}")?;
    out.flush()?;
    let timer = Instant::now();
    let mut write_error = None;
    let new = generate(&model, &ids, tokens, &options, &mut rng, |id| {
        let ch = vocab.char(id).unwrap_or('\u{fffd}');
        if let Err(e) = write!(out, "{ch}").and_then(|()| out.flush()) {
            write_error.get_or_insert(e);
        }
    })?;
    writeln!(out)?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let elapsed = timer.elapsed().as_secs_f64();
    eprintln!(
        "{} characters in {:.2} s ({:.0} characters/s)",
        new.len(),
        elapsed,
        new.len() as f64 / elapsed.max(1e-9)
    );
    if let Some(task) = addition {
        explain_sum(&task, &prompt, &vocab.decode(&new)?);
    }
    Ok(())
}

/// For an addition checkpoint, reads the (reversed) answer back as a number.
fn explain_sum(task: &AdditionTask, prompt: &str, generated: &str) {
    let answer: String = generated.chars().take(task.answer_len()).collect();
    let operands: Option<Vec<u64>> = prompt
        .strip_suffix('=')
        .map(|p| p.split('+').filter_map(|n| n.parse().ok()).collect());
    match (task.parse_answer(&answer), operands.as_deref()) {
        (Some(sum), Some(&[a, b])) => {
            let mark = if a + b == sum { "correct" } else { "wrong" };
            eprintln!(
                "the answer is written least significant digit first: {answer} means {sum}; \
                 {a} + {b} = {} ({mark})",
                a + b
            );
        }
        (Some(sum), _) => eprintln!("read back (the answer is reversed): {sum}"),
        (None, _) => {}
    }
}
