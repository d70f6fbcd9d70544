//! Fine-tune a pretrained Hugging Face GPT-2 or Llama model on a text file, with baregpt's
//! hand-written backward passes and `Adam`, and save it back as a Hugging Face folder.
//!
//! ```text
//! cargo run --release --features hf --example finetune -- --model gpt2 --text input.txt
//! cargo run --release --features hf --example finetune -- --help        # every option
//! ```
//!
//! `--model DIR` is a folder with `config.json`, `model.safetensors` (or shards) and
//! `tokenizer.json`, as `save_pretrained` writes it. The text is tokenized with the folder's
//! tokenizer; the last `--val-fraction` of the tokens is held out. Every `--checkpoint-every`
//! steps and at the end the run writes `<out>/` (a Hugging Face folder that
//! `transformers.AutoModelForCausalLM.from_pretrained` loads) and
//! `<out>/training-state.safetensors` (the model and the optimizer state, for `--resume`).
//! See docs/huggingface.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use baregpt::checkpoint::{self, Extras, OptimizerState};
use baregpt::data::{Split, TokenDataset};
use baregpt::hf;
use baregpt::prelude::*;
use baregpt::{Adam, AdamConfig, Gpt, LrSchedule};
use clap::Parser;
use common::Batch;
use common::plot::EvalPoint;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Fine-tune a Hugging Face GPT-2 or Llama folder on a text file and save it as a Hugging
/// Face folder.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The pretrained model: a Hugging Face folder (config.json, model.safetensors or shards,
    /// tokenizer.json).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// The UTF-8 text to fine-tune on.
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// Where the fine-tuned folder and the training state go.
    #[arg(long, value_name = "DIR", default_value = "runs/finetune")]
    out: PathBuf,
    /// Optimizer steps in total (a resumed run continues up to this count).
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Sequences per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence (at most the model's context).
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Peak learning rate (linear warmup, then cosine decay to 10%).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Decoupled weight decay (AdamW); 0 is plain Adam.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip the global gradient norm to this value (0 turns clipping off).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Train without the model's dropout (GPT-2 folders ask for 0.1 at three places).
    #[arg(long)]
    no_dropout: bool,
    /// Fraction of the tokens held out for the validation loss.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Evaluate on the held-out tokens every N steps.
    #[arg(long, default_value_t = 50)]
    eval_every: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 8)]
    eval_batches: usize,
    /// Save the folder and the training state every N steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// Continue from `<out>/training-state.safetensors` (model, optimizer state and step).
    #[arg(long)]
    resume: bool,
    /// Stop (and save) after this step, as an interrupted run would; `--resume` continues.
    #[arg(long)]
    stop_at: Option<u64>,
    /// Seed of the batches; the same seed gives the same run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

