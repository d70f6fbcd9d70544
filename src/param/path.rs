//! [`ParamPath`]: the dotted name under construction while a visit descends.

use std::fmt::Write as _;

/// The dotted name under construction while a visit descends into nested layers.
///
/// It is one reusable string buffer: descending pushes a segment, returning pops it, so a
/// visit allocates nothing once the buffer has grown to the longest name.
#[derive(Clone, Debug, Default)]
pub struct ParamPath {
    buf: String,
}

impl ParamPath {
    /// An empty path (the root of a visit).
    pub fn new() -> Self {
        Self::default()
    }

    /// A path that starts with `prefix` (for visiting a layer that lives inside something
    /// else).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            buf: prefix.to_owned(),
        }
    }

    /// The dotted name so far.
    pub fn as_str(&self) -> &str {
        &self.buf
    }

    /// Runs `f` with `segment` appended (after a `.` unless the path is empty), then removes it.
    pub fn scoped<R>(&mut self, segment: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        let len = self.buf.len();
        if len > 0 {
            self.buf.push('.');
        }
        self.buf.push_str(segment);
        let result = f(self);
        self.buf.truncate(len);
        result
    }

    /// Like [`ParamPath::scoped`] with a numeric segment (`blocks.3`).
    pub fn scoped_index<R>(&mut self, index: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        let len = self.buf.len();
        if len > 0 {
            self.buf.push('.');
        }
        // Writing into a String cannot fail.
        let _ = write!(self.buf, "{index}");
        let result = f(self);
        self.buf.truncate(len);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_paths_nest_and_unwind() {
        let mut path = ParamPath::new();
        let inner = path.scoped("blocks", |p| {
            p.scoped_index(3, |p| p.scoped("w_q", |p| p.as_str().to_owned()))
        });
        assert_eq!(inner, "blocks.3.w_q");
        assert_eq!(path.as_str(), "");
    }
}
