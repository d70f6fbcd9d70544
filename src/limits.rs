//! Size limits: what one allocation may be.
//!
//! Every size that comes from the caller (a constructor's dimensions, a key/value cache's batch
//! and capacity, a kernel's output computed from its inputs' shapes, a generation length, a
//! batch drawn from a data set, a checkpoint's buffer) is multiplied out with checked
//! arithmetic and compared with [`MAX_ALLOC_BYTES`] *before* anything is allocated. A size over
//! the limit, or one whose byte count overflows `usize`, is [`Error::TooLarge`]; nothing has
//! been allocated or changed.
//!
//! The limit is per allocation, not per process: a model of many tensors may take more in
//! total (a `Gpt` is also refused when its parameters together exceed the limit, because a
//! checkpoint serialises them into one buffer). Memory the machine does not have can still
//! make an allocation under the limit fail, which Rust turns into an abort; the limit only
//! guarantees that an absurd size is an error rather than a panic or an abort.

use crate::{Error, Result};

/// The largest allocation, in bytes, that any one array or buffer built by the crate may take:
/// 2³⁶ bytes (64 GiB). GPT-2 small's largest tensor is about 150 MB.
pub const MAX_ALLOC_BYTES: usize = 1 << 36;

/// The byte size of an array of `shape` with elements of `elem` bytes, if it fits in `usize`.
pub fn bytes_of(shape: &[usize], elem: usize) -> Option<usize> {
    shape.iter().try_fold(elem, |acc, &n| acc.checked_mul(n))
}

/// Checks that an array of `shape` with elements of type `T` may be allocated.
///
/// # Errors
/// [`Error::TooLarge`] naming `layer` and `what` when its size overflows `usize` or exceeds
/// [`MAX_ALLOC_BYTES`].
pub fn check_alloc<T>(layer: &'static str, what: &'static str, shape: &[usize]) -> Result<()> {
    // A zero-element array allocates nothing, but its other axes still count: an array of
    // shape (2^40, 2^40, 0) is refused rather than passed on to code that multiplies them.
    let nonzero: Vec<usize> = shape.iter().map(|&n| n.max(1)).collect();
    let bytes = bytes_of(shape, size_of::<T>().max(1));
    let fits = bytes_of(&nonzero, 1).is_some() && bytes.is_some_and(|b| b <= MAX_ALLOC_BYTES);
    if fits {
        Ok(())
    } else {
        Err(Error::TooLarge {
            layer,
            what,
            shape: shape.to_vec(),
            bytes,
            limit: MAX_ALLOC_BYTES,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_and_overflow_are_refused() {
        assert!(check_alloc::<f32>("t", "x", &[1 << 10, 1 << 10]).is_ok());
        // Exactly at the limit is allowed; one more row is not.
        assert!(check_alloc::<f32>("t", "x", &[1 << 17, 1 << 17]).is_ok());
        assert!(check_alloc::<f32>("t", "x", &[(1 << 17) + 1, 1 << 17]).is_err());
        assert!(check_alloc::<f32>("t", "x", &[usize::MAX, 2]).is_err());
        assert!(check_alloc::<f32>("t", "x", &[1 << 40, 1 << 40, 0]).is_err());
        assert!(check_alloc::<f32>("t", "x", &[1 << 20, 0]).is_ok());
        let err = check_alloc::<f64>("Linear", "weight", &[1 << 20, 1 << 20]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Linear: weight of shape [1048576, 1048576] needs 8796093022208 bytes, over the \
             per-allocation limit of 68719476736 bytes"
        );
    }
}
