//! The safetensors files of a Hugging Face folder: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists, read whole and indexed by tensor name.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

use crate::limits::MAX_ALLOC_BYTES;
use crate::{Error, Result};

/// The single-file checkpoint's name.
pub const MODEL_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

fn hf_error(file: &str, reason: impl Into<String>) -> Error {
    Error::Hf {
        file: file.to_owned(),
        reason: reason.into(),
    }
}

/// Reads `dir/name` whole, refusing a file over the allocation limit before reading it.
pub fn read_file(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let io = |e: std::io::Error| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", path.display()),
        ))
    };
    let len = fs::metadata(&path).map_err(io)?.len();
    if usize::try_from(len).map_or(true, |n| n > MAX_ALLOC_BYTES) {
        return Err(Error::TooLarge {
            layer: "hf",
            what: "a file",
            shape: vec![usize::try_from(len).unwrap_or(usize::MAX)],
            bytes: usize::try_from(len).ok(),
            limit: MAX_ALLOC_BYTES,
        });
    }
    fs::read(&path).map_err(io)
}

/// The bytes of every safetensors file of a folder, by file name.
pub struct Shards {
    files: Vec<(String, Vec<u8>)>,
    /// The index's tensor → file map, when the checkpoint is sharded.
    weight_map: Option<BTreeMap<String, String>>,
}

impl Shards {
    /// Reads `dir/model.safetensors`, or else the index and every shard it names.
    ///
    /// # Errors
    /// [`Error::Io`] when neither file exists or one cannot be read; [`Error::Hf`] when the
    /// index is not JSON with a `weight_map` of tensor names to file names inside `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        if dir.join(MODEL_FILE).is_file() {
            return Ok(Self {
                files: vec![(MODEL_FILE.to_owned(), read_file(dir, MODEL_FILE)?)],
                weight_map: None,
            });
        }
        if !dir.join(INDEX_FILE).is_file() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} holds neither {MODEL_FILE} nor {INDEX_FILE}",
                    dir.display()
                ),
            )));
        }
        let index = read_file(dir, INDEX_FILE)?;
        let value: serde_json::Value = serde_json::from_slice(&index)
            .map_err(|e| hf_error(INDEX_FILE, format!("is not valid JSON: {e}")))?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| hf_error(INDEX_FILE, "has no `weight_map` object"))?;
        let mut weight_map = BTreeMap::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .filter(|f| is_plain_file_name(f))
                .ok_or_else(|| {
                    hf_error(
                        INDEX_FILE,
                        format!(
                            "`weight_map[{tensor:?}]` = {file} is not a file name in the folder"
                        ),
                    )
                })?;
            weight_map.insert(tensor.clone(), file.to_owned());
        }
        let mut names: Vec<&String> = weight_map.values().collect();
        names.sort();
        names.dedup();
        let files = names
            .into_iter()
            .map(|name| Ok((name.clone(), read_file(dir, name)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            files,
            weight_map: Some(weight_map),
        })
    }

    /// Every tensor of every file by name, with the file it is in.
    ///
    /// # Errors
    /// [`Error::Hf`] naming the file when one is not a readable safetensors file, a tensor is
    /// in two files, or (sharded) a tensor is not where the index says.
    pub fn index(&self) -> Result<Tensors<'_>> {
        let mut tensors = HashMap::new();
        for (file, bytes) in &self.files {
            let parsed = SafeTensors::deserialize(bytes)
                .map_err(|e| hf_error(file, format!("is not a readable safetensors file: {e}")))?;
            for (name, view) in parsed.tensors() {
                if let Some(map) = &self.weight_map
                    && map.get(&name) != Some(file)
                {
                    return Err(hf_error(
                        file,
                        format!(
                            "holds tensor `{name}`, which {INDEX_FILE} places in {}",
                            map.get(&name).map_or("no file", String::as_str)
                        ),
                    ));
                }
                if let Some((other, _)) = tensors.insert(name.clone(), (file.as_str(), view)) {
                    return Err(hf_error(
                        file,
                        format!("tensor `{name}` is also in {other}"),
                    ));
                }
            }
        }
        if let Some(map) = &self.weight_map
            && let Some((name, file)) = map.iter().find(|(name, _)| !tensors.contains_key(*name))
        {
            return Err(hf_error(
                file,
                format!("lacks tensor `{name}`, which {INDEX_FILE} places there"),
            ));
        }
        Ok(Tensors { tensors })
    }
}

/// A file name with no directory part (so that an index cannot point outside the folder).
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\\')
}

/// The tensors of a folder's files by name.
pub struct Tensors<'a> {
    tensors: HashMap<String, (&'a str, TensorView<'a>)>,
}

impl<'a> Tensors<'a> {
    /// The tensor `name` and the file it is in.
    pub fn get(&self, name: &str) -> Option<&(&'a str, TensorView<'a>)> {
        self.tensors.get(name)
    }

    /// Every tensor name with its file, sorted by name.
    pub fn names(&self) -> Vec<(&str, &'a str)> {
        let mut names: Vec<(&str, &'a str)> = self
            .tensors
            .iter()
            .map(|(name, (file, _))| (name.as_str(), *file))
            .collect();
        names.sort();
        names
    }
}
