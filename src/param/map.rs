//! [`ParamMap`]: parameter values by dotted name, in order, for export and all-or-nothing
//! import.

use std::collections::HashMap;

use ndarray::ArrayD;

use super::Params;
use crate::{Error, Float, Result};

/// Parameter values under their dotted names, in insertion order (a model's visit order
/// when it comes from [`Params::export_params`]).
///
/// ```
/// use baregpt::layers::LayerNorm;
/// use baregpt::param::Params;
///
/// let mut ln = LayerNorm::<f64>::new(3)?;
/// let mut map = ln.export_params();
/// assert_eq!(map.names().collect::<Vec<_>>(), ["gamma", "beta"]);
/// map.insert("beta", ndarray::ArrayD::from_elem(vec![3], 0.5));
/// ln.import_params(&map)?;
/// assert_eq!(ln.beta().value[[2]], 0.5);
///
/// map.remove("gamma");
/// assert!(ln.import_params(&map).is_err()); // gamma is missing: nothing changes
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ParamMap<F> {
    entries: Vec<(String, ArrayD<F>)>,
    index: HashMap<String, usize>,
}

impl<F> Default for ParamMap<F> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<F> ParamMap<F> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the value under `name`, replacing (in place, keeping its position) any value
    /// already there, else appending; returns the replaced value.
    pub fn insert(&mut self, name: impl Into<String>, value: ArrayD<F>) -> Option<ArrayD<F>> {
        let name = name.into();
        match self.index.get(&name) {
            Some(&i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            None => {
                self.index.insert(name.clone(), self.entries.len());
                self.entries.push((name, value));
                None
            }
        }
    }

    /// The value under `name`.
    pub fn get(&self, name: &str) -> Option<&ArrayD<F>> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    /// The value under `name`, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut ArrayD<F>> {
        self.index.get(name).map(|&i| &mut self.entries[i].1)
    }

    /// Removes and returns the value under `name`; later entries keep their order.
    pub fn remove(&mut self, name: &str) -> Option<ArrayD<F>> {
        let i = self.index.remove(name)?;
        let (_, value) = self.entries.remove(i);
        for slot in self.index.values_mut() {
            if *slot > i {
                *slot -= 1;
            }
        }
        Some(value)
    }

    /// Whether `name` is in the map.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// `(name, value)` pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ArrayD<F>)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }
}

impl<F> IntoIterator for ParamMap<F> {
    type Item = (String, ArrayD<F>);
    type IntoIter = std::vec::IntoIter<(String, ArrayD<F>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<F, S: Into<String>> FromIterator<(S, ArrayD<F>)> for ParamMap<F> {
    fn from_iter<I: IntoIterator<Item = (S, ArrayD<F>)>>(iter: I) -> Self {
        let mut map = Self::new();
        for (name, value) in iter {
            map.insert(name, value);
        }
        map
    }
}

/// Checks that `map` can be imported into `model` as a whole: every parameter present with
/// its shape and finite values, no other name. Returns the first problem.
pub(super) fn check_import<F: Float, P: Params<F> + ?Sized>(
    model: &P,
    map: &ParamMap<F>,
) -> Result<()> {
    let mut first: Option<Error> = None;
    let mut matched = 0usize;
    model.for_each_param(&mut |name, p| {
        if first.is_some() {
            return;
        }
        let problem = match map.get(name) {
            None => Some("is missing from the map".to_owned()),
            Some(value) if value.shape() != p.value.shape() => Some(format!(
                "has shape {:?} in the map, expected {:?}",
                value.shape(),
                p.value.shape()
            )),
            Some(value) => {
                matched += 1;
                value
                    .iter()
                    .enumerate()
                    .find(|(_, v)| !v.is_finite())
                    .map(|(i, v)| format!("has a non-finite value {v} at flat index {i}"))
            }
        };
        if let Some(reason) = problem {
            first = Some(Error::ParamMismatch {
                name: name.to_owned(),
                reason,
            });
        }
    });
    if let Some(err) = first {
        return Err(err);
    }
    if matched != map.len() {
        let names = model.param_names();
        if let Some(extra) = map.names().find(|n| !names.iter().any(|m| m == n)) {
            return Err(Error::ParamMismatch {
                name: extra.to_owned(),
                reason: "is in the map but the model has no parameter of that name".into(),
            });
        }
    }
    Ok(())
}
