//! Train a small GPT with baregpt's hand-written backward passes and `Adam`.
//!
//! ```text
//! cargo run --release --example train                      # the built-in addition task
//! cargo run --release --example train -- --text input.txt  # a character model of a file
//! cargo run --release --example train -- --help            # every option
//! ```
//!
//! With no arguments it learns to add two 4-digit numbers (data generated in code, nothing to
//! download), reports exact-match accuracy on held-out sums, saves a checkpoint and a
//! loss-curve plot, and shows a few sums it solves. `examples/sample.rs` continues a prompt
//! from the checkpoint.

mod common;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use baregpt::checkpoint::{self, Extras, OptimizerState, Storage};
use baregpt::generate::{SampleOptions, generate};
use baregpt::prelude::*;
use baregpt::{Adam, AdamConfig, DropoutConfig, Gpt, GptConfig, LrSchedule};
use clap::{Parser, ValueEnum};
use common::plot::{EvalPoint, loss_plot};
use common::{Task, history_from_string, history_to_string, solve};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Train a small GPT with hand-written backward passes and Adam.
///
/// With no arguments: learn to add two 4-digit numbers (generated in code), then report
/// held-out accuracy, save a checkpoint and a loss plot. With --text FILE: train a
/// character-level model on FILE.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// Train a character-level model on this UTF-8 text file instead of the addition task.
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// Defaults for --text: `small` (a few minutes on a laptop CPU) or `baregpt` (the original
    /// BareGPT setup: d_model 256, 2 layers, context 128, batch 16, lr 2.5e-4, 700 steps).
    #[arg(long, value_enum, requires = "text")]
    preset: Option<Preset>,
    /// The model family, at the sizes the task, --preset and the size flags give: `baregpt`
    /// (the original's parts), `gpt2` (learned positions, LayerNorm, biased attention, GELU
    /// MLP, tied head) or `llama` (RMSNorm, rotary positions, grouped-query attention, SwiGLU,
    /// untied head).
    #[arg(long, value_enum, default_value_t = Arch::Baregpt)]
    arch: Arch,
    /// Key/value heads of `--arch llama` (must divide --heads; default half of them).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Digits of each operand of the addition task (1–9).
    #[arg(long, default_value_t = 4, conflicts_with = "text")]
    digits: usize,
    /// Optimizer steps in total (a resumed run continues up to this count).
    #[arg(long)]
    steps: Option<u64>,
    /// Sequences per batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Context length T (--text only; the addition task fixes its own).
    #[arg(long, requires = "text")]
    context: Option<usize>,
    /// Residual width C.
    #[arg(long)]
    d_model: Option<usize>,
    /// Number of transformer blocks.
    #[arg(long)]
    layers: Option<usize>,
    /// Attention heads (must divide --d-model).
    #[arg(long)]
    heads: Option<usize>,
    /// MLP hidden width (default 4 × d_model).
    #[arg(long)]
    mlp: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Learning-rate schedule.
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// Linear warmup steps.
    #[arg(long)]
    warmup: Option<u64>,
    /// Clip the global gradient norm to this value (0 turns clipping off).
    #[arg(long)]
    clip: Option<f64>,
    /// Drop probability at the model's three dropout places (after the embeddings, on the
    /// attention probabilities, on each residual branch) while training; evaluation and
    /// sampling never drop (default 0: no dropout, as the original).
    #[arg(long)]
    dropout: Option<f64>,
    /// Decoupled weight decay (AdamW, as `torch.optim.AdamW`); 0 is plain Adam.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Seed of the initialisation and the batches; the same seed gives the same run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Directory for the checkpoint and the plot (default: runs/addition or runs/<file name>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Checkpoint path (default: <out>/model.safetensors).
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Save a checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// Evaluate on held-out data every N steps.
    #[arg(long)]
    eval_every: Option<u64>,
    /// Also print the loss of the single training batch at step 1 and every N steps (as the
    /// original BareGPT logs it; 0: off).
    #[arg(long, default_value_t = 0)]
    log_every: u64,
    /// After training, also write the model alone (vocabulary and metadata, no optimizer
    /// state) with its parameters stored in f16 to FILE: a quarter of the checkpoint's size,
    /// for shipping a trained model.
    #[arg(long, value_name = "FILE")]
    export: Option<PathBuf>,
    /// Continue from the checkpoint (model, optimizer state and step).
    #[arg(long)]
    resume: bool,
    /// Fraction of the text held out for validation (--text only; 0 trains on all of it, as the
    /// original does, and evaluates on fixed training windows).
    #[arg(long, default_value_t = 0.1, requires = "text")]
    val_fraction: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Preset {
    Small,
    Baregpt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Arch {
    Baregpt,
    Gpt2,
    Llama,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Schedule {
    /// Linear warmup, then cosine decay to 10% of the peak.
    Cosine,
    /// Linear warmup (if any), then constant.
    Constant,
}

/// Everything a run needs, after presets and flags are combined.
#[derive(Clone, Debug)]
struct Setup {
    config: GptConfig,
    steps: u64,
    batch: usize,
    lr: f64,
    schedule: Schedule,
    warmup: u64,
    clip: f64,
    weight_decay: f64,
    eval_every: u64,
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

/// The defaults of a task and preset, before flags.
fn defaults(args: &Args, vocab_size: usize, context: usize) -> Setup {
    let model = |d_model, n_heads, n_layers, final_norm| GptConfig {
        mlp_hidden: 4 * d_model,
        final_norm,
        ..GptConfig::with_sizes(vocab_size, d_model, n_heads, n_layers, context)
    };
    match (&args.text, args.preset) {
        (None, _) => Setup {
            config: model(64, 4, 2, true),
            steps: 2000,
            batch: 64,
            lr: 3e-3,
            schedule: Schedule::Cosine,
            warmup: 100,
            clip: 1.0,
            weight_decay: 0.0,
            eval_every: 100,
        },
        (Some(_), Some(Preset::Baregpt)) => Setup {
            config: GptConfig {
                context,
                ..GptConfig::baregpt(vocab_size)
            },
            steps: 700,
            batch: 16,
            lr: 2.5e-4,
            schedule: Schedule::Constant,
            warmup: 0,
            clip: 0.0,
            weight_decay: 0.0,
            eval_every: 100,
        },
        (Some(_), _) => Setup {
            config: model(128, 4, 3, true),
            steps: 2000,
            batch: 32,
            lr: 1e-3,
            schedule: Schedule::Cosine,
            warmup: 100,
            clip: 1.0,
            weight_decay: 0.0,
            eval_every: 100,
        },
    }
}

fn setup(args: &Args, vocab_size: usize, context: usize) -> Setup {
    let mut s = defaults(args, vocab_size, context);
    let c = &mut s.config;
    c.d_model = args.d_model.unwrap_or(c.d_model);
    c.n_heads = args.heads.unwrap_or(c.n_heads);
    c.n_layers = args.layers.unwrap_or(c.n_layers);
    c.mlp_hidden = args.mlp.unwrap_or(if args.d_model.is_some() {
        4 * c.d_model
    } else {
        c.mlp_hidden
    });
    s.config = with_arch(args, &s.config);
    if let Some(p) = args.dropout {
        s.config.dropout = DropoutConfig::uniform(p);
    }
    s.steps = args.steps.unwrap_or(s.steps);
    s.batch = args.batch.unwrap_or(s.batch);
    s.lr = args.lr.unwrap_or(s.lr);
    s.schedule = args.schedule.unwrap_or(s.schedule);
    s.warmup = args.warmup.unwrap_or(s.warmup);
    s.clip = args.clip.unwrap_or(s.clip);
    s.weight_decay = args.weight_decay;
    s.eval_every = args.eval_every.unwrap_or(s.eval_every).max(1);
    s
}

/// `config`'s sizes in the parts of `--arch` (`baregpt` keeps `config` as it is).
fn with_arch(args: &Args, config: &GptConfig) -> GptConfig {
    let (v, c, h, l, t) = (
        config.vocab_size,
        config.d_model,
        config.n_heads,
        config.n_layers,
        config.context,
    );
    match args.arch {
        Arch::Baregpt => config.clone(),
        Arch::Gpt2 => GptConfig {
            mlp_hidden: config.mlp_hidden,
            ..GptConfig::gpt2(v, c, h, l, t)
        },
        Arch::Llama => {
            let kv_heads = args.kv_heads.unwrap_or(if h % 2 == 0 { h / 2 } else { h });
            let llama = GptConfig::llama(v, c, h, kv_heads, l, t);
            GptConfig {
                mlp_hidden: args.mlp.unwrap_or(llama.mlp_hidden),
                ..llama
            }
        }
    }
}

fn adam_config(s: &Setup) -> AnyResult<AdamConfig> {
    let schedule = match s.schedule {
        Schedule::Cosine if s.steps > s.warmup => {
            LrSchedule::warmup_cosine(s.warmup, s.steps, 0.1)?
        }
        Schedule::Cosine | Schedule::Constant if s.warmup > 0 => {
            LrSchedule::linear_warmup(s.warmup)?
        }
        _ => LrSchedule::constant(),
    };
    Ok(AdamConfig {
        max_grad_norm: (s.clip > 0.0).then_some(s.clip),
        schedule,
        ..if s.weight_decay > 0.0 {
            AdamConfig::adamw(s.lr, s.weight_decay)
        } else {
            AdamConfig::adam(s.lr)
        }
    })
}

/// The task and its name (for messages and the checkpoint's metadata). On `--resume`,
/// `resumed` is the checkpoint, whose vocabulary and context a text task keeps.
fn task(args: &Args, resumed: Option<&(Gpt<f32>, Extras<f32>)>) -> AnyResult<(Task, String)> {
    match &args.text {
        None => Ok((
            Task::addition(args.digits, 2000)?,
            format!("addition-{}", args.digits),
        )),
        Some(path) => {
            let text = read_text(path)?;
            let context = match (args.context, resumed) {
                (Some(context), _) => context,
                (None, Some((model, _))) => model.config().context,
                (None, None) if args.preset == Some(Preset::Baregpt) => 128,
                (None, None) => 64,
            };
            let vocab = resumed.and_then(|(_, extras)| extras.vocab.clone());
            let task =
                Task::text(&text, vocab, context, args.val_fraction, 32).map_err(|e| {
                    match (resumed, e) {
                        (Some(_), baregpt::Error::UnknownChar { ch, position }) => format!(
                            "{} has {ch:?} at position {position}, which is not in the vocabulary \
                         of the checkpoint being resumed ({}): resume it on the text it was \
                         trained on, or pass another --checkpoint",
                            path.display(),
                            checkpoint_path(args).display()
                        ),
                        (_, baregpt::Error::InvalidConfig { reason, .. }) => {
                            format!("{}: {reason}", path.display())
                        }
                        (_, e) => format!("{}: {e}", path.display()),
                    }
                })?;
            Ok((task, format!("text:{}", path.display())))
        }
    }
}

/// Where the checkpoint and plot go unless `--out` says otherwise.
fn default_out_dir(args: &Args) -> PathBuf {
    match &args.text {
        None => PathBuf::from("runs/addition"),
        Some(path) => PathBuf::from("runs").join(
            path.file_stem()
                .map_or("text".into(), |s| s.to_string_lossy().into_owned()),
        ),
    }
}

/// The checkpoint path: `--checkpoint`, else `<out>/model.safetensors`.
fn checkpoint_path(args: &Args) -> PathBuf {
    args.checkpoint.clone().unwrap_or_else(|| {
        args.out
            .clone()
            .unwrap_or_else(|| default_out_dir(args))
            .join("model.safetensors")
    })
}

fn read_text(path: &Path) -> AnyResult<String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| format!("{} is not UTF-8 text: {e}", path.display()))?;
    match text.chars().count() {
        0 => {
            return Err(format!(
                "{} is empty: there is nothing to learn from",
                path.display()
            )
            .into());
        }
        1 => {
            return Err(format!(
                "{} has a single character: at least 2 are needed, one to read and one to predict",
                path.display()
            )
            .into());
        }
        _ => {}
    }
    Ok(text)
}

fn run(args: &Args) -> AnyResult<()> {
    let out_dir = args.out.clone().unwrap_or_else(|| default_out_dir(args));
    let ckpt_path = checkpoint_path(args);
    // On --resume the checkpoint fixes the model (and, for text, the vocabulary and context).
    let resumed = if args.resume {
        let loaded = checkpoint::load::<f32>(&ckpt_path)
            .map_err(|e| format!("cannot resume from {}: {e}", ckpt_path.display()))?;
        Some(loaded)
    } else {
        None
    };
    let (task, task_name) = task(args, resumed.as_ref())?;
    let setup = setup(args, task.vocab().len(), task.context());
    if setup.steps == 0 || setup.batch == 0 {
        return Err("--steps and --batch must be at least 1".into());
    }
    let mut adam = Adam::new(adam_config(&setup)?)?;
    let (mut model, mut history) = match resumed {
        None => {
            let mut rng = StdRng::seed_from_u64(args.seed);
            (Gpt::<f32>::new(setup.config.clone(), &mut rng)?, Vec::new())
        }
        Some((model, extras)) => {
            check_resume(&model, &extras, &task_name, &setup, args)?;
            let state = extras.optimizer.as_ref().ok_or_else(|| {
                format!(
                    "{} has no optimizer state to resume from",
                    ckpt_path.display()
                )
            })?;
            adam.load_state(state.to_adam_state()?)?;
            let history = extras
                .metadata
                .get("history")
                .map(|h| history_from_string(h))
                .unwrap_or_default();
            (model, history)
        }
    };
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let start = adam.step_count();
    print_header(&task, &task_name, &model, &setup, start, &ckpt_path);

    let extras = |adam: Option<&Adam<f32>>, history: &[EvalPoint]| Extras {
        vocab: Some(task.vocab().clone()),
        optimizer: adam.map(OptimizerState::from_adam),
        metadata: [
            ("task".to_owned(), task_name.clone()),
            ("seed".to_owned(), args.seed.to_string()),
            ("batch".to_owned(), setup.batch.to_string()),
            ("training".to_owned(), training_settings(&setup)),
            ("history".to_owned(), history_to_string(history)),
            ("sample_prompt".to_owned(), sample_prompt(&task)),
        ]
        .into_iter()
        .collect(),
    };
    let save = |model: &Gpt<f32>, adam: &Adam<f32>, history: &[EvalPoint]| -> AnyResult<()> {
        checkpoint::save(&ckpt_path, model, &extras(Some(adam), history))?;
        Ok(())
    };

    let bar = common::progress_bar(setup.steps, start);
    let timer = Instant::now();
    let (mut tokens, mut since_eval) = (0usize, Vec::new());
    // Evaluation time is left out of tokens/s.
    let mut eval_time = 0.0f64;
    for step in start..setup.steps {
        let batch = task.batch(setup.batch, args.seed, step)?;
        let loss = common::train_step(&mut model, &mut adam, &batch)?;
        if !loss.is_finite() {
            return Err(format!(
                "the loss became {loss} at step {}: try a smaller --lr or --clip 1",
                step + 1
            )
            .into());
        }
        tokens += batch.ids.len();
        since_eval.push(loss);
        let done = step + 1;
        let rate = tokens as f64 / (timer.elapsed().as_secs_f64() - eval_time).max(1e-9);
        bar.set_position(done);
        bar.set_message(format!("loss {loss:.4} | {} tok/s", human(rate)));
        if args.log_every > 0 && (done == 1 || done % args.log_every == 0) {
            bar.suspend(|| println!("step {done:>6} | batch loss {loss:.3}"));
        }
        if done % setup.eval_every == 0 || done == setup.steps {
            let eval_start = Instant::now();
            let eval = task.evaluate(&model)?;
            eval_time += eval_start.elapsed().as_secs_f64();
            let train_loss = since_eval.iter().sum::<f64>() / since_eval.len().max(1) as f64;
            since_eval.clear();
            history.push(EvalPoint {
                step: done,
                train_loss,
                val_loss: eval.val_loss,
            });
            let acc = eval.accuracy.map_or(String::new(), |a| {
                format!(" | held-out accuracy {:5.1}%", 100.0 * a)
            });
            bar.suspend(|| {
                println!(
                    "step {done:>6} | train loss {train_loss:.4} | val loss {:.4}{acc}",
                    eval.val_loss
                )
            });
        }
        if args.checkpoint_every > 0 && done % args.checkpoint_every == 0 && done < setup.steps {
            save(&model, &adam, &history)?;
        }
    }
    bar.finish_and_clear();
    let elapsed = timer.elapsed().as_secs_f64();
    if start >= setup.steps {
        println!(
            "the checkpoint is already at step {start}, not below --steps {}: nothing to train",
            setup.steps
        );
    } else {
        save(&model, &adam, &history)?;
        if let Some(path) = &args.export {
            checkpoint::save_with(path, &model, &extras(None, &history), Storage::F16)
                .map_err(|e| format!("cannot export to {}: {e}", path.display()))?;
            println!("exported (f16, no optimizer state): {}", path.display());
        }
        println!(
            "trained {} steps in {elapsed:.1} s ({} tokens/s, evaluation left out)",
            setup.steps - start,
            human(tokens as f64 / (elapsed - eval_time).max(1e-9))
        );
    }
    report(&task, &mut model, args.seed)?;

    let plot_path = out_dir.join("loss.svg");
    if history.is_empty() {
        println!("no evaluation was made (no steps run), so no loss plot");
    } else {
        loss_plot(
            &plot_path,
            &format!("baregpt: {}", short_name(args)),
            &history,
        )?;
        println!("loss plot:  {}", plot_path.display());
    }
    println!("checkpoint: {}", ckpt_path.display());
    println!(
        "sample from it: cargo run --release --example sample -- --checkpoint {} --prompt {}",
        shell_quote(&ckpt_path.display().to_string()),
        shell_quote(&sample_prompt(&task))
    );
    Ok(())
}

/// What the run trains on, in a few words: the text file's name (not its whole path) or the
/// addition task.
fn short_name(args: &Args) -> String {
    match &args.text {
        Some(path) => path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        None => format!("{}-digit addition", args.digits),
    }
}

/// `text` quoted for a POSIX shell: in single quotes, each `'` written as `'\''`.
fn shell_quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The settings a resumed run must share with the run that wrote the checkpoint.
fn training_settings(s: &Setup) -> String {
    format!(
        "batch {}, lr {}, schedule {}, clip {}, weight decay {}",
        s.batch,
        s.lr,
        schedule_description(s),
        s.clip,
        s.weight_decay
    )
}

/// The learning-rate schedule a run uses, in words (as [`adam_config`] builds it).
fn schedule_description(s: &Setup) -> String {
    match s.schedule {
        Schedule::Cosine if s.steps > s.warmup => format!(
            "warmup {} then cosine decay to 10% at step {}",
            s.warmup, s.steps
        ),
        Schedule::Cosine | Schedule::Constant if s.warmup > 0 => {
            format!("warmup {} then constant", s.warmup)
        }
        _ => "constant".to_owned(),
    }
}

/// Checks that a checkpoint fits the run being resumed.
fn check_resume(
    model: &Gpt<f32>,
    extras: &Extras<f32>,
    task_name: &str,
    setup: &Setup,
    args: &Args,
) -> AnyResult<()> {
    let stored = extras
        .metadata
        .get("task")
        .map(String::as_str)
        .unwrap_or("?");
    if stored != task_name {
        return Err(format!(
            "the checkpoint was trained on {stored:?}, not {task_name:?}: pass the same task \
             (--text/--digits) or another --checkpoint"
        )
        .into());
    }
    if setup.config.context != model.config().context {
        return Err(format!(
            "the checkpoint's context is {} but this run asks for {}: drop --context or pass \
             --context {}",
            model.config().context,
            setup.config.context,
            model.config().context
        )
        .into());
    }
    // The model this run asks for (its preset and flags) must be the checkpoint's.
    if let Some((field, asked, stored)) = setup.config.first_difference(model.config()) {
        return Err(format!(
            "the checkpoint's {field} is {stored} but this run asks for {asked}: pass the \
             checkpoint's preset and flags, or another --checkpoint"
        )
        .into());
    }
    // So must the training settings, which the checkpoint records.
    let asked = training_settings(setup);
    match extras.metadata.get("training") {
        Some(stored) if *stored != asked => {
            return Err(format!(
                "the checkpoint was trained with {stored}, but this run asks for {asked}: pass \
                 the same preset and flags to resume"
            )
            .into());
        }
        _ => {}
    }
    let seed = extras.metadata.get("seed").map(String::as_str);
    if seed.is_some_and(|s| s != args.seed.to_string()) {
        eprintln!(
            "note: the checkpoint was trained with --seed {}, this run uses --seed {}",
            seed.unwrap_or("?"),
            args.seed
        );
    }
    Ok(())
}

fn print_header(
    task: &Task,
    task_name: &str,
    model: &Gpt<f32>,
    s: &Setup,
    start: u64,
    ckpt: &Path,
) {
    let c = model.config();
    println!("baregpt: training a GPT with hand-written backward passes and Adam");
    match task {
        Task::Addition { task, held_out } => {
            println!(
                "task:   add two {}-digit numbers, the sum written reversed: {}",
                task.digits(),
                task.format(1234 % task.bound(), 5678 % task.bound()),
            );
            println!(
                "eval:   exact match on {} held-out sums every {} steps",
                held_out.len(),
                s.eval_every
            );
        }
        Task::Text { data, context, .. } => {
            println!(
                "task:   {task_name}: {} characters, vocabulary of {}, context {context}",
                data.ids(baregpt::data::Split::Train).len()
                    + data.ids(baregpt::data::Split::Validation).len(),
                data.vocab().len()
            );
            if data.ids(baregpt::data::Split::Validation).is_empty() {
                println!(
                    "eval:   nothing held out (--val-fraction 0): the val loss is measured on \
                     fixed windows of the training text"
                );
            }
        }
    }
    println!(
        "model:  {} parameters (d_model {}, {} heads, {} layers, context {}, vocabulary {})",
        model.num_params(),
        c.d_model,
        c.n_heads,
        c.n_layers,
        c.context,
        c.vocab_size
    );
    println!(
        "train:  {} steps of {} sequences, {} lr {} ({}), clip {}{}{}{}",
        s.steps,
        s.batch,
        if s.weight_decay > 0.0 {
            "AdamW"
        } else {
            "Adam"
        },
        s.lr,
        schedule_description(s),
        if s.clip > 0.0 {
            s.clip.to_string()
        } else {
            "off".into()
        },
        if s.weight_decay > 0.0 {
            format!(", weight decay {}", s.weight_decay)
        } else {
            String::new()
        },
        if c.dropout.any() {
            let d = c.dropout;
            format!(
                ", dropout {}/{}/{} (embeddings/attention/residual)",
                d.embed, d.attention, d.residual
            )
        } else {
            String::new()
        },
        if start > 0 {
            format!(", resuming at step {start}")
        } else {
            String::new()
        }
    );
    println!("saving: {}", ckpt.display());
}

/// The final report: accuracy on a larger held-out set and a few solved sums, or a text sample.
fn report(task: &Task, model: &mut Gpt<f32>, seed: u64) -> AnyResult<()> {
    match task {
        Task::Addition { task, .. } => {
            let mut rng = StdRng::seed_from_u64(0xacc);
            let pairs = task.held_out_pairs(10_000, &mut rng)?;
            let eval = common::addition_eval(model, task, &pairs)?;
            let acc = eval.accuracy.unwrap_or(0.0);
            println!(
                "held-out exact-match accuracy: {:.2}% ({} of {} sums never seen in training)",
                100.0 * acc,
                (acc * pairs.len() as f64).round(),
                pairs.len()
            );
            for &(a, b) in pairs.iter().take(5) {
                let answer = solve(model, task, a, b)?;
                let shown = answer.map_or("?".to_owned(), |n| n.to_string());
                let mark = if answer == Some(a + b) { "✓" } else { "✗" };
                println!("  {a} + {b} = {shown} {mark}");
            }
        }
        Task::Text { data, .. } => {
            let prompt: Vec<usize> = data
                .ids(common::eval_split(data))
                .iter()
                .take(32)
                .copied()
                .collect();
            let mut rng = StdRng::seed_from_u64(seed);
            let new = generate(
                model,
                &prompt,
                300,
                &SampleOptions::default(),
                &mut rng,
                |_| {},
            )?;
            println!("sample (prompt from the validation text, then 300 generated characters):");
            println!(
                "{}{}",
                data.vocab().decode(&prompt)?,
                data.vocab().decode(&new)?
            );
        }
    }
    Ok(())
}

/// A prompt to suggest for `examples/sample`: a held-out sum, or the start of the validation
/// text.
fn sample_prompt(task: &Task) -> String {
    match task {
        Task::Addition { task, held_out } => held_out
            .first()
            .map_or_else(|| task.prompt(1, 2), |&(a, b)| task.prompt(a, b)),
        Task::Text { data, .. } => {
            let ids: Vec<usize> = data
                .ids(common::eval_split(data))
                .iter()
                .take(16)
                .copied()
                .collect();
            data.vocab().decode(&ids).unwrap_or_default()
        }
    }
}

/// `12345.6` → `"12.3k"`.
fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}
