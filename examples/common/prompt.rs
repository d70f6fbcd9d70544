//! What `sample` and `inspect` share: their sampling options, loading a checkpoint with its
//! vocabulary, and turning a prompt into ids, with messages that say what to do.

// Each example that includes this module uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use baregpt::checkpoint::{self, Extras};
use baregpt::data::CharVocab;
use baregpt::generate::SampleOptions;
use baregpt::{Error, Gpt};

/// How generation draws: the options `sample` and `inspect` share.
#[derive(clap::Args, Debug)]
pub struct Sampling {
    /// Sampling temperature (> 0); lower is more conservative.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample only among the k most likely characters (0: all of them).
    #[arg(long, default_value_t = 20)]
    pub top_k: usize,
    /// Seed of the sampler; the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl Sampling {
    /// The options, checked.
    pub fn options(&self) -> Result<SampleOptions, String> {
        let options = SampleOptions {
            temperature: self.temperature,
            top_k: (self.top_k > 0).then_some(self.top_k),
        };
        options.validate().map_err(|e| e.to_string())?;
        Ok(options)
    }
}

/// The character-level Shakespeare model shipped in the repository (models/shakespeare/).
pub const BUNDLED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/shakespeare/model.safetensors"
);

/// `given`, else the bundled Shakespeare model, saying so on stderr.
pub fn checkpoint_or_bundled(given: Option<&Path>) -> PathBuf {
    match given {
        Some(path) => path.to_path_buf(),
        None => {
            eprintln!(
                "using the bundled Shakespeare model {BUNDLED} (models/shakespeare/README.md; \
                 pass --checkpoint FILE for your own)"
            );
            PathBuf::from(BUNDLED)
        }
    }
}

/// A model, its checkpoint's extras and its vocabulary, loaded from `path`.
pub fn load(path: &Path) -> Result<(Gpt<f32>, Extras<f32>, CharVocab), String> {
    let (model, extras) = checkpoint::load::<f32>(path).map_err(|e| match e {
        Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => format!(
            "no checkpoint at {} (train one first: cargo run --release --example train)",
            path.display()
        ),
        other => format!("cannot load {}: {other}", path.display()),
    })?;
    let vocab = extras.vocab.clone().ok_or_else(|| {
        format!(
            "{} has no vocabulary, so its ids cannot be turned into text",
            path.display()
        )
    })?;
    Ok((model, extras, vocab))
}

/// The prompt: `given`, else the one `train` stored in the checkpoint; with its ids.
pub fn encode(
    given: Option<&str>,
    extras: &Extras<f32>,
    vocab: &CharVocab,
) -> Result<(String, Vec<usize>), String> {
    let prompt = match (given, extras.metadata.get("sample_prompt")) {
        (Some(p), _) => p.to_owned(),
        (None, Some(p)) => p.clone(),
        (None, None) => return Err("no --prompt given and none stored in the checkpoint".into()),
    };
    if prompt.is_empty() {
        return Err("the prompt is empty: give at least one character with --prompt".into());
    }
    let ids = vocab.encode(&prompt).map_err(|e| match e {
        Error::UnknownChar { ch, position } => format!(
            "the prompt has {ch:?} at position {position}, which the model never saw; its \
             vocabulary is {:?}",
            vocab.to_string()
        ),
        other => other.to_string(),
    })?;
    Ok((prompt, ids))
}
