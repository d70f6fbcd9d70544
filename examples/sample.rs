//! Continue a prompt from a checkpoint written by `examples/train.rs` (or, with the `hf`
//! feature, a Hugging Face folder), streaming text as it is drawn.
//!
//! ```text
//! cargo run --release --example sample -- --prompt "ROMEO:"             # the bundled Shakespeare model
//! cargo run --release --example sample -- --checkpoint runs/addition/model.safetensors --prompt "1234+5678="
//! cargo run --release --example sample -- --checkpoint runs/input/model.safetensors \
//!     --prompt "ROMEO:" --tokens 500 --temperature 0.8 --top-k 20 --seed 1
//! cargo run --release --features hf --example sample -- --model runs/finetune --prompt "Hello"
//! ```
//!
//! With neither `--checkpoint` nor `--model` it uses the character-level Shakespeare model
//! bundled in `models/shakespeare/` and says so. Generation uses a key/value cache: the
//! prompt is run once, then each new token costs one position.

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

/// Continue a prompt from a baregpt checkpoint (default: the bundled Shakespeare model) or a
/// Hugging Face folder, streaming text as it comes.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The checkpoint to load (default: the bundled Shakespeare model,
    /// models/shakespeare/model.safetensors).
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// A Hugging Face GPT-2 or Llama folder (config.json, model.safetensors, tokenizer.json)
    /// instead of a checkpoint; needs the `hf` feature.
    #[arg(long, value_name = "DIR", conflicts_with = "checkpoint")]
    model: Option<PathBuf>,
    /// The text to continue (default: the prompt stored in the checkpoint by `train`).
    #[arg(long)]
    prompt: Option<String>,
    /// How many tokens (characters, for a character model) to generate (default: one answer
    /// for the addition task, else 400).
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
    if let Some(dir) = &args.model {
        return run_hf(args, dir);
    }
    let path = prompt::checkpoint_or_bundled(args.checkpoint.as_deref());
    let (model, extras, vocab) = prompt::load(&path)?;
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

    let (mut rng, mut out) = start(
        &path.display().to_string(),
        &model,
        vocab.len(),
        args,
        &options,
        &prompt,
    )?;
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

/// Generation from a Hugging Face folder, decoded with its tokenizer.
#[cfg(feature = "hf")]
fn run_hf(args: &Args, dir: &std::path::Path) -> AnyResult<()> {
    let pretrained =
        baregpt::hf::load::<f32>(dir).map_err(|e| format!("cannot load {}: {e}", dir.display()))?;
    let tokenizer = pretrained
        .tokenizer
        .ok_or_else(|| format!("{} has no tokenizer.json", dir.display()))?;
    let model = pretrained.model;
    let prompt = args
        .prompt
        .clone()
        .ok_or("a Hugging Face folder stores no prompt: give one with --prompt")?;
    let ids = tokenizer.encode(&prompt, false)?;
    if ids.is_empty() {
        return Err("the prompt encodes to no tokens: give at least one character".into());
    }
    let options = args.sampling.options()?;
    let tokens = args.tokens.unwrap_or(200);
    let source = format!("{} ({:?})", dir.display(), pretrained.family);
    let (mut rng, mut out) = start(
        &source,
        &model,
        tokenizer.vocab_size(),
        args,
        &options,
        &prompt,
    )?;
    let timer = Instant::now();
    // A token may end inside a character (byte-level BPE): text is printed once the decoded
    // suffix no longer ends in a replacement character.
    let (mut drawn, mut printed, mut failure) = (Vec::new(), 0usize, None);
    let new = generate(&model, &ids, tokens, &options, &mut rng, |id| {
        drawn.push(id);
        match tokenizer.decode(&drawn, false) {
            Ok(text) if !text.ends_with('\u{fffd}') && text.len() > printed => {
                if let Err(e) = write!(out, "{}", &text[printed..]).and_then(|()| out.flush()) {
                    failure.get_or_insert(e.to_string());
                }
                printed = text.len();
            }
            Ok(_) => {}
            Err(e) => {
                failure.get_or_insert(e.to_string());
            }
        }
    })?;
    writeln!(out)?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    let elapsed = timer.elapsed().as_secs_f64();
    eprintln!(
        "{} tokens in {:.2} s ({:.0} tokens/s)",
        new.len(),
        elapsed,
        new.len() as f64 / elapsed.max(1e-9)
    );
    Ok(())
}

#[cfg(not(feature = "hf"))]
fn run_hf(_: &Args, _: &std::path::Path) -> AnyResult<()> {
    Err("--model needs the `hf` feature: cargo run --release --features hf --example sample -- --model DIR ...".into())
}

/// Says what is sampled from and how (on stderr), prints the prompt, and returns the
/// sampler's generator and the locked standard output.
fn start(
    source: &str,
    model: &baregpt::Gpt<f32>,
    vocab: usize,
    args: &Args,
    options: &baregpt::generate::SampleOptions,
    prompt: &str,
) -> AnyResult<(StdRng, std::io::StdoutLock<'static>)> {
    eprintln!(
        "{source}: {} parameters, context {}, vocabulary of {vocab}; temperature {}, top-k {}, \
         seed {}",
        model.num_params(),
        model.config().context,
        args.sampling.temperature,
        options.top_k.map_or("off".into(), |k| k.to_string()),
        args.sampling.seed
    );
    let mut out = std::io::stdout().lock();
    write!(out, "{prompt}")?;
    out.flush()?;
    Ok((StdRng::seed_from_u64(args.sampling.seed), out))
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
