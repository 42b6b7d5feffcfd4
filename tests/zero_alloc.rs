//! A training step of the seed's autoencoder allocates nothing after the first, on any thread:
//! the calling thread and the CPU pool's workers, which run the GEMMs and loop kernels.
//!
//! Every heap allocation of the process is counted, whichever thread makes it. So this test is
//! a binary of its own without libtest's harness (`harness = false` in Cargo.toml): in a binary
//! with other tests, their threads allocate while the steps run, and libtest's own threads
//! (the test runner, its channels and timers) are there too. Here the process holds only the
//! main thread and the pool's workers, and the counted window holds only training steps.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ndarray::{s, Array1};
use tensor_fn::data::mnist::Mnist;
use tensor_fn_runtime::cpu::{run_chunks, threads};

/// Counts heap allocations (and reallocations) of every thread.
struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; the counter is one atomic add, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    // SeqCst: every allocation that happened before the steps returned is seen.
    ALLOCS.load(Ordering::SeqCst)
}

#[allow(dead_code)]
#[path = "../examples/autoencoder.rs"]
mod example;
use example::Autoencoder;

mod common;
use common::init;

/// Returns once every thread of the pool has run a chunk of a job: a worker allocates its
/// thread state when it starts, and that must not land inside the counted window.
fn wait_for_every_worker() {
    let n = threads();
    let arrived = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    // Each thread's own range is one chunk, and no chunk ends before all have begun, so no
    // thread can take a second chunk: all n threads run one each.
    run_chunks(n, &|_| {
        arrived.fetch_add(1, Ordering::AcqRel);
        while arrived.load(Ordering::Acquire) < n {
            assert!(Instant::now() < deadline, "pool workers did not start");
            std::hint::spin_loop();
        }
    });
}

fn main() {
    // Workers on any machine, a one-core one included. (No other thread exists yet.)
    std::env::set_var("TENSOR_FN_THREADS", "4");
    let data = Mnist::load_default().expect("the shipped MNIST loads");
    let x = data.train_images.slice(s![..800, ..]).to_owned();
    let hidden = 500;
    let mut m = Autoencoder::new(init(hidden), Array1::zeros(hidden), Array1::zeros(784)).unwrap();
    // The first step allocates the workspaces and starts the pool.
    m.train(x.slice(s![..20, ..]), 0.1).unwrap();
    wait_for_every_worker();
    assert!(
        threads() > 1,
        "the pool has no workers: the test would miss them"
    );

    let before = allocs();
    for i in 1..40 {
        m.train(x.slice(s![i * 20..(i + 1) * 20, ..]), 0.1).unwrap();
    }
    let during = allocs() - before;

    assert_eq!(
        during,
        0,
        "allocations in 39 training steps, on {} threads",
        threads()
    );
    println!(
        "zero_alloc: 39 training steps on {} threads allocated nothing",
        threads()
    );
}
