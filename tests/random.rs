//! Random numbers inside model methods, Theano's `RandomStreams`: `binomial(shape(x), p)`,
//! `uniform(size, lo, hi)`, `normal(size, mean, std)` with `size` either `shape(x)` or a
//! literal `[n, 784]`. Each draw is Philox4x32-10 keyed by the model's seed, counted by its
//! calls, and indexed by the element's flat position and the op's site in the method
//! (`tensor_fn::kernels::rng`); the CPU and the GPU draw the same bits (`gpu.rs`).

use ndarray::{Array1, Array2};
use tensor_fn::kernels::rng;
use tensor_fn::prelude::*;

tensor_fn! {
    /// A denoising autoencoder's corruption and a few other draws.
    pub struct Noisy { w: f64[m, h] }
    impl Noisy {
        pub fn corrupt(&self, x: f64[n, m], level: f64) -> f64[n, m] {
            binomial(shape(x), 1 - level) * x
        }
        pub fn draws(&self, x: f64[n, m]) -> (f64[n, m], f64[n, m], f64[m], f64) {
            (
                binomial(shape(x), 0.25),
                uniform(shape(x), -2, 3),
                normal([m], 1, 0.5),
                normal(shape(sum(x)), 0, 1),
            )
        }
        /// Two draws of one shape in one call are independent streams.
        pub fn twice(&self, x: f64[n, m]) -> (f64[n, m], f64[n, m]) {
            (uniform(shape(x), 0, 1), uniform(shape(x), 0, 1))
        }
        pub fn step(&mut self, x: f64[n, m], lr: f64) -> f64 {
            let noisy = binomial(shape(x), 0.7) * x;
            let z = sigmoid(dot(sigmoid(dot(noisy, w)), w.T));
            let cost = mean(sum(pow(z - x, 2), axis = 1));
            w -= lr * grad(cost, w);
            cost
        }
        pub fn loss(&self, x: f64[n, m]) -> f64 {
            let noisy = binomial(shape(x), 0.7) * x;
            let z = sigmoid(dot(sigmoid(dot(noisy, w)), w.T));
            mean(sum(pow(z - x, 2), axis = 1))
        }
        pub fn loss_grad(&self, x: f64[n, m]) -> f64[m, h] {
            let noisy = binomial(shape(x), 0.7) * x;
            let z = sigmoid(dot(sigmoid(dot(noisy, w)), w.T));
            grad(mean(sum(pow(z - x, 2), axis = 1)), w)
        }
    }
}

tensor_fn! {
    pub struct Noisy32 { w: f32[m, h] }
    impl Noisy32 {
        pub fn draws(&self, x: f32[n, m]) -> (f32[n, m], f32[n, m], f32[n, m]) {
            (binomial(shape(x), 0.5), uniform(shape(x), 0, 1), normal(shape(x), 0, 1))
        }
    }
}

fn model() -> Noisy {
    Noisy::new(Array2::from_shape_fn((5, 3), |(i, j)| {
        0.1 * (i as f64 - j as f64)
    }))
    .unwrap()
}

fn x() -> Array2<f64> {
    Array2::from_shape_fn((4, 5), |(i, j)| 0.05 + 0.1 * (i * 5 + j) as f64 / 2.0)
}

#[test]
fn draws_are_philox_of_seed_call_site_and_flat_index() {
    let mut m = model();
    m.seed(1234);
    let x = x();
    let (b, u, nv, ns) = m.draws(x.view()).unwrap();
    let (seed, call) = (1234u64, 0u64);
    for i in 0..4 {
        for j in 0..5 {
            let flat = (i * 5 + j) as u32;
            assert_eq!(
                b[[i, j]],
                rng::binomial::<f64>(rng::bits(flat, 0, call, seed), 0.25)
            );
            let want = rng::uniform::<f64>(rng::bits(flat, 1, call, seed), -2.0, 3.0);
            assert_eq!(u[[i, j]].to_bits(), want.to_bits());
        }
    }
    for j in 0..5 {
        let want = rng::normal::<f64>(rng::bits(j as u32, 2, call, seed), 1.0, 0.5);
        assert_eq!(nv[j].to_bits(), want.to_bits());
    }
    assert_eq!(
        ns,
        rng::normal::<f64>(rng::bits(0, 3, call, seed), 0.0, 1.0)
    );
    assert_eq!(m.random_stream(), (1234, 1));
}

#[test]
fn calls_advance_the_stream_and_seeds_restart_it() {
    let mut m = model();
    let x = x();
    let first = m.corrupt(x.view(), 0.5).unwrap();
    let second = m.corrupt(x.view(), 0.5).unwrap();
    assert_ne!(first, second, "each call draws anew");
    // Unseeded models are reproducible: a fresh one draws the same first mask.
    assert_eq!(model().corrupt(x.view(), 0.5).unwrap(), first);
    m.seed(7);
    let a = m.corrupt(x.view(), 0.5).unwrap();
    m.seed(7);
    assert_eq!(m.corrupt(x.view(), 0.5).unwrap(), a);
    m.seed(8);
    assert_ne!(m.corrupt(x.view(), 0.5).unwrap(), a);
    // A saved position resumes the stream; a clone continues it.
    m.seed(7);
    m.corrupt(x.view(), 0.5).unwrap();
    let state = m.random_stream();
    let c = m.clone();
    let next = m.corrupt(x.view(), 0.5).unwrap();
    assert_eq!(c.corrupt(x.view(), 0.5).unwrap(), next);
    let mut r = model();
    r.set_random_stream(state.0, state.1);
    assert_eq!(r.corrupt(x.view(), 0.5).unwrap(), next);
    // Every call of every drawing method takes one step of the stream.
    let before = m.random_stream().1;
    m.twice(x.view()).unwrap();
    m.draws(x.view()).unwrap();
    assert_eq!(m.random_stream().1, before + 2);
}

