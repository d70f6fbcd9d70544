//! Pieces shared by the `train` and `sample` examples and by `tests/embedded_task.rs`: the
//! two training tasks, a masked loss, one training step, evaluation, and the loss plot.

#![allow(dead_code)]

pub mod plot;

use baregpt::data::{AdditionTask, CharVocab, Split, TextDataset};
use baregpt::generate::{SampleOptions, generate};
use baregpt::optim::Adam;
use baregpt::prelude::*;
use baregpt::{Float, Gpt, Layer, Result};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array2, Array3, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The seed of the held-out evaluation sets: fixed, so that every run is scored on the same
/// examples whatever its training seed.
const EVAL_SEED: u64 = 0x5eed_e7a1;

/// One training batch: ids and targets `(B, T)`, and which target positions count.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Token ids `(B, T)`.
    pub ids: Array2<usize>,
    /// Next-token targets `(B, T)`.
    pub targets: Array2<usize>,
    /// `Some(mask)`: only positions `t` with `mask[t]` are in the loss.
    pub mask: Option<Vec<bool>>,
}

/// What an evaluation measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Eval {
    /// Loss on held-out data.
    pub val_loss: f64,
    /// Exact-match accuracy on held-out examples (the addition task only).
    pub accuracy: Option<f64>,
}

/// What the model is trained on.
#[derive(Clone, Debug)]
pub enum Task {
    /// The embedded default: adding two numbers, scored on held-out pairs.
    Addition {
        /// The task.
        task: AdditionTask,
        /// Held-out pairs for the periodic evaluation.
        held_out: Vec<(u64, u64)>,
    },
    /// A character-level model of a text file.
    Text {
        /// The corpus, split.
        data: TextDataset,
        /// The window length `T`.
        context: usize,
        /// Fixed validation batches.
        val_batches: Vec<Batch>,
    },
}

/// The split evaluation draws from: the validation text, or the training text when none is
/// held out (`--val-fraction 0`).
pub fn eval_split(data: &TextDataset) -> Split {
    if data.ids(Split::Validation).is_empty() {
        Split::Train
    } else {
        Split::Validation
    }
}

impl Task {
    /// The addition task with `digits`-digit operands, evaluated on `n_eval` held-out pairs.
    pub fn addition(digits: usize, n_eval: usize) -> Result<Self> {
        let task = AdditionTask::new(digits)?;
        let held_out = task.held_out_pairs(n_eval, &mut StdRng::seed_from_u64(EVAL_SEED))?;
        Ok(Self::Addition { task, held_out })
    }

