//! Look inside a trained model, as the original BareGPT's notebook does: the attention
//! heat-maps of one layer's heads over a prompt, and the top candidates for each character it
//! generates.
//!
//! ```text
//! cargo run --release --example inspect                      # the bundled Shakespeare model
//! cargo run --release --example inspect -- --checkpoint runs/input/model.safetensors \
//!     --prompt "ROMEO: how, t" --layer 1 --tokens 20 --out runs/inspect
//! ```
//!
//! With no `--checkpoint` it inspects the character-level Shakespeare model bundled in
//! `models/shakespeare/`, and says so.
//!
//! It writes `attention.png` and `attention.svg` into `--out`: one panel per head, numbered,
//! with the prompt's characters on both axes (rows: the position attending; columns: the
//! positions attended to; the grey upper triangle is the future, masked), and a colour scale.
//! Then it prints, for each generated character, the text so far and the `--top` most likely
//! next characters with their probabilities.

mod heatmap;
#[path = "../common/prompt.rs"]
mod prompt;

use std::path::PathBuf;
use std::process::ExitCode;

use baregpt::Gpt;
use baregpt::data::CharVocab;
use baregpt::generate::generate_with;
use clap::Parser;
use heatmap::Heatmaps;
use ndarray::{Array2, s};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Draw one layer's attention heads over a prompt and print each generated character's top
/// candidates.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The checkpoint to inspect, written by the `train` example (default: the bundled
    /// Shakespeare model, models/shakespeare/model.safetensors).
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// The prompt whose attention is drawn and which generation continues (default: the one
    /// stored in the checkpoint).
    #[arg(long)]
    prompt: Option<String>,
    /// The layer to draw, from 0 (default: the last).
    #[arg(long)]
    layer: Option<usize>,
    /// How many characters to generate.
    #[arg(long, default_value_t = 20)]
    tokens: usize,
    /// How many candidates to print per character.
    #[arg(long, default_value_t = 5)]
    top: usize,
    #[command(flatten)]
    sampling: prompt::Sampling,
    /// The folder the PNG and SVG are written to.
    #[arg(long, value_name = "DIR", default_value = "runs/inspect")]
    out: PathBuf,
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> AnyResult<()> {
    let path = prompt::checkpoint_or_bundled(args.checkpoint.as_deref());
    let (model, extras, vocab) = prompt::load(&path)?;
    let (prompt, ids) = prompt::encode(args.prompt.as_deref(), &extras, &vocab)?;
    let options = args.sampling.options()?;
    let context = model.config().context;
    let shown = &ids[ids.len().saturating_sub(context)..];
    if shown.len() < ids.len() {
        eprintln!(
            "the prompt has {} characters but the model sees at most {context}: drawing its last \
             {context}",
            ids.len()
        );
    }
    draw(args, &model, &vocab, shown)?;
    let mut text = prompt.clone();
    let mut rng = StdRng::seed_from_u64(args.sampling.seed);
    generate_with(
        &model,
        &ids,
        args.tokens,
        &options,
        &mut rng,
        |id, candidates| {
            let top: Vec<String> = candidates
                .top(args.top)
                .iter()
                .map(|&(t, p)| format!("{:?} {:.1}%", vocab.char(t).unwrap_or('?'), 100.0 * p))
                .collect();
            let tail: String = text
                .chars()
                .rev()
                .take(24)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            println!("after {tail:?}: {}", top.join(", "));
            text.push(vocab.char(id).unwrap_or('\u{fffd}'));
        },
    )?;
    println!("{text}");
    Ok(())
}

/// Writes the heat-maps of the chosen layer over `ids`.
fn draw(args: &Args, model: &Gpt<f32>, vocab: &CharVocab, ids: &[usize]) -> AnyResult<()> {
    let n_layers = model.config().n_layers;
    if n_layers == 0 {
        return Err("the model has no attention layers to draw".into());
    }
    let layer = args.layer.unwrap_or(n_layers - 1);
    if layer >= n_layers {
        let layers = if n_layers == 1 {
            "1 layer, numbered 0".to_owned()
        } else {
            format!("{n_layers} layers, numbered 0 to {}", n_layers - 1)
        };
        return Err(format!("--layer {layer}: the model has {layers}").into());
    }
    let row = Array2::from_shape_fn((1, ids.len()), |(_, j)| ids[j]);
    let (_, maps) = model.attention_maps(&row)?;
    let probs = &maps[layer]; // (1, H, T, T)
    let heads = (0..probs.dim().1)
        .map(|h| probs.slice(s![0, h, .., ..]).to_owned())
        .collect();
    let labels: Vec<char> = ids.iter().map(|&i| vocab.char(i).unwrap_or('?')).collect();
    let title = format!(
        "layer {layer} of {n_layers}, {} heads, over {:?}",
        probs.dim().1,
        labels.iter().collect::<String>()
    );
    let maps = Heatmaps {
        labels,
        heads,
        title,
    };
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let (png, svg) = (
        args.out.join("attention.png"),
        args.out.join("attention.svg"),
    );
    maps.write_png(&png)?;
    maps.write_svg(&svg)?;
    eprintln!("wrote {} and {}", png.display(), svg.display());
    Ok(())
}
