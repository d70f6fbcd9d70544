//! The crate's one error type.
//!
//! Every public function that can be handed bad input returns [`Result`]; nothing panics on a
//! wrong shape, an out-of-range id or a call out of order. Each variant names the layer (or
//! kernel) that refused the input and, where shapes are involved, the expected and actual
//! shapes.

use std::fmt;

/// Shorthand for `std::result::Result<T, baregpt::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `baregpt`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An array has the wrong shape.
    #[error("{layer}: {what} has shape {actual:?}, expected {expected}")]
    ShapeMismatch {
        /// The layer or kernel that checked the shape (for example `"LayerNorm"`).
        layer: &'static str,
        /// Which argument was wrong (for example `"input"` or `"dy"`).
        what: &'static str,
        /// The expected shape; `*` stands for any size.
        expected: ExpectedShape,
        /// The shape that was passed.
        actual: Vec<usize>,
    },
    /// A token id is not below the vocabulary size.
    #[error(
        "{layer}: token id {id} at (b, t) = {position:?} is out of range for vocabulary size {vocab_size}"
    )]
    TokenOutOfRange {
        /// The layer that looked the id up.
        layer: &'static str,
        /// The offending id.
        id: usize,
        /// Its `(b, t)` position in the id array.
        position: (usize, usize),
        /// The vocabulary size; valid ids are `0..vocab_size`.
        vocab_size: usize,
    },
    /// A target class is not below the number of classes.
    #[error(
        "{layer}: target {target} at (b, t) = {position:?} is out of range for {classes} classes"
    )]
    TargetOutOfRange {
        /// The loss that read the target.
        layer: &'static str,
        /// The offending target.
        target: usize,
        /// Its `(b, t)` position in the target array.
        position: (usize, usize),
        /// The number of classes; valid targets are `0..classes`.
        classes: usize,
    },
    /// A sequence is longer than the model's context (or is empty).
    #[error("{layer}: sequence length {len} is not in 1..={context}")]
    SequenceLength {
        /// The layer that refused the sequence.
        layer: &'static str,
        /// The length passed.
        len: usize,
        /// The longest length accepted.
        context: usize,
    },
    /// `backward` was called before any `forward`.
    #[error("{layer}: backward called before forward (nothing cached)")]
    BackwardBeforeForward {
        /// The layer whose cache was empty.
        layer: &'static str,
    },
    /// A configuration that cannot build a layer or model.
    #[error("{layer}: invalid configuration: {reason}")]
    InvalidConfig {
        /// The layer or component being configured.
        layer: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A named parameter does not match what was expected (missing, extra or reshaped).
    #[error("parameter `{name}`: {reason}")]
    ParamMismatch {
        /// The dotted parameter name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A gradient contains NaN or infinity.
    #[error("parameter `{name}` has a non-finite gradient")]
    NonFiniteGradient {
        /// The dotted name of the first parameter found with a non-finite gradient.
        name: String,
    },
    /// A checkpoint file could not be read or does not match the model.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A checkpoint was written for a model of another shape.
    #[error(
        "checkpoint: config field `{field}` is {checkpoint} in the checkpoint but {model} in the model"
    )]
    ConfigMismatch {
        /// The [`GptConfig`](crate::GptConfig) field that differs (for example `"d_model"`).
        field: &'static str,
        /// The value the model has.
        model: String,
        /// The value the checkpoint records.
        checkpoint: String,
    },
    /// A stored tensor has another element type than the one asked for.
    #[error("checkpoint: tensor `{name}` is stored as {found}, expected {expected}")]
    DtypeMismatch {
        /// The tensor's name in the file.
        name: String,
        /// The element type asked for (`"f32"` or `"f64"`).
        expected: &'static str,
        /// The element type found in the file.
        found: String,
    },
    /// A Hugging Face model folder (`config.json`, safetensors, its index) that cannot be
    /// read or does not describe a model baregpt builds.
    #[error("{file}: {reason}")]
    Hf {
        /// The file (for example `"config.json"` or `"model-00001-of-00002.safetensors"`).
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Hugging Face `config.json` option that baregpt does not implement (refused rather
    /// than ignored, since the model would compute something else).
    #[error("config.json: `{field}` = {value} is not supported: {reason}")]
    Unsupported {
        /// The config field (for example `"rope_scaling"` or `"hidden_act"`).
        field: String,
        /// Its value in the file, as JSON.
        value: String,
        /// What baregpt supports instead.
        reason: String,
    },
    /// A `tokenizer.json` that cannot be read, or a text or ids it cannot encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A character that is not in the vocabulary.
    #[error("character {ch:?} at position {position} is not in the vocabulary")]
    UnknownChar {
        /// The character.
        ch: char,
        /// Its index (in characters) in the text being encoded.
        position: usize,
    },
    /// An array that must not be empty has an axis of length zero.
    #[error("{layer}: {what} has shape {shape:?}, with no {axis}; {reason}")]
    EmptyInput {
        /// The layer or kernel that refused it.
        layer: &'static str,
        /// Which argument (for example `"logits"`).
        what: &'static str,
        /// Its shape.
        shape: Vec<usize>,
        /// What is missing (for example `"positions (B·T = 0)"`).
        axis: &'static str,
        /// Why it is needed.
        reason: &'static str,
    },
    /// A size that is refused before anything is allocated: one array (or file buffer) would
    /// take more than [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES), or its size overflows
    /// `usize`.
    #[error(
        "{layer}: {what} of shape {shape:?} needs {}, over the per-allocation limit of {limit} bytes",
        bytes_text(*bytes)
    )]
    TooLarge {
        /// The layer, kernel or function that refused the size.
        layer: &'static str,
        /// What would have been allocated (for example `"weight"` or `"probs"`).
        what: &'static str,
        /// Its shape (element counts per axis).
        shape: Vec<usize>,
        /// Its size in bytes, `None` when that overflows `usize`.
        bytes: Option<usize>,
        /// The limit, [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
        limit: usize,
    },
    /// A gradient so large that the optimizer's second moment (its square) would overflow the
    /// float type.
    #[error(
        "parameter `{name}` has a gradient of magnitude {magnitude:e} after clipping (plus `λ·|p|` under L2 decay); its square overflows {float} (the largest usable is {limit:e}): clip the gradients or scale the loss"
    )]
    GradientTooLarge {
        /// The dotted name of the parameter with the largest gradient.
        name: String,
        /// The largest gradient magnitude (after clipping, plus `λ·|p|` under L2 decay), in
        /// `f64`.
        magnitude: f64,
        /// The largest magnitude accepted.
        limit: f64,
        /// `"f32"` or `"f64"`.
        float: &'static str,
    },
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn bytes_text(bytes: Option<usize>) -> String {
    match bytes {
        Some(b) => format!("{b} bytes"),
        None => "more than usize::MAX bytes".to_owned(),
    }
}