#[test]
fn corruption_keeps_or_zeroes_each_entry() {
    let m = Noisy::new(Array2::zeros((50, 3))).unwrap();
    let x = Array2::from_elem((200, 50), 2.0);
    let c = m.corrupt(x.view(), 0.3).unwrap();
    assert!(c.iter().all(|&v| v == 0.0 || v == 2.0));
    let kept = c.iter().filter(|&&v| v == 2.0).count() as f64 / 10_000.0;
    // 0.7 +- 6 standard deviations of a mean of 10^4 Bernoulli(0.7).
    assert!(
        (kept - 0.7).abs() < 6.0 * (0.21f64 / 1e4).sqrt(),
        "kept {kept}"
    );
    assert_eq!(m.corrupt(x.view(), 0.0).unwrap(), x);
    assert!(m.corrupt(x.view(), 1.0).unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn sites_are_independent_and_ranges_hold() {
    let m = Noisy::new(Array2::zeros((100, 3))).unwrap();
    let x = Array2::<f64>::zeros((100, 100));
    let (a, b) = m.twice(x.view()).unwrap();
    assert!(a.iter().zip(&b).all(|(p, q)| p != q));
    assert!(a.iter().all(|&v| (0.0..1.0).contains(&v)));
    let mean = a.mean().unwrap();
    assert!(
        (mean - 0.5).abs() < 6.0 * (1.0f64 / 12.0 / 1e4).sqrt(),
        "mean {mean}"
    );
    let m32 = Noisy32::new(Array2::zeros((100, 2))).unwrap();
    let (bin, uni, nor) = m32.draws(x.mapv(|v| v as f32).view()).unwrap();
    assert!(bin.iter().all(|&v| v == 0.0 || v == 1.0));
    assert!(uni.iter().all(|&v| (0.0..1.0).contains(&v)));
    let nm = nor.iter().map(|&v| v as f64).sum::<f64>() / 1e4;
    let nv = nor.iter().map(|&v| (v as f64 - nm).powi(2)).sum::<f64>() / 1e4;
    assert!(
        nm.abs() < 0.06 && (nv - 1.0).abs() < 0.06,
        "normal mean {nm} var {nv}"
    );
    // f32 draws are the f32 definition's bits.
    let w = rng::bits(17, 2, 0, tensor_fn::RandomStream::DEFAULT_SEED);
    assert_eq!(
        nor[[0, 17]].to_bits(),
        rng::normal::<f32>(w, 0.0, 1.0).to_bits()
    );
}

/// A draw is a constant to `grad`: with the stream put back before each evaluation, the
/// compiled gradient is the derivative of the loss under that one mask.
#[test]
fn gradients_treat_draws_as_constants() {
    let mut m = model();
    let x = x();
    m.set_random_stream(99, 5);
    let g = m.loss_grad(x.view()).unwrap();
    let w0 = m.w.get_value().unwrap();
    for i in 0..5 {
        for j in 0..3 {
            let h = 1e-6;
            let at = |d: f64| {
                let mut w = w0.clone();
                w[[i, j]] += d;
                let mut p = Noisy::new(w).unwrap();
                // The loss is the 6th call of stream 99 too.
                p.set_random_stream(99, 5);
                p.loss(x.view()).unwrap()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (fd - g[[i, j]]).abs() < 1e-7 + 1e-5 * fd.abs(),
                "w[{i},{j}]: {} vs {fd}",
                g[[i, j]]
            );
        }
    }
    // And a training step descends along it.
    let mut a = model();
    a.set_random_stream(99, 5);
    a.step(x.view(), 0.5).unwrap();
    let stepped = a.w.get_value().unwrap();
    let want: Array2<f64> = &w0 - &(&g * 0.5);
    for (s, w) in stepped.iter().zip(&want) {
        assert!((s - w).abs() < 1e-15, "{s} vs {w}");
    }
}

#[test]
fn draws_are_reported_in_the_graph() {
    assert!(
        Noisy::CORRUPT_INFO.graph.contains("binomial[site=0]"),
        "{}",
        Noisy::CORRUPT_INFO.graph
    );
    assert!(
        Noisy::CORRUPT_INFO
            .expr
            .contains("binomial([n, m], 1 - level)"),
        "{}",
        Noisy::CORRUPT_INFO.expr
    );
    // The stream is not an argument the caller sees.
    assert!(
        !Noisy::CORRUPT_INFO.signature.contains("__stream"),
        "{}",
        Noisy::CORRUPT_INFO.signature
    );
    let _: Array1<f64> = Array1::zeros(1);
}

#[test]
fn a_checkpoint_resumes_the_stream() {
    let dir = std::env::temp_dir().join(format!("tensor-fn-random-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stream.tfc");
    let mut m = model();
    m.seed(31);
    let x = x();
    m.corrupt(x.view(), 0.5).unwrap();
    let mut ck = tensor_fn::io::Checkpoint::new(1, 3, 31);
    ck.set_random_stream(m.random_stream());
    ck.save_atomic(&path).unwrap();
    let next = m.corrupt(x.view(), 0.5).unwrap();
    let back = tensor_fn::io::Checkpoint::load(&path).unwrap();
    let (seed, calls) = back.random_stream(&path).unwrap().expect("saved");
    let mut r = model();
    r.set_random_stream(seed, calls);
    assert_eq!(r.corrupt(x.view(), 0.5).unwrap(), next);
    std::fs::remove_dir_all(&dir).unwrap();
}
