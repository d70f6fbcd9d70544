//! [`Tokenizer`]: a Hugging Face `tokenizer.json` (GPT-2's byte-level BPE, Llama's
//! SentencePiece-style BPE, or any other the `tokenizers` crate reads), with the errors and
//! id type of this crate.

use std::path::Path;

use crate::{Error, Result};

/// A `tokenizer.json`, read by the Hugging Face `tokenizers` crate: encodes text to the ids a
/// pretrained model was trained on and decodes ids back, as Python's
/// `tokenizers.Tokenizer` does with the same file.
///
/// ```no_run
/// use baregpt::hf::Tokenizer;
///
/// let tokenizer = Tokenizer::from_file("gpt2/tokenizer.json")?;
/// let ids = tokenizer.encode("Hello, world!", false)?;
/// assert_eq!(tokenizer.decode(&ids, false)?, "Hello, world!");
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{what}: {e}"))
}

impl Tokenizer {
    /// Reads a `tokenizer.json` file.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read; [`Error::Tokenizer`] when it is not a
    /// tokenizer the `tokenizers` crate reads.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            ))
        })?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Tokenizer(reason) => Error::Tokenizer(format!("{}: {reason}", path.display())),
            other => other,
        })
    }

    /// Parses the contents of a `tokenizer.json`.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] when the bytes are not a tokenizer the `tokenizers` crate reads.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        // The tokenizers crate re-parses parts of the file with `unwrap` (a malformed
        // `decoder` panics inside it): the JSON is checked here first, and a panic that still
        // escapes is turned into an error.
        serde_json::from_slice::<serde_json::Value>(bytes)
            .map_err(|e| error("not a readable tokenizer.json (invalid JSON)", e))?;
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|_| {
                error(
                    "not a readable tokenizer.json",
                    "the tokenizers crate panicked",
                )
            })?;
        let inner = parsed.map_err(|e| error("not a readable tokenizer.json", e))?;
        Ok(Self { inner })
    }

    /// The number of ids, added (special) tokens included: every id `encode` returns is below
    /// it.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token (for example `"<|endoftext|>"`), if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<usize> {
        self.inner.token_to_id(token).map(|id| id as usize)
    }

    /// The ids of `text`; `add_special_tokens` adds what the tokenizer's post-processor adds
    /// (for example Llama's `<s>`).
    ///
    /// # Errors
    /// [`Error::Tokenizer`] when the tokenizer cannot encode the text (for example a token
    /// missing from a vocabulary without an unknown token).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<usize>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| error("cannot encode the text", e))?;
        Ok(encoding.get_ids().iter().map(|&id| id as usize).collect())
    }

    /// The text of `ids`; `skip_special_tokens` leaves out special tokens.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] when an id is not below [`Tokenizer::vocab_size`] (which the
    /// `tokenizers` crate would silently skip); [`Error::Tokenizer`] when decoding fails.
    pub fn decode(&self, ids: &[usize], skip_special_tokens: bool) -> Result<String> {
        let vocab = self.vocab_size();
        if let Some(position) = ids.iter().position(|&id| id >= vocab) {
            return Err(Error::TokenOutOfRange {
                layer: "Tokenizer",
                id: ids[position],
                position: (0, position),
                vocab_size: vocab,
            });
        }
        // Below the vocabulary size, which the tokenizers crate keeps in a u32.
        let ids: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| error("cannot decode the ids", e))
    }

    /// Writes the tokenizer as a `tokenizer.json` (compact JSON).
    ///
    /// # Errors
    /// [`Error::Tokenizer`] when it cannot be serialised; [`Error::Io`] when the file cannot
    /// be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let text = self
            .inner
            .to_string(false)
            .map_err(|e| error("cannot serialise the tokenizer", e))?;
        crate::checkpoint::write_atomically(path.as_ref(), text.as_bytes())
    }
}
