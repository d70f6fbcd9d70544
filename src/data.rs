//! Data for training a [`Gpt`](crate::Gpt): a character vocabulary, a text corpus with a
//! train/validation split, and the [`AdditionTask`], a data set generated in code.
//!
//! Everything here produces token ids `(B, T)` and next-token targets `(B, T)`, the two
//! arrays [`Gpt::loss`](crate::Gpt::loss) takes.
//!
//! ```
//! use baregpt::data::{CharVocab, Split, TextDataset};
//! use rand::SeedableRng;
//!
//! let vocab = CharVocab::from_text("hello world")?;
//! assert_eq!(vocab.len(), 8); // ' ', d, e, h, l, o, r, w
//! assert_eq!(vocab.decode(&vocab.encode("low")?)?, "low");
//! assert!(vocab.encode("hi!").is_err()); // 'i' and '!' are unknown
//!
//! let data = TextDataset::new(&"abcdefgh".repeat(20), 0.1)?;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! let (ids, targets) = data.batch(Split::Train, 4, 8, &mut rng)?;
//! assert_eq!(ids.shape(), &[4, 8]);
//! assert_eq!(ids[[0, 1]], targets[[0, 0]]); // targets are the ids shifted by one
//! # Ok::<(), baregpt::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;

use ndarray::{Array2, ArrayView2, ArrayView3, Axis};
use rand::{Rng, RngExt};

use crate::error::check_shape;
use crate::{Error, Float, Result};

/// A character-level vocabulary: id `i` is the `i`-th character.
///
/// Built from a text ([`CharVocab::from_text`], the sorted set of its characters, as in the
/// original) or from characters in id order ([`CharVocab::from_chars`], which is how a
/// checkpoint restores it). Encoding an unknown character is an
/// [`Error::UnknownChar`], decoding an id `≥ V` an [`Error::TokenOutOfRange`]; neither
/// panics.
#[derive(Clone, PartialEq, Eq)]
pub struct CharVocab {
    chars: Vec<char>,
    index: HashMap<char, usize>,
}

const VOCAB: &str = "CharVocab";

impl CharVocab {
    /// The sorted set of the characters of `text`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `text` is empty.
    pub fn from_text(text: &str) -> Result<Self> {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::from_chars(chars)
    }

    /// The vocabulary whose id `i` is the `i`-th of `chars`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `chars` is empty or repeats a character.
    pub fn from_chars(chars: impl IntoIterator<Item = char>) -> Result<Self> {
        let chars: Vec<char> = chars.into_iter().collect();
        if chars.is_empty() {
            return Err(Error::InvalidConfig {
                layer: VOCAB,
                reason: "the vocabulary is empty (no characters)".into(),
            });
        }
        let mut index = HashMap::with_capacity(chars.len());
        for (id, &ch) in chars.iter().enumerate() {
            if index.insert(ch, id).is_some() {
                return Err(Error::InvalidConfig {
                    layer: VOCAB,
                    reason: format!("character {ch:?} appears twice"),
                });
            }
        }
        Ok(Self { chars, index })
    }

    /// The number of characters `V`.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Always `false`: a vocabulary has at least one character.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The id of `ch`, if it is in the vocabulary.
    pub fn id(&self, ch: char) -> Option<usize> {
        self.index.get(&ch).copied()
    }

    /// The character with id `id`, if `id < V`.
    pub fn char(&self, id: usize) -> Option<char> {
        self.chars.get(id).copied()
    }

    /// Encodes `text` to ids.
    ///
    /// # Errors
    /// [`Error::UnknownChar`] naming the first character that is not in the vocabulary and
    /// its position (in characters).
    pub fn encode(&self, text: &str) -> Result<Vec<usize>> {
        text.chars()
            .enumerate()
            .map(|(position, ch)| self.id(ch).ok_or(Error::UnknownChar { ch, position }))
            .collect()
    }

    /// Decodes ids to text.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] for an id `≥ V` (its position is reported as `(0, i)`).
    pub fn decode(&self, ids: &[usize]) -> Result<String> {
        ids.iter()
            .enumerate()
            .map(|(i, &id)| {
                self.char(id).ok_or(Error::TokenOutOfRange {
                    layer: VOCAB,
                    id,
                    position: (0, i),
                    vocab_size: self.len(),
                })
            })
            .collect()
    }
}

impl fmt::Display for CharVocab {
    /// The characters in id order, as one string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.chars
            .iter()
            .try_for_each(|ch| fmt::Write::write_char(f, *ch))
    }
}

