//! A training step of the seed's autoencoder, of a denoising autoencoder (random corruption)
//! and of a softmax classifier (integer labels) allocates nothing after the first, on any thread:
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

tensor_fn::tensor_fn! {
    /// The tutorials' denoising autoencoder: a random corruption of every input.
    struct Denoising { w: f32[m, h], b: f32[h], c: f32[m] }
    impl Denoising {
        fn train(&mut self, x: f32[n, m], lr: f32) -> f32 {
            let noisy = binomial(shape(x), 0.7) * x;
            let y = sigmoid(dot(noisy, w) + b);
            let z = sigmoid(dot(y, w.T) + c);
            let cost = mean(-sum(x * log(z) + (1 - x) * log(1 - z), axis = 1));
            w -= lr * grad(cost, w);
            b -= lr * grad(cost, b);
            c -= lr * grad(cost, c);
            cost
        }
    }
}

tensor_fn::tensor_fn! {
    struct Softmax { w: f32[m, k], b: f32[k] }
    impl Softmax {
        fn train(&mut self, x: f32[n, m], y: i64[n], lr: f32) -> f32 {
            let cost = -mean(log_softmax(dot(x, w) + b)[arange(n), y]);
            w -= lr * grad(cost, w);
            b -= lr * grad(cost, b);
            cost
        }
    }
}

tensor_fn::tensor_fn! {
    /// The MLP tutorial's step: tanh, softmax, and a weight penalty (in-place GEMMs with decay).
    struct Mlp { w1: f32[m, h], b1: f32[h], w2: f32[h, 10], b2: f32[10] }
    impl Mlp {
        fn train(&mut self, x: f32[n, m], y: i64[n], lr: f32, l2: f32) -> f32 {
            let hidden = tanh(dot(x, w1) + b1);
            let nll = -mean(log_softmax(dot(hidden, w2) + b2)[arange(n), y]);
            let cost = nll + l2 * (sum(w1 * w1) + sum(w2 * w2));
            w1 -= lr * grad(cost, w1);
            b1 -= lr * grad(cost, b1);
            w2 -= lr * grad(cost, w2);
            b2 -= lr * grad(cost, b2);
            cost
        }
    }
}

#[path = "common/lenet.rs"]
mod lenet_model;
use lenet_model::LeNet;

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

    let mut d = Denoising::new(init(hidden), Array1::zeros(hidden), Array1::zeros(784)).unwrap();
    d.train(x.slice(s![..20, ..]), 0.1).unwrap();
    let labels = data.train_labels.slice(s![..800]).mapv(i64::from);
    let mut c = Softmax::new(ndarray::Array2::zeros((784, 10)), Array1::zeros(10)).unwrap();
    c.train(x.slice(s![..600, ..]), labels.slice(s![..600]), 0.13)
        .unwrap();
    let mut p = Mlp::new(
        init(hidden),
        Array1::zeros(hidden),
        ndarray::Array2::zeros((hidden, 10)),
        Array1::zeros(10),
    )
    .unwrap();
    p.train(x.slice(s![..20, ..]), labels.slice(s![..20]), 0.01, 0.0001)
        .unwrap();

    // LeNet's step: convolutions, pooling, channel biases and their gradients.
    let mut le = LeNet::new(
        ndarray::Array4::from_elem((20, 1, 5, 5), 0.01),
        Array1::zeros(20),
        ndarray::Array4::from_elem((50, 20, 5, 5), 0.001),
        Array1::zeros(50),
        ndarray::Array2::from_elem((800, 500), 0.001),
        Array1::zeros(500),
        ndarray::Array2::zeros((500, 10)),
        Array1::zeros(10),
    )
    .unwrap();
    le.train(x.slice(s![..20, ..]), labels.slice(s![..20]), 0.1)
        .unwrap();
    // LeNet's staged data-parallel step (a world of one made to stage): the flat buffer and
    // the views of it are reused.
    let mut comm = tensor_fn::dist::Communicator::single();
    comm.set_stage_alone(true);
    le.train_data_parallel(
        &mut comm,
        x.slice(s![..20, ..]),
        labels.slice(s![..20]),
        0.1,
    )
    .unwrap();

    let before = allocs();
    for i in 1..40 {
        m.train(x.slice(s![i * 20..(i + 1) * 20, ..]), 0.1).unwrap();
        d.train(x.slice(s![i * 20..(i + 1) * 20, ..]), 0.1).unwrap();
        let r = i * 20..(i + 1) * 20;
        p.train(
            x.slice(s![r.clone(), ..]),
            labels.slice(s![r]),
            0.01,
            0.0001,
        )
        .unwrap();
    }
    for _ in 0..3 {
        c.train(x.slice(s![200..800, ..]), labels.slice(s![200..800]), 0.13)
            .unwrap();
    }
    for i in 1..4 {
        let r = i * 20..(i + 1) * 20;
        le.train(x.slice(s![r.clone(), ..]), labels.slice(s![r.clone()]), 0.1)
            .unwrap();
        le.train_data_parallel(
            &mut comm,
            x.slice(s![r.clone(), ..]),
            labels.slice(s![r]),
            0.1,
        )
        .unwrap();
    }
    let during = allocs() - before;

    assert_eq!(
        during,
        0,
        "allocations in the steps of the five models, on {} threads",
        threads()
    );
    println!(
        "zero_alloc: 39 steps of the autoencoder, a denoising one and the MLP, 3 of a softmax classifier and 3 of LeNet (and 3 of its staged data-parallel step), on {} threads allocated nothing",
        threads()
    );
}
