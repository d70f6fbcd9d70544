//! Reading a config back from a checkpoint's `config.<field>` metadata strings.

use std::collections::HashMap;
use std::str::FromStr;

use crate::{Error, Result};

/// The `config.*` entries of a checkpoint's metadata.
pub(crate) struct Meta<'m> {
    entries: &'m HashMap<String, String>,
}

impl<'m> Meta<'m> {
    pub(crate) fn new(entries: &'m HashMap<String, String>) -> Self {
        Self { entries }
    }

    /// The raw value of `config.<field>`, if present.
    pub(crate) fn text(&self, field: &str) -> Result<Option<&'m str>> {
        Ok(self
            .entries
            .get(&format!("config.{field}"))
            .map(String::as_str))
    }

    /// `config.<field>` parsed, if present.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] when present but unreadable.
    pub(crate) fn parse<T: FromStr>(&self, field: &str) -> Result<Option<T>> {
        match self.text(field)? {
            None => Ok(None),
            Some(raw) => raw.parse().map(Some).map_err(|_| {
                Error::Checkpoint(format!("unreadable metadata `config.{field}` = {raw:?}"))
            }),
        }
    }

    /// `config.<field>` parsed; required.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] when missing or unreadable.
    pub(crate) fn require<T: FromStr>(&self, field: &str) -> Result<T> {
        self.parse(field)?
            .ok_or_else(|| Error::Checkpoint(format!("missing metadata `config.{field}`")))
    }
}