impl fmt::Debug for CharVocab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CharVocab({:?})", self.to_string())
    }
}

/// Which part of a [`TextDataset`] to draw from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training text (the first part).
    Train,
    /// The held-out validation text (the last part).
    Validation,
}

/// A sequence of token ids split into a training part and a validation part, from which
/// random windows are drawn: the data of [`TextDataset`], and of any tokenizer's ids.
///
/// The validation part is the last `val_fraction` of the ids (at least one), so the two never
/// overlap; with `val_fraction = 0` there is none, and every id trains.
///
/// ```
/// use baregpt::data::{Split, TokenDataset};
///
/// let data = TokenDataset::from_ids((0..100).map(|i| i % 7).collect(), 0.1)?;
/// assert_eq!(data.ids(Split::Validation).len(), 10);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct TokenDataset {
    train: Vec<usize>,
    val: Vec<usize>,
}

const TOKENS: &str = "TokenDataset";

impl TokenDataset {
    /// Splits `ids`: the last `val_fraction` of them (rounded up, at least one, and at most all
    /// but one) are held out.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when there are fewer than two ids or `val_fraction` is not in
    /// `[0, 1)`.
    pub fn from_ids(ids: Vec<usize>, val_fraction: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::InvalidConfig {
                layer: TOKENS,
                reason: format!("validation fraction {val_fraction} is not in [0, 1)"),
            });
        }
        if ids.len() < 2 {
            return Err(Error::InvalidConfig {
                layer: TOKENS,
                reason: format!("the text has {} tokens; at least 2 are needed", ids.len()),
            });
        }
        let n_val = if val_fraction == 0.0 {
            0
        } else {
            ((ids.len() as f64 * val_fraction).ceil() as usize).clamp(1, ids.len() - 1)
        };
        let mut train = ids;
        let val = train.split_off(train.len() - n_val);
        Ok(Self { train, val })
    }

    /// The ids of one split.
    pub fn ids(&self, split: Split) -> &[usize] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.val,
        }
    }

    /// The longest window `T` both splits can serve (one less than the shorter split; the
    /// training split alone when there is no validation split).
    pub fn max_context(&self) -> usize {
        let shorter = match self.val.len() {
            0 => self.train.len(),
            n => self.train.len().min(n),
        };
        shorter.saturating_sub(1)
    }

    /// `b` random windows of length `t` from `split`: ids `(b, t)` and the next ids as targets
    /// `(b, t)`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `b` or `t` is zero or the split is not longer than `t`;
    /// [`Error::TooLarge`] when `(b, t)` ids would exceed
    /// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
    pub fn batch<R: Rng + ?Sized>(
        &self,
        split: Split,
        b: usize,
        t: usize,
        rng: &mut R,
    ) -> Result<(Array2<usize>, Array2<usize>)> {
        let ids = self.ids(split);
        if b == 0 || t == 0 || ids.len() <= t {
            return Err(Error::InvalidConfig {
                layer: TOKENS,
                reason: format!(
                    "cannot draw {b} windows of {t} tokens from a {split:?} split of {} tokens",
                    ids.len()
                ),
            });
        }
        crate::limits::check_alloc::<usize>(TOKENS, "ids", &[b, t])?;
        let starts: Vec<usize> = (0..b).map(|_| rng.random_range(0..ids.len() - t)).collect();
        Ok(windows_at(ids, &starts, t))
    }
}

/// The windows of `t` ids starting at `starts` `(b, t)`, and their next ids as targets
/// `(b, t)`; every `start + t` must be below `ids.len()`.
fn windows_at(ids: &[usize], starts: &[usize], t: usize) -> (Array2<usize>, Array2<usize>) {
    let b = starts.len();
    let x = Array2::from_shape_fn((b, t), |(i, j)| ids[starts[i] + j]);
    let y = Array2::from_shape_fn((b, t), |(i, j)| ids[starts[i] + j + 1]);
    (x, y)
}

