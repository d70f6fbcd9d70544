//! Scratch buffers that outlive a kernel call: each thread keeps the buffers its kernels
//! borrowed, so a kernel called once per layer and step allocates its scratch once per thread
//! instead of once per call.
//!
//! A buffer is lent for the length of a closure ([`with_scratch`]) and returned after it; a
//! kernel that borrows again inside that closure (or a task rayon runs on the same thread
//! while it waits) gets another buffer, so borrows never overlap. A buffer keeps the largest
//! length it was asked for, and a thread keeps as many buffers as it ever had lent at once
//! (one or two for the tiled attention), until the thread ends.

use std::any::Any;
use std::cell::RefCell;

thread_local! {
    /// This thread's idle buffers, each a `Vec<F>` for some element type `F`.
    static IDLE: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch slice of `len` elements of `F`, lent from this thread's idle buffers
/// (or allocated, the first time). The contents on entry are whatever an earlier borrow left:
/// `f` must write before it reads.
pub(crate) fn with_scratch<F: Copy + Default + 'static, R>(
    len: usize,
    f: impl FnOnce(&mut [F]) -> R,
) -> R {
    let mut buffer = IDLE
        .with(|idle| {
            let mut idle = idle.borrow_mut();
            let found = idle.iter().position(|b| b.is::<Vec<F>>())?;
            Some(idle.swap_remove(found))
        })
        .unwrap_or_else(|| Box::new(Vec::<F>::new()));
    let result = match buffer.downcast_mut::<Vec<F>>() {
        Some(values) => {
            if values.len() < len {
                values.resize(len, F::default());
            }
            f(&mut values[..len])
        }
        // Only `Vec<F>`s are taken above or made, so this is never reached; a fresh vector
        // keeps it from panicking.
        None => f(&mut vec![F::default(); len]),
    };
    IDLE.with(|idle| idle.borrow_mut().push(buffer));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The address of the buffer a borrow of `len` elements of `F` gets.
    fn address<F: Copy + Default + 'static>(len: usize) -> usize {
        with_scratch::<F, _>(len, |values| values.as_ptr() as usize)
    }

    #[test]
    fn a_buffer_is_reused_by_the_next_borrow_and_grows_to_the_largest() {
        let first = address::<f32>(1000);
        assert_eq!(address::<f32>(10), first);
        assert_eq!(address::<f32>(1000), first);
        with_scratch::<f32, _>(5000, |values| assert_eq!(values.len(), 5000));
        let grown = address::<f32>(5000);
        assert_eq!(address::<f32>(7), grown);
    }

    #[test]
    fn nested_borrows_get_distinct_buffers_and_types_do_not_mix() {
        with_scratch::<f64, _>(64, |outer| {
            outer.fill(1.0);
            with_scratch::<f64, _>(64, |inner| {
                inner.fill(2.0);
                assert_ne!(inner.as_ptr(), outer.as_ptr());
            });
            with_scratch::<f32, _>(64, |other| other.fill(3.0));
            assert!(outer.iter().all(|&v| v == 1.0));
        });
    }

    #[test]
    fn contents_persist_between_borrows() {
        with_scratch::<u32, _>(4, |values| values.copy_from_slice(&[1, 2, 3, 4]));
        with_scratch::<u32, _>(4, |values| assert_eq!(values, [1, 2, 3, 4]));
    }
}
