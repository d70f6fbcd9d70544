//! What `sample` and `inspect` both do first: load a checkpoint with its vocabulary, and turn
//! a prompt into ids, with messages that say what to do.

use std::path::Path;

use baregpt::checkpoint::{self, Extras};
use baregpt::data::CharVocab;
use baregpt::{Error, Gpt};

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