/// Every non-overlapping window of `t` ids in `ids` with its next ids as targets, grouped
/// into batches of at most `batch` windows: ids and targets `(b, t)` per batch, `b ≤ batch`.
/// The windows start at `0, t, 2t, …` and the last ids that do not fill a window (at most
/// `t`, since each window needs one more id for its last target) are left out, so the mean of
/// [`Gpt::eval_loss`](crate::Gpt::eval_loss) over the batches, weighted by their sizes, is the
/// loss over the whole of `ids` as a model with context `t` sees it.
///
/// ```
/// use baregpt::data::windows;
///
/// let batches = windows(&(0..10).collect::<Vec<_>>(), 3, 2)?;
/// assert_eq!(batches.len(), 2);                       // windows 0..3, 3..6 | 6..9
/// assert_eq!(batches[1].0.row(0).to_vec(), vec![6, 7, 8]);
/// assert_eq!(batches[1].1.row(0).to_vec(), vec![7, 8, 9]);
/// # Ok::<(), baregpt::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidConfig`] when `t` or `batch` is zero or `ids` has fewer than `t + 1` ids.
pub fn windows(
    ids: &[usize],
    t: usize,
    batch: usize,
) -> Result<Vec<(Array2<usize>, Array2<usize>)>> {
    if t == 0 || batch == 0 || ids.len() <= t {
        return Err(Error::InvalidConfig {
            layer: "windows",
            reason: format!(
                "cannot cut windows of {t} (in batches of {batch}) from {} ids",
                ids.len()
            ),
        });
    }
    let n = (ids.len() - 1) / t;
    let mut out = Vec::with_capacity(n.div_ceil(batch));
    let mut start = 0;
    while start < n {
        let b = batch.min(n - start);
        let starts: Vec<usize> = (start..start + b).map(|w| w * t).collect();
        out.push(windows_at(ids, &starts, t));
        start += b;
    }
    Ok(out)
}

/// A character-level corpus split into a training part and a validation part.
///
/// The validation part is the last `val_fraction` of the text (at least one character), so the
/// two never overlap; with `val_fraction = 0` there is none, and the whole text trains (as the
/// original does). [`TextDataset::batch`] draws random windows, as the original's
/// `get_batch` does.
#[derive(Clone, Debug)]
pub struct TextDataset {
    vocab: CharVocab,
    tokens: TokenDataset,
}

impl TextDataset {
    /// Builds the vocabulary from `text` and splits it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `text` is empty or `val_fraction` is not in `[0, 1)`.
    pub fn new(text: &str, val_fraction: f64) -> Result<Self> {
        let vocab = CharVocab::from_text(text)?;
        Self::with_vocab(text, vocab, val_fraction)
    }

    /// Splits `text` encoded with a given vocabulary (for example one restored from a
    /// checkpoint).
    ///
    /// # Errors
    /// [`Error::UnknownChar`] when `text` has a character outside `vocab`;
    /// [`Error::InvalidConfig`] when `text` has fewer than two characters or `val_fraction` is
    /// not in `[0, 1)`.
    pub fn with_vocab(text: &str, vocab: CharVocab, val_fraction: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::InvalidConfig {
                layer: "TextDataset",
                reason: format!("validation fraction {val_fraction} is not in [0, 1)"),
            });
        }
        let tokens = TokenDataset::from_ids(vocab.encode(text)?, val_fraction)?;
        Ok(Self { vocab, tokens })
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &CharVocab {
        &self.vocab
    }

    /// The ids, split.
    pub fn tokens(&self) -> &TokenDataset {
        &self.tokens
    }

    /// The ids of one split.
    pub fn ids(&self, split: Split) -> &[usize] {
        self.tokens.ids(split)
    }

    /// The longest window `T` both splits can serve (one less than the shorter split; the
    /// training split alone when there is no validation split).
    pub fn max_context(&self) -> usize {
        self.tokens.max_context()
    }

    /// `b` random windows of length `t` from `split`: ids `(b, t)` and the next characters as
    /// targets `(b, t)` (as [`TokenDataset::batch`]).
    ///
    /// # Errors
    /// As [`TokenDataset::batch`].
    pub fn batch<R: Rng + ?Sized>(
        &self,
        split: Split,
        b: usize,
        t: usize,
        rng: &mut R,
    ) -> Result<(Array2<usize>, Array2<usize>)> {
        self.tokens.batch(split, b, t, rng)
    }
}