/// An expected shape in an error message: a size per axis, `None` for "any size".
#[derive(Clone, PartialEq, Eq)]
pub struct ExpectedShape(pub Vec<Option<usize>>);

impl fmt::Display for ExpectedShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, dim) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match dim {
                Some(n) => write!(f, "{n}")?,
                None => f.write_str("*")?,
            }
        }
        f.write_str("]")
    }
}

impl fmt::Debug for ExpectedShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Checks `actual` against `expected` (`None` matches any size, and the ranks must agree).
///
/// # Errors
/// [`Error::ShapeMismatch`] naming `layer` and `what` when they differ.
pub fn check_shape(
    layer: &'static str,
    what: &'static str,
    actual: &[usize],
    expected: &[Option<usize>],
) -> Result<()> {
    let matches = actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|(a, e)| e.is_none_or(|e| e == *a));
    if matches {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            layer,
            what,
            expected: ExpectedShape(expected.to_vec()),
            actual: actual.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_message_names_layer_and_shapes() {
        let err =
            check_shape("LayerNorm", "input", &[2, 3, 5], &[None, None, Some(4)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LayerNorm: input has shape [2, 3, 5], expected [*, *, 4]"
        );
        assert!(check_shape("LayerNorm", "input", &[2, 3, 4], &[None, None, Some(4)]).is_ok());
        assert!(check_shape("LayerNorm", "input", &[3, 4], &[None, None, Some(4)]).is_err());
    }
}