    /// A text task; `vocab` is the checkpoint's when resuming.
    pub fn text(
        text: &str,
        vocab: Option<CharVocab>,
        context: usize,
        val_fraction: f64,
        eval_batch: usize,
    ) -> Result<Self> {
        let data = match vocab {
            Some(vocab) => TextDataset::with_vocab(text, vocab, val_fraction)?,
            None => TextDataset::new(text, val_fraction)?,
        };
        let total = data.ids(Split::Train).len() + data.ids(Split::Validation).len();
        if data.max_context() == 0 {
            return Err(baregpt::Error::InvalidConfig {
                layer: "train",
                reason: format!(
                    "a text of {total} characters is too short: the training and the validation \
                     part need at least 2 characters each (use a longer file)"
                ),
            });
        }
        if context == 0 || context > data.max_context() {
            return Err(baregpt::Error::InvalidConfig {
                layer: "train",
                reason: format!(
                    "the text is too short for a context of {context}: its smaller split has \
                     {} characters, so the context can be at most {} (use a longer file or a \
                     smaller --context)",
                    data.max_context() + 1,
                    data.max_context()
                ),
            });
        }
        let mut rng = StdRng::seed_from_u64(EVAL_SEED);
        let val_batches = (0..8)
            .map(|_| {
                let (ids, targets) =
                    data.batch(eval_split(&data), eval_batch, context, &mut rng)?;
                Ok(Batch {
                    ids,
                    targets,
                    mask: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self::Text {
            data,
            context,
            val_batches,
        })
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &CharVocab {
        match self {
            Self::Addition { task, .. } => task.vocab(),
            Self::Text { data, .. } => data.vocab(),
        }
    }

    /// The context the model needs.
    pub fn context(&self) -> usize {
        match self {
            Self::Addition { task, .. } => task.context(),
            Self::Text { context, .. } => *context,
        }
    }

    /// The training batch of step `step` (counted from 0) for a run seeded with `seed`.
    ///
    /// Each step's batch depends only on `(seed, step)`, so a resumed run sees exactly the
    /// batches an uninterrupted one would.
    pub fn batch(&self, batch: usize, seed: u64, step: u64) -> Result<Batch> {
        let mut rng = StdRng::seed_from_u64(seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        match self {
            Self::Addition { task, .. } => {
                let (ids, targets) = task.batch(&task.train_pairs(batch, &mut rng)?);
                Ok(Batch {
                    ids,
                    targets,
                    mask: Some(task.answer_mask()),
                })
            }
            Self::Text { data, context, .. } => {
                let (ids, targets) = data.batch(Split::Train, batch, *context, &mut rng)?;
                Ok(Batch {
                    ids,
                    targets,
                    mask: None,
                })
            }
        }
    }

    /// Held-out loss (and accuracy for the addition task) on the fixed evaluation set, by
    /// inference: nothing is dropped, whatever the model's dropout mode.
    pub fn evaluate<F: Float>(&self, model: &Gpt<F>) -> Result<Eval> {
        match self {
            Self::Addition { task, held_out } => addition_eval(model, task, held_out),
            Self::Text { val_batches, .. } => {
                let mut total = 0.0;
                for batch in val_batches {
                    total += model.eval_loss(&batch.ids, &batch.targets)?.to_f64_exact();
                }
                Ok(Eval {
                    val_loss: total / val_batches.len().max(1) as f64,
                    accuracy: None,
                })
            }
        }
    }
}

/// Masked loss and exact-match accuracy of `model` on addition `pairs`, by inference (no
/// dropout).
pub fn addition_eval<F: Float>(
    model: &Gpt<F>,
    task: &AdditionTask,
    pairs: &[(u64, u64)],
) -> Result<Eval> {
    let mask = task.answer_mask();
    let (mut loss, mut correct) = (0.0, 0);
    for chunk in pairs.chunks(500) {
        let (ids, targets) = task.batch(chunk);
        let logits = model.infer(&ids)?;
        loss += masked_cross_entropy(&logits, &targets, &mask)
            .0
            .to_f64_exact()
            * chunk.len() as f64;
        correct += task.count_exact(logits.view(), targets.view())?;
    }
    let n = pairs.len().max(1) as f64;
    Ok(Eval {
        val_loss: loss / n,
        accuracy: Some(correct as f64 / n),
    })
}

/// Mean cross-entropy over the positions `t` with `mask[t]`, and `dL/dlogits (B, T, V)`:
/// `(softmax − onehot) / count` at those positions, 0 elsewhere.
pub fn masked_cross_entropy<F: Float>(
    logits: &Array3<F>,
    targets: &Array2<usize>,
    mask: &[bool],
) -> (F, Array3<F>) {
    let (b, t, _) = logits.dim();
    let count = b * mask.iter().take(t).filter(|m| **m).count();
    let inv = F::one() / F::of(count.max(1) as f64);
    let mut d_logits = Array3::zeros(logits.raw_dim());
    let mut loss = F::zero();
    for (bi, (rows, mut d_rows)) in logits
        .axis_iter(Axis(0))
        .zip(d_logits.axis_iter_mut(Axis(0)))
        .enumerate()
    {
        for (ti, (row, mut d_row)) in rows.outer_iter().zip(d_rows.outer_iter_mut()).enumerate() {
            if !mask.get(ti).copied().unwrap_or(false) {
                continue;
            }
            let max = row.fold(F::neg_infinity(), |m, &x| m.max(x));
            let sum: F = row.iter().map(|&x| (x - max).exp()).sum();
            let target = targets[[bi, ti]];
            loss += (sum.ln() + max - row[target]) * inv;
            for (vi, (&x, d)) in row.iter().zip(d_row.iter_mut()).enumerate() {
                let onehot = if vi == target { F::one() } else { F::zero() };
                *d = ((x - max).exp() / sum - onehot) * inv;
            }
        }
    }
    (loss, d_logits)
}

/// One optimizer step on `batch`: zero the gradients, forward, loss, backward, Adam.
/// Returns the batch loss.
pub fn train_step<F: Float>(model: &mut Gpt<F>, adam: &mut Adam<F>, batch: &Batch) -> Result<f64> {
    model.zero_grad();
    let loss = match &batch.mask {
        None => {
            let loss = model.loss(&batch.ids, &batch.targets)?;
            model.backward_loss()?;
            loss
        }
        Some(mask) => {
            let logits = model.forward(&batch.ids)?;
            let (loss, d_logits) = masked_cross_entropy(&logits, &batch.targets, mask);
            Layer::backward(model, &d_logits)?;
            loss
        }
    };
    adam.step(model)?;
    Ok(loss.to_f64_exact())
}

/// Answers `a + b` with greedy decoding through the key/value cache; `None` if the model's
/// output is not a number.
pub fn solve<F: Float>(model: &Gpt<F>, task: &AdditionTask, a: u64, b: u64) -> Result<Option<u64>> {
    let prompt = task.vocab().encode(&task.prompt(a, b))?;
    let mut rng = StdRng::seed_from_u64(0);
    let ids = generate(
        model,
        &prompt,
        task.answer_len(),
        &SampleOptions::greedy(),
        &mut rng,
        |_| {},
    )?;
    Ok(task.parse_answer(&task.vocab().decode(&ids)?))
}

/// Serialises evaluation points for checkpoint metadata: `step:train:val` joined by `;`.
pub fn history_to_string(points: &[plot::EvalPoint]) -> String {
    points
        .iter()
        .map(|p| format!("{}:{}:{}", p.step, p.train_loss, p.val_loss))
        .collect::<Vec<_>>()
        .join(";")
}

/// Reads [`history_to_string`]'s format back, skipping unreadable entries.
pub fn history_from_string(s: &str) -> Vec<plot::EvalPoint> {
    s.split(';')
        .filter_map(|entry| {
            let mut parts = entry.split(':');
            Some(plot::EvalPoint {
                step: parts.next()?.parse().ok()?,
                train_loss: parts.next()?.parse().ok()?,
                val_loss: parts.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// A progress bar over `steps` steps, starting at `start` (a resumed run).
pub fn progress_bar(steps: u64, start: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{bar:20.cyan/blue} step {pos}/{len} | {msg} | ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("█▉▊▋▌▍▎▏ "),
    );
    bar.set_position(start);
    bar.reset_eta();
    bar
}

/// The mean loss of `model` over all of `ids`, in non-overlapping windows of `context`
/// ([`baregpt::data::windows`]), with dropout off; and the number of windows.
pub fn split_loss<F: Float>(model: &Gpt<F>, ids: &[usize], context: usize) -> Result<(f64, usize)> {
    let (mut total, mut windows) = (0.0, 0usize);
    for (x, y) in baregpt::data::windows(ids, context, 16)? {
        let b = x.nrows();
        total += model.eval_loss(&x, &y)?.to_f64_exact() * b as f64;
        windows += b;
    }
    Ok((total / windows as f64, windows))
}