const STATE_FILE: &str = "training-state.safetensors";

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
    if args.steps == 0 || args.batch == 0 || args.context == 0 {
        return Err("--steps, --batch and --context must be at least 1".into());
    }
    let pretrained = hf::load::<f32>(&args.model)
        .map_err(|e| format!("cannot load {}: {e}", args.model.display()))?;
    let tokenizer = pretrained.tokenizer.clone().ok_or_else(|| {
        format!(
            "{} has no tokenizer.json, which fine-tuning on text needs",
            args.model.display()
        )
    })?;
    let pretrained_config = pretrained.config_json.clone();
    let state_path = args.out.join(STATE_FILE);
    let mut adam = Adam::new(adam_config(args)?)?;
    let (mut model, mut history) = if args.resume {
        let (model, extras) = checkpoint::load::<f32>(&state_path)
            .map_err(|e| format!("cannot resume from {}: {e}", state_path.display()))?;
        if model.config() != pretrained.model.config() {
            return Err(format!(
                "{} was trained from another model than {}",
                state_path.display(),
                args.model.display()
            )
            .into());
        }
        let recorded = extras.metadata.get("schedule").map(String::as_str);
        if recorded != Some(schedule(args).as_str()) {
            return Err(format!(
                "{} was trained with {}, this run asks for {}: pass the same --steps, --lr, \
                 --warmup, --weight-decay, --clip, --batch and --context",
                state_path.display(),
                recorded.unwrap_or("unrecorded settings"),
                schedule(args)
            )
            .into());
        }
        let state = extras
            .optimizer
            .ok_or_else(|| format!("{} has no optimizer state", state_path.display()))?;
        adam.load_state(state.to_adam_state()?)?;
        let history = extras
            .metadata
            .get("history")
            .map(|h| common::history_from_string(h))
            .unwrap_or_default();
        (model, history)
    } else {
        (pretrained.model, Vec::new())
    };
    if args.no_dropout {
        model.set_dropout(baregpt::layer::DropoutMode::Off);
    }
    let context = args.context.min(model.config().context);
    let text = std::fs::read_to_string(&args.text)
        .map_err(|e| format!("cannot read {}: {e}", args.text.display()))?;
    let data = TokenDataset::from_ids(tokenizer.encode(&text, false)?, args.val_fraction)?;
    if data.max_context() < context + 1 {
        return Err(format!(
            "{} has {} tokens: too few for windows of {context} (pass a smaller --context)",
            args.text.display(),
            data.ids(Split::Train).len() + data.ids(Split::Validation).len()
        )
        .into());
    }
    let val_split = if data.ids(Split::Validation).is_empty() {
        Split::Train
    } else {
        Split::Validation
    };
    let mut eval_rng = StdRng::seed_from_u64(0x5eed_e7a1);
    let val_batches = (0..args.eval_batches.max(1))
        .map(|_| data.batch(val_split, args.batch, context, &mut eval_rng))
        .collect::<baregpt::Result<Vec<_>>>()?;
    let start = adam.step_count();
    println!(
        "model:  {} ({:?}), {} parameters, context {context}",
        args.model.display(),
        pretrained.family,
        model.num_params()
    );
    println!(
        "text:   {}: {} training and {} validation tokens",
        args.text.display(),
        data.ids(Split::Train).len(),
        data.ids(Split::Validation).len()
    );
    println!(
        "train:  steps {}..{} of {} sequences, lr {} (warmup {}, cosine), clip {}{}",
        start,
        args.steps,
        args.batch,
        args.lr,
        args.warmup,
        args.clip,
        if args.no_dropout { ", no dropout" } else { "" }
    );
    if start == 0 {
        let loss = val_loss(&model, &val_batches)?;
        println!("step      0 | val loss {loss:.4}");
    }
    let save = |model: &Gpt<f32>, adam: &Adam<f32>, history: &[EvalPoint]| -> AnyResult<()> {
        let options = hf::SaveOptions {
            base_config: Some(pretrained_config.clone()),
            ..hf::SaveOptions::default()
        };
        hf::save_with(&args.out, model, Some(&tokenizer), &options)?;
        let extras = Extras {
            optimizer: Some(OptimizerState::from_adam(adam)),
            metadata: [
                ("history".to_owned(), common::history_to_string(history)),
                ("seed".to_owned(), args.seed.to_string()),
                ("schedule".to_owned(), schedule(args)),
            ]
            .into_iter()
            .collect(),
            ..Extras::default()
        };
        checkpoint::save(args.out.join(STATE_FILE), model, &extras)?;
        Ok(())
    };
    let bar = common::progress_bar(args.steps, start);
    let timer = Instant::now();
    let mut since_eval = Vec::new();
    let (mut step_time, mut timed) = (0.0f64, 0u64);
    let end = args
        .stop_at
        .map_or(args.steps, |s| s.clamp(start, args.steps));
    for step in start..end {
        let mut rng = StdRng::seed_from_u64(args.seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (ids, targets) = data.batch(Split::Train, args.batch, context, &mut rng)?;
        let t0 = Instant::now();
        let loss = common::train_step(
            &mut model,
            &mut adam,
            &Batch {
                ids,
                targets,
                mask: None,
            },
        )?;
        step_time += t0.elapsed().as_secs_f64();
        timed += 1;
        if !loss.is_finite() {
            return Err(format!(
                "the loss became {loss} at step {}: try a smaller --lr",
                step + 1
            )
            .into());
        }
        since_eval.push(loss);
        let done = step + 1;
        bar.set_position(done);
        bar.set_message(format!(
            "loss {loss:.4} | {:.0} ms/step",
            1e3 * step_time / timed as f64
        ));
        if done % args.eval_every.max(1) == 0 || done == args.steps {
            let val = val_loss(&model, &val_batches)?;
            let train = since_eval.iter().sum::<f64>() / since_eval.len().max(1) as f64;
            since_eval.clear();
            history.push(EvalPoint {
                step: done,
                train_loss: train,
                val_loss: val,
            });
            bar.suspend(|| println!("step {done:>6} | train loss {train:.4} | val loss {val:.4}"));
        }
        if args.checkpoint_every > 0 && done % args.checkpoint_every == 0 && done < end {
            save(&model, &adam, &history)?;
        }
    }
    bar.finish_and_clear();
    if start >= args.steps {
        println!("the training state is already at step {start}: nothing to train");
        return Ok(());
    }
    save(&model, &adam, &history)?;
    println!(
        "trained {} steps in {:.1} s ({:.1} ms per step){}",
        end - start,
        timer.elapsed().as_secs_f64(),
        1e3 * step_time / timed.max(1) as f64,
        if end < args.steps {
            format!(
                "; stopped at step {end} of {} (continue with --resume)",
                args.steps
            )
        } else {
            String::new()
        }
    );
    println!("saved:  {} (Hugging Face folder)", args.out.display());
    println!("        {} (for --resume)", state_path.display());
    println!(
        "sample: cargo run --release --features hf --example sample -- --model {} --prompt 'Hello'",
        shell_path(&args.out)
    );
    Ok(())
}

/// The settings a resumed run must share with the run that wrote the training state.
fn schedule(args: &Args) -> String {
    format!(
        "steps {}, lr {}, warmup {}, weight decay {}, clip {}, batch {}, context {}, seed {}",
        args.steps,
        args.lr,
        args.warmup,
        args.weight_decay,
        args.clip,
        args.batch,
        args.context,
        args.seed
    )
}

fn adam_config(args: &Args) -> AnyResult<AdamConfig> {
    let schedule = if args.steps > args.warmup {
        LrSchedule::warmup_cosine(args.warmup, args.steps, 0.1)?
    } else {
        LrSchedule::linear_warmup(args.warmup.max(1))?
    };
    let base = if args.weight_decay > 0.0 {
        AdamConfig::adamw(args.lr, args.weight_decay)
    } else {
        AdamConfig::adam(args.lr)
    };
    Ok(AdamConfig {
        max_grad_norm: (args.clip > 0.0).then_some(args.clip),
        schedule,
        ..base
    })
}

/// The mean loss over the fixed validation batches (no dropout).
fn val_loss(
    model: &Gpt<f32>,
    batches: &[(ndarray::Array2<usize>, ndarray::Array2<usize>)],
) -> baregpt::Result<f64> {
    let mut total = 0.0;
    for (ids, targets) in batches {
        total += f64::from(model.eval_loss(ids, targets)?);
    }
    Ok(total / batches.len().max(1) as f64)
}

fn shell_path(path: &Path) -> String {
    let s = path.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
