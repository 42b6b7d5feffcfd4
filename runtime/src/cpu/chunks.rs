//! What generated rank-2 loop kernels need to split their rows across the fork-join pool: how
//! many chunks a kernel is worth, and a buffer that chunks write disjoint ranges of.
//!
//! A kernel split into `t` chunks gives chunk `c` rows `[c * rows / t, (c + 1) * rows / t)`;
//! stores and row reductions write those rows of their buffers, and column or whole
//! reductions write a partial of their own that the caller folds in chunk order afterwards,
//! so a result depends on the thread count but never on scheduling.

use std::marker::PhantomData;

use super::pool;

/// The least saving (in the units of the emitter's `split_saving`, about 0.025 ns each) for
/// which a loop kernel is split: about 0.8 us. Waking a worker and joining it costs 1 to 1.2 us
/// on the 2-core machine measured, but a kernel whose inputs come from GEMMs that were split
/// across cores gains more than its compute suggests (each core reads what it already holds):
/// the seed's training step still gains from splitting a kernel estimated at 40,000.
const MIN_SAVING: usize = 32_000;

/// How many chunks a loop kernel of `rows` rows runs in, given what splitting it saves in all
/// (`saving`, from the emitter's estimate per element times the elements): 1 when the pool has
/// one thread or the saving does not cover the fork-join, else one per thread but never more
/// than rows.
#[inline]
pub fn loop_chunks(rows: usize, saving: usize) -> usize {
    if rows < 2 || saving < MIN_SAVING {
        return 1;
    }
    pool::threads().min(rows)
}

/// A mutable slice that chunks running on several threads write disjoint ranges of.
///
/// Invariant: while a `Disjoint` lives, the slice it was made from is borrowed mutably by it,
/// so only slices handed out by [`Disjoint::range`] touch that memory.
pub struct Disjoint<'a, T> {
    ptr: *mut T,
    len: usize,
    _slice: PhantomData<&'a mut [T]>,
}

// SAFETY: a `Disjoint` is a `&mut [T]` whose parts go to different threads; sending or
// sharing it is sound when sending the elements is, and `range`'s contract keeps the parts
// from overlapping.
unsafe impl<T: Send> Send for Disjoint<'_, T> {}
// SAFETY: as above; `&Disjoint` only gives out elements through `range`.
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    /// Takes the slice for as long as the `Disjoint` lives.
    #[inline]
    pub fn new(slice: &'a mut [T]) -> Self {
        Disjoint {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _slice: PhantomData,
        }
    }

    /// The elements `lo..hi` (panics when that is not inside the slice).
    ///
    /// # Safety
    /// No two ranges alive at the same time overlap, on any thread.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn range(&self, lo: usize, hi: usize) -> &mut [T] {
        assert!(
            lo <= hi && hi <= self.len,
            "chunk range {lo}..{hi} outside a buffer of {}",
            self.len
        );
        // SAFETY: `lo..hi` is inside the slice `new` borrowed for 'a (checked above), and the
        // caller guarantees no other live range overlaps it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(lo), hi - lo) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fill_disjoint_rows() {
        let (rows, cols) = (7, 3);
        let mut buf = vec![0usize; rows * cols];
        let t = 3;
        let d = Disjoint::new(&mut buf);
        pool::run_chunks(t, &|c| {
            let (lo, hi) = (c * rows / t, (c + 1) * rows / t);
            // SAFETY: chunks get disjoint row ranges.
            let part = unsafe { d.range(lo * cols, hi * cols) };
            for (k, x) in part.iter_mut().enumerate() {
                *x = lo * cols + k + 1;
            }
        });
        assert_eq!(buf, (1..=rows * cols).collect::<Vec<_>>());
    }

    #[test]
    #[should_panic(expected = "outside a buffer of 4")]
    fn a_range_past_the_end_panics() {
        let mut buf = [0.0f32; 4];
        let d = Disjoint::new(&mut buf);
        // SAFETY: the only range taken.
        let _ = unsafe { d.range(2, 5) };
    }

    #[test]
    fn small_kernels_run_on_one_thread() {
        assert_eq!(loop_chunks(1, 1 << 30), 1);
        assert_eq!(loop_chunks(100, MIN_SAVING - 1), 1);
        let t = loop_chunks(3, 1 << 30);
        assert_eq!(t, pool::threads().min(3));
    }
}