/// Adding two `d`-digit numbers, written so that a small GPT can learn it: the data set that
/// `cargo run --release --example train` trains on when given no text file.
///
/// An example is `a+b=` followed by the sum, zero-padded to `d + 1` digits and **reversed**
/// (least significant digit first, the order in which carries are computed): with `d = 3`,
/// `123+489=` is answered by `2160` (612 reversed). Every operand is zero-padded to `d`
/// digits, so all examples have the same length `L = 3d + 3` and the answer always starts
/// at the same position.
///
/// A fixed, pseudo-random 2% of all pairs `(a, b)` is **held out**: [`AdditionTask::train_pairs`]
/// never draws them and [`AdditionTask::held_out_pairs`] draws only them, so accuracy on the
/// latter measures generalisation, not memory.
///
/// ```
/// use baregpt::data::AdditionTask;
///
/// let task = AdditionTask::new(3)?;
/// assert_eq!(task.format(123, 489), "123+489=2160");
/// assert_eq!(task.vocab().to_string(), "0123456789+=");
/// assert_eq!(task.parse_answer("2160"), Some(612));
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct AdditionTask {
    digits: usize,
    vocab: CharVocab,
}

const TASK: &str = "AdditionTask";

/// One pair in `HELD_OUT_EVERY` is held out.
const HELD_OUT_EVERY: u64 = 50;

impl AdditionTask {
    /// The task for `digits`-digit operands, `1 ≤ digits ≤ 9`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for another number of digits.
    pub fn new(digits: usize) -> Result<Self> {
        if !(1..=9).contains(&digits) {
            return Err(Error::InvalidConfig {
                layer: TASK,
                reason: format!("{digits} digits is not in 1..=9"),
            });
        }
        let vocab = CharVocab::from_chars("0123456789+=".chars())?;
        Ok(Self { digits, vocab })
    }

    /// The number of digits of each operand.
    pub fn digits(&self) -> usize {
        self.digits
    }

    /// The vocabulary: the ten digits, `+` and `=` (12 tokens).
    pub fn vocab(&self) -> &CharVocab {
        &self.vocab
    }

    /// The length `L = 3d + 3` of a whole example.
    pub fn seq_len(&self) -> usize {
        3 * self.digits + 3
    }

    /// The length of the prompt `a+b=`, `2d + 2`.
    pub fn prompt_len(&self) -> usize {
        2 * self.digits + 2
    }

    /// The length of the answer, `d + 1` digits.
    pub fn answer_len(&self) -> usize {
        self.digits + 1
    }

    /// The context a model needs: `L − 1` (the last character is only ever a target).
    pub fn context(&self) -> usize {
        self.seq_len() - 1
    }

    /// The operands are below this bound, `10^d`.
    pub fn bound(&self) -> u64 {
        10u64.pow(self.digits as u32)
    }

    /// The prompt `a+b=` of a pair, operands zero-padded.
    pub fn prompt(&self, a: u64, b: u64) -> String {
        let d = self.digits;
        format!("{a:0d$}+{b:0d$}=")
    }

    /// The answer to `a + b`: the sum zero-padded to `d + 1` digits, reversed.
    pub fn answer(&self, a: u64, b: u64) -> String {
        let width = self.digits + 1;
        format!("{:0width$}", a + b).chars().rev().collect()
    }

    /// The whole example, prompt then answer.
    pub fn format(&self, a: u64, b: u64) -> String {
        self.prompt(a, b) + &self.answer(a, b)
    }

    /// Reads a (reversed) answer back into a number; `None` unless it is `d + 1` digits.
    pub fn parse_answer(&self, answer: &str) -> Option<u64> {
        if answer.chars().count() != self.answer_len()
            || !answer.chars().all(|c| c.is_ascii_digit())
        {
            return None;
        }
        answer.chars().rev().collect::<String>().parse().ok()
    }

    /// Whether `(a, b)` belongs to the held-out set (a fixed pseudo-random 2% of all pairs).
    pub fn is_held_out(&self, a: u64, b: u64) -> bool {
        mix64(a.wrapping_mul(self.bound()).wrapping_add(b)).is_multiple_of(HELD_OUT_EVERY)
    }

    /// `n` random training pairs (never held out).
    ///
    /// # Errors
    /// [`Error::TooLarge`] when `n` pairs would exceed
    /// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES) (checked before allocating).
    pub fn train_pairs<R: Rng + ?Sized>(&self, n: usize, rng: &mut R) -> Result<Vec<(u64, u64)>> {
        self.pairs_where(n, rng, false)
    }

    /// `n` random held-out pairs.
    ///
    /// # Errors
    /// As [`AdditionTask::train_pairs`], and [`Error::InvalidConfig`] when this task holds out
    /// no pair at all (possible only for very few digits), so none can be drawn.
    pub fn held_out_pairs<R: Rng + ?Sized>(
        &self,
        n: usize,
        rng: &mut R,
    ) -> Result<Vec<(u64, u64)>> {
        self.pairs_where(n, rng, true)
    }

