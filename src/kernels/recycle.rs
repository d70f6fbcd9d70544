//! Large arrays recycled from one training step to the next.
//!
//! A step makes the same large temporaries every time: each layer's `(N, C)` output, the
//! gradient it hands back, the MLP's `(N, hidden)` gradients, attention's projections. Left
//! to the allocator, every one of them is a fresh `mmap` of megabytes whose pages fault in on
//! first touch, and is unmapped when dropped. Instead, the crate takes its large outputs from
//! here ([`array`], [`zeros`], [`vec`]) and hands back the large arrays it is done with
//! ([`give`]), so a warmed step reuses last step's memory.
//!
//! Only buffers of at least [`MIN_BYTES`] are kept (smaller ones are cheap for the
//! allocator); a request takes the smallest idle buffer whose capacity is between its
//! length and twice it, so a small request never pins a much larger buffer; at most
//! [`MAX_IDLE`] buffers wait here, the oldest freed first past that. The idle buffers are
//! shared by all threads. An array a user keeps, or drops, simply never comes back: what
//! this module holds is bounded by what the crate hands back itself.
//!
//! A recycled buffer holds stale values: [`array`] and [`vec`] are for outputs that are
//! written whole before they are read (a product with `beta = 0`, an element-wise map);
//! [`zeros`] clears it first.

use std::any::Any;
use std::sync::{Mutex, MutexGuard, PoisonError};

use ndarray::{Array, Dimension, IntoDimension};

use crate::Float;

/// The smallest buffer, in bytes, that is recycled.
pub(crate) const MIN_BYTES: usize = 1 << 20;

/// The most idle buffers kept; past it the oldest is freed.
pub(crate) const MAX_IDLE: usize = 48;

/// The idle buffers, oldest first, each a `Vec<F>` for some element type `F`.
static IDLE: Mutex<Vec<Box<dyn Any + Send>>> = Mutex::new(Vec::new());

/// The idle list, locked. A panic while it was held left it consistent (every operation on
/// it is a single push or remove), so a poisoned lock is used as it is.
fn idle() -> MutexGuard<'static, Vec<Box<dyn Any + Send>>> {
    IDLE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a buffer of `len` elements of `F` is large enough to recycle.
fn recycled<F>(len: usize) -> bool {
    len.saturating_mul(size_of::<F>()) >= MIN_BYTES
}

/// A vector of `len` elements: a recycled buffer when one of capacity `len ..= 2·len` is
/// idle (its values stale), otherwise a new zeroed one. Callers write every element before
/// reading it.
pub(crate) fn vec<F: Float>(len: usize) -> Vec<F> {
    let found = recycled::<F>(len)
        .then(|| {
            let mut idle = idle();
            let fits = |b: &Box<dyn Any + Send>| {
                b.downcast_ref::<Vec<F>>()
                    .map(Vec::capacity)
                    .filter(|&cap| cap >= len && cap / 2 <= len)
            };
            let best = (0..idle.len())
                .filter_map(|i| fits(&idle[i]).map(|cap| (cap, i)))
                .min()?;
            Some(idle.remove(best.1))
        })
        .flatten()
        .and_then(|b| b.downcast::<Vec<F>>().ok());
    poisoned(match found {
        Some(mut values) => {
            // Within the capacity: neither shrinking nor growing reallocates.
            values.resize(len, F::zero());
            *values
        }
        None => vec![F::zero(); len],
    })
}

/// An array of `shape` from [`vec`]: standard layout, values stale when recycled. For
/// outputs written whole before they are read.
pub(crate) fn array<F: Float, Sh: IntoDimension>(shape: Sh) -> Array<F, Sh::Dim> {
    let shape = shape.into_dimension();
    let values = vec(shape.size());
    match Array::from_shape_vec(shape, values) {
        Ok(array) => array,
        Err(e) => unreachable!("a vector of the shape's size fills it: {e}"),
    }
}

/// An array of `shape` filled with zeros, on a recycled buffer when one is idle.
pub(crate) fn zeros<F: Float, Sh: IntoDimension>(shape: Sh) -> Array<F, Sh::Dim> {
    let mut array = array(shape);
    super::elementwise::fill_zero(&mut array);
    array
}

