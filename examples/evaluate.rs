//! The loss of a character-level checkpoint on a text: its validation split (the last
//! `--val-fraction`, as `train` holds it out) or the whole file, in non-overlapping windows
//! of the model's context, with dropout off.
//!
//! ```text
//! cargo run --release --example evaluate -- --text input.txt              # the bundled model
//! cargo run --release --example evaluate -- --checkpoint runs/input/model.safetensors \
//!     --text input.txt --val-fraction 0.1
//! cargo run --release --example evaluate -- --text slice.txt --whole
//! ```

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use baregpt::data::{Split, TextDataset};
use clap::Parser;

#[path = "common/prompt.rs"]
mod prompt;

/// The loss of a character-level checkpoint on a text file.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The checkpoint (default: the bundled Shakespeare model).
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// The UTF-8 text to score.
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// Score the last fraction of the text, as `train --val-fraction` holds it out.
    #[arg(long, default_value_t = 0.1, conflicts_with = "whole")]
    val_fraction: f64,
    /// Score the whole text.
    #[arg(long)]
    whole: bool,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let path = prompt::checkpoint_or_bundled(args.checkpoint.as_deref());
    let (model, _, vocab) = prompt::load(&path)?;
    let text = std::fs::read_to_string(&args.text)
        .map_err(|e| format!("cannot read {}: {e}", args.text.display()))?;
    let context = model.config().context;
    let (ids, what) = if args.whole {
        (vocab.encode(&text)?, "the whole text".to_owned())
    } else {
        let data = TextDataset::with_vocab(&text, vocab, args.val_fraction)?;
        let ids = data.ids(Split::Validation).to_vec();
        (
            ids,
            format!("its last {} (the validation split)", args.val_fraction),
        )
    };
    let (loss, windows) = common::split_loss(&model, &ids, context)?;
    println!(
        "{}: {} characters, {what}: loss {loss:.4} over {windows} windows of {context} ({} \
         positions)",
        args.text.display(),
        ids.len(),
        windows * context
    );
    Ok(())
}