    fn pairs_where<R: Rng + ?Sized>(
        &self,
        n: usize,
        rng: &mut R,
        held_out: bool,
    ) -> Result<Vec<(u64, u64)>> {
        crate::limits::check_alloc::<(u64, u64)>(TASK, "pairs", &[n])?;
        let bound = self.bound();
        // With few digits the held-out 2% may be empty; drawing from it would never end.
        // (From three digits on, a million pairs, it is never empty.)
        if held_out
            && n > 0
            && bound <= 100
            && !(0..bound).any(|a| (0..bound).any(|b| self.is_held_out(a, b)))
        {
            return Err(Error::InvalidConfig {
                layer: TASK,
                reason: format!("{} digits hold out no pair to draw", self.digits),
            });
        }
        let mut pairs = Vec::with_capacity(n);
        while pairs.len() < n {
            let (a, b) = (rng.random_range(0..bound), rng.random_range(0..bound));
            if self.is_held_out(a, b) == held_out {
                pairs.push((a, b));
            }
        }
        Ok(pairs)
    }

    /// The model inputs and next-token targets for `pairs`: ids `(B, L − 1)` and targets
    /// `(B, L − 1)`. Only the targets in [`AdditionTask::answer_targets`] are the task; the
    /// others are the random operands.
    pub fn batch(&self, pairs: &[(u64, u64)]) -> (Array2<usize>, Array2<usize>) {
        let t = self.context();
        let mut ids = Array2::zeros((pairs.len(), t));
        let mut targets = Array2::zeros((pairs.len(), t));
        for (i, &(a, b)) in pairs.iter().enumerate() {
            let seq: Vec<usize> = self
                .format(a, b)
                .chars()
                .map(|c| self.vocab.id(c).unwrap_or(0))
                .collect();
            for j in 0..t {
                ids[[i, j]] = seq[j];
                targets[[i, j]] = seq[j + 1];
            }
        }
        (ids, targets)
    }

    /// The target positions that hold the answer: `2d + 1 .. 3d + 2` (the position of `=`
    /// predicts the first answer digit).
    pub fn answer_targets(&self) -> std::ops::Range<usize> {
        self.prompt_len() - 1..self.context()
    }

    /// A weight per target position `(L − 1)`: 1 on the answer, 0 on the operands.
    pub fn answer_mask(&self) -> Vec<bool> {
        let answer = self.answer_targets();
        (0..self.context()).map(|j| answer.contains(&j)).collect()
    }

    /// How many rows of `logits (B, L − 1, V)` get the whole answer right under greedy
    /// decoding.
    ///
    /// With teacher forcing, the argmax at every answer position equals the target exactly
    /// when greedy generation from the prompt reproduces the answer digit by digit, so one
    /// batched forward pass scores exact-match accuracy.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `logits` is not `(B, L − 1, V)` for the `targets (B, L − 1)`.
    pub fn count_exact<F: Float>(
        &self,
        logits: ArrayView3<'_, F>,
        targets: ArrayView2<'_, usize>,
    ) -> Result<usize> {
        let (b, t) = targets.dim();
        check_shape(
            TASK,
            "targets",
            targets.shape(),
            &[None, Some(self.context())],
        )?;
        check_shape(
            TASK,
            "logits",
            logits.shape(),
            &[Some(b), Some(t), Some(self.vocab.len())],
        )?;
        let answer = self.answer_targets();
        let correct = logits
            .axis_iter(Axis(0))
            .zip(targets.rows())
            .filter(|(row_logits, row_targets)| {
                answer
                    .clone()
                    .all(|j| argmax(row_logits.row(j).iter().copied()) == row_targets[j])
            })
            .count();
        Ok(correct)
    }
}

