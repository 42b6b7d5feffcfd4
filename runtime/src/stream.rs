//! The random stream of a model: the seed its methods' draws are keyed by and the number of
//! calls that drew so far. A call takes the next counter value; its draws are the Philox
//! blocks of that counter (`tensor_fn_kernels::rng`), so a stream is a pair of numbers that a
//! checkpoint saves and a resumed run restores, not a generator state.

use std::sync::atomic::{AtomicU64, Ordering};

/// A model's random stream (one per model value; see the module doc).
///
/// Atomic so that `&self` methods draw too and a model stays `Sync`: two threads calling one
/// model at once get distinct calls, in the order they took them.
pub struct RandomStream {
    seed: AtomicU64,
    calls: AtomicU64,
}

impl RandomStream {
    /// The seed of a model nobody seeded: runs are reproducible by default.
    pub const DEFAULT_SEED: u64 = 0x5EED_0F7E_450F_0000;

    /// A stream at `seed`, after `calls` calls.
    pub fn new(seed: u64, calls: u64) -> Self {
        RandomStream {
            seed: AtomicU64::new(seed),
            calls: AtomicU64::new(calls),
        }
    }

    /// Restarts at `seed`, before any call.
    pub fn reseed(&self, seed: u64) {
        self.set(seed, 0);
    }

    /// Puts the stream at `seed` after `calls` calls.
    pub fn set(&self, seed: u64, calls: u64) {
        self.seed.store(seed, Ordering::SeqCst);
        self.calls.store(calls, Ordering::SeqCst);
    }

    /// `(seed, calls so far)`.
    pub fn state(&self) -> (u64, u64) {
        (
            self.seed.load(Ordering::SeqCst),
            self.calls.load(Ordering::SeqCst),
        )
    }

    /// Takes the next call: the `[seed, call]` words its kernels read, as the bits of two
    /// `u64` in `i64` storage.
    pub fn next_call(&self) -> [i64; 2] {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        [self.seed.load(Ordering::SeqCst) as i64, call as i64]
    }

    /// [`next_call`](Self::next_call) for rank `rank` of a data-parallel job: every rank
    /// advances the same counter, but draws with a key of its own (rank 0 the seed itself),
    /// so ranks corrupt or sample their slices independently.
    pub fn next_call_of_rank(&self, rank: usize) -> [i64; 2] {
        let [seed, call] = self.next_call();
        // An odd multiplier maps distinct ranks to distinct keys.
        let key = (seed as u64) ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        [key as i64, call]
    }
}

impl Default for RandomStream {
    fn default() -> Self {
        RandomStream::new(Self::DEFAULT_SEED, 0)
    }
}

impl Clone for RandomStream {
    /// A copy at the same position: the copy draws what the original would draw next.
    fn clone(&self) -> Self {
        let (seed, calls) = self.state();
        RandomStream::new(seed, calls)
    }
}

impl std::fmt::Debug for RandomStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (seed, calls) = self.state();
        f.debug_struct("RandomStream")
            .field("seed", &seed)
            .field("calls", &calls)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_advance_and_reseed_restarts() {
        let s = RandomStream::new(7, 0);
        assert_eq!(s.next_call(), [7, 0]);
        assert_eq!(s.next_call(), [7, 1]);
        let c = s.clone();
        assert_eq!(c.next_call(), [7, 2]);
        assert_eq!(s.state(), (7, 2));
        s.reseed(u64::MAX);
        assert_eq!(s.next_call(), [-1, 0]);
        s.set(3, u64::MAX);
        assert_eq!(s.next_call(), [3, -1]);
    }

    #[test]
    fn ranks_draw_with_keys_of_their_own() {
        let s = RandomStream::new(7, 0);
        assert_eq!(s.next_call_of_rank(0), [7, 0]);
        let [k1, c1] = s.next_call_of_rank(1);
        let [k2, _] = s.next_call_of_rank(2);
        assert_eq!(c1, 1);
        assert!(k1 != 7 && k2 != 7 && k1 != k2);
    }
}