/// Hands `array`'s buffer back for a later [`vec`], [`array`] or [`zeros`] (any shape, any
/// layout: the whole allocation is kept); small buffers are simply freed.
pub(crate) fn give<F: Float, D: Dimension>(array: Array<F, D>) {
    give_vec(array.into_raw_vec_and_offset().0);
}

/// Puts `new` in `slot` and [gives](give) back what was there: `x = f(&x)` for a pass whose
/// input is spent.
pub(crate) fn replace<F: Float, D: Dimension>(slot: &mut Array<F, D>, new: Array<F, D>) {
    give(std::mem::replace(slot, new));
}

/// [`give`] for a vector.
pub(crate) fn give_vec<F: Float>(values: Vec<F>) {
    if !recycled::<F>(values.capacity()) {
        return;
    }
    let evicted = {
        let mut idle = idle();
        idle.push(Box::new(values));
        (idle.len() > MAX_IDLE).then(|| idle.remove(0))
    };
    // The oldest buffer, if any, is freed after the lock is released.
    drop(evicted);
}

/// In this crate's unit tests: while set, every vector [`vec`] hands out (recycled or new) is
/// filled with NaN first, so that a test can show that no output is read before it is
/// written.
#[cfg(test)]
pub(crate) static POISON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Held by the unit tests that set [`POISON`] or look at which buffer they get, so that they
/// do not run at the same time.
#[cfg(test)]
pub(crate) static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// [`EXCLUSIVE`], locked (a test that failed while holding it does not stop the others).
#[cfg(test)]
pub(crate) fn exclusive() -> MutexGuard<'static, ()> {
    EXCLUSIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `values`, filled with NaN while [`POISON`] is set (unit tests only).
fn poisoned<F: Float>(values: Vec<F>) -> Vec<F> {
    #[cfg(test)]
    let values = {
        let mut values = values;
        if POISON.load(std::sync::atomic::Ordering::Relaxed) {
            values.fill(F::nan());
        }
        values
    };
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Elements of `f32` in one recycled megabyte.
    const MIB_F32: usize = MIN_BYTES / 4;

    /// Tests share the idle list with every other test in the binary, so each uses a length
    /// no other test asks for and checks only its own buffers.
    fn address(values: &[f32]) -> usize {
        values.as_ptr() as usize
    }

    #[test]
    fn a_given_buffer_is_taken_again_with_its_old_values() {
        let _only_us = exclusive();
        let len = MIB_F32 + 11;
        let mut a = vec::<f32>(len);
        a.fill(7.0);
        let at = address(&a);
        give_vec(a);
        let again = vec::<f32>(len);
        assert_eq!(address(&again), at);
        assert!(again.iter().all(|&v| v == 7.0), "stale values are kept");
        give_vec(again);
        let cleared = zeros::<f32, _>(len);
        assert!(cleared.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn a_request_never_takes_a_buffer_twice_its_size_or_too_small() {
        let _only_us = exclusive();
        let len = 3 * MIB_F32 + 13;
        let big = vec::<f32>(2 * len + 2);
        let at = address(&big);
        give_vec(big);
        let small = vec::<f32>(len);
        assert_ne!(
            address(&small),
            at,
            "capacity over twice the length is not taken"
        );
        let larger = vec::<f32>(2 * len + 3);
        assert_ne!(address(&larger), at, "too small a buffer is not taken");
        let fits = vec::<f32>(2 * len + 1);
        assert_eq!(address(&fits), at);
        assert_eq!(fits.len(), 2 * len + 1);
    }

    #[test]
    fn small_buffers_and_other_types_are_not_mixed_in() {
        let _only_us = exclusive();
        let small = vec::<f32>(100);
        give_vec(small);
        let len = 5 * MIB_F32 + 17;
        let f64s = vec::<f64>(len);
        let at = f64s.as_ptr() as usize;
        give_vec(f64s);
        let f32s = vec::<f32>(2 * len);
        assert_ne!(address(&f32s), at, "an f64 buffer is not lent as f32");
        let again = vec::<f64>(len);
        assert_eq!(again.as_ptr() as usize, at);
    }

    #[test]
    fn the_idle_list_is_bounded() {
        let _only_us = exclusive();
        let len = 7 * MIB_F32 / 8 + MIB_F32 / 4 + 19;
        for _ in 0..MAX_IDLE + 5 {
            give_vec(vec![0.0f32; len]);
        }
        assert!(idle().len() <= MAX_IDLE);
    }
}