/// The index of the largest value (the first one on ties; NaN never wins).
pub(crate) fn argmax<F: Float>(values: impl IntoIterator<Item = F>) -> usize {
    let mut best = (0, F::neg_infinity());
    for (i, v) in values.into_iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// The SplitMix64 finaliser: a fixed bijective scramble of 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn vocab_round_trips_and_rejects_unknowns() {
        let vocab = CharVocab::from_text("hello, wörld\n").unwrap();
        assert_eq!(vocab.to_string(), "\n ,dehlorwö");
        let ids = vocab.encode("wörld").unwrap();
        assert_eq!(vocab.decode(&ids).unwrap(), "wörld");
        let err = vocab.encode("hex").unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnknownChar {
                    ch: 'x',
                    position: 2
                }
            ),
            "{err}"
        );
        assert!(matches!(
            vocab.decode(&[99]),
            Err(Error::TokenOutOfRange { id: 99, .. })
        ));
        assert!(CharVocab::from_text("").is_err());
        assert!(CharVocab::from_chars("aba".chars()).is_err());
        let again = CharVocab::from_chars(vocab.to_string().chars()).unwrap();
        assert_eq!(again, vocab);
    }

    #[test]
    fn split_is_disjoint_and_batches_shift_by_one() {
        let text: String = (0..200)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let data = TextDataset::new(&text, 0.1).unwrap();
        assert_eq!(
            data.ids(Split::Train).len() + data.ids(Split::Validation).len(),
            200
        );
        assert_eq!(data.ids(Split::Validation).len(), 20);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (x, y) = data.batch(Split::Validation, 3, 19, &mut rng).unwrap();
        for i in 0..3 {
            for j in 0..18 {
                assert_eq!(x[[i, j + 1]], y[[i, j]]);
            }
        }
        assert!(data.batch(Split::Validation, 3, 20, &mut rng).is_err());
        assert!(TextDataset::new("", 0.1).is_err());
        assert!(TextDataset::new("a", 0.1).is_err());
        assert!(TextDataset::new("abc", 1.0).is_err());
        assert!(TextDataset::new("abc", -0.1).is_err());
        assert!(TextDataset::new("abc", f64::NAN).is_err());
    }

    #[test]
    fn a_zero_validation_fraction_trains_on_the_whole_text() {
        let data = TextDataset::new("abcdefghij", 0.0).unwrap();
        assert_eq!(data.ids(Split::Train).len(), 10);
        assert!(data.ids(Split::Validation).is_empty());
        assert_eq!(data.max_context(), 9);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(data.batch(Split::Train, 2, 9, &mut rng).is_ok());
        assert!(data.batch(Split::Validation, 1, 1, &mut rng).is_err());
    }

    #[test]
    fn addition_examples_are_reversed_sums_and_held_out_is_disjoint() {
        let task = AdditionTask::new(3).unwrap();
        assert_eq!(task.format(999, 999), "999+999=8991");
        assert_eq!(task.format(5, 7), "005+007=2100");
        assert_eq!(task.parse_answer(&task.answer(5, 7)), Some(12));
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let train = task.train_pairs(500, &mut rng).unwrap();
        let held = task.held_out_pairs(100, &mut rng).unwrap();
        assert!(train.iter().all(|&(a, b)| !task.is_held_out(a, b)));
        assert!(held.iter().all(|&(a, b)| task.is_held_out(a, b)));
        let fraction = (0..100_000u64)
            .filter(|&i| task.is_held_out(i / 1000, i % 1000))
            .count() as f64
            / 100_000.0;
        assert!((fraction - 0.02).abs() < 0.003, "{fraction}");
        let (ids, targets) = task.batch(&[(123, 489)]);
        let text = task.vocab().decode(ids.row(0).as_slice().unwrap()).unwrap();
        assert_eq!(text, "123+489=216");
        let answer: Vec<usize> = task.answer_targets().map(|j| targets[[0, j]]).collect();
        assert_eq!(task.vocab().decode(&answer).unwrap(), "2160");
    }

    #[test]
    fn exact_match_needs_every_answer_digit() {
        let task = AdditionTask::new(1).unwrap();
        let (_, targets) = task.batch(&[(3, 4), (9, 9)]);
        // Logits that put all mass on the right target everywhere.
        let mut logits = ndarray::Array3::<f64>::zeros((2, task.context(), 12));
        for ((i, j), &t) in targets.indexed_iter() {
            logits[[i, j, t]] = 1.0;
        }
        assert_eq!(task.count_exact(logits.view(), targets.view()).unwrap(), 2);
        // Spoil the last answer digit of the second row only.
        let j = task.answer_targets().end - 1;
        logits[[1, j, targets[[1, j]]]] = 0.0;
        logits[[1, j, 11]] = 2.0;
        assert_eq!(task.count_exact(logits.view(), targets.view()).unwrap(), 1);
        // The operand positions do not count.
        logits[[0, 0, 5]] = 9.0;
        assert_eq!(task.count_exact(logits.view(), targets.view()).unwrap(), 1);
    }
}
