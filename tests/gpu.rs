//! CPU vs GPU differential tests: one body per op family and per fused kernel, run on the CPU
//! always and on every GPU device at hand, comparing results.
//!
//! The GPU devices are the PTX interpreter (`Device::PtxVm`, always: it runs the very launch
//! plans, workspaces, staging copies and graph replays a CUDA device runs) and CUDA device 0
//! when the binary has the `cuda` feature and a GPU answers. Without one the CUDA half reports
//! "no device" and passes; under `TENSOR_FN_REQUIRE_GPU=1` it fails instead.

use ndarray::{Array1, Array2, ArrayD};
use tensor_fn::gpu::GpuCalls;
use tensor_fn::prelude::*;

/// The GPU devices to compare against the CPU.
fn devices() -> Vec<Device> {
    let mut d = vec![Device::PtxVm];
    match Device::cuda(0) {
        Ok(c) => d.push(c),
        Err(e) => {
            if std::env::var("TENSOR_FN_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("TENSOR_FN_REQUIRE_GPU=1 but no CUDA device: {e}");
            }
            eprintln!("cuda: skipped: no device ({e})");
        }
    }
    d
}

/// Deterministic values in [lo, hi) (a hash, not a generator).
fn fill(shape: &[usize], seed: u32, lo: f64, hi: f64) -> ArrayD<f64> {
    let mut i = 0u32;
    ArrayD::from_shape_fn(shape, |_| {
        i += 1;
        let mut x = i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503);
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        lo + (hi - lo) * (x as f64 / u32::MAX as f64)
    })
}

fn mat(r: usize, c: usize, seed: u32) -> Array2<f64> {
    fill(&[r, c], seed, -1.0, 1.0)
        .into_dimensionality()
        .expect("rank 2")
}

fn vec1(n: usize, seed: u32) -> Array1<f64> {
    fill(&[n], seed, -1.0, 1.0)
        .into_dimensionality()
        .expect("rank 1")
}

/// Relative closeness, elementwise; NaN must match NaN.
fn close(what: &str, dev: Device, cpu: &[f64], gpu: &[f64], tol: f64) {
    assert_eq!(cpu.len(), gpu.len(), "{what} on {dev}: lengths");
    for (i, (a, b)) in cpu.iter().zip(gpu).enumerate() {
        let ok = (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * (1.0 + a.abs());
        assert!(ok, "{what} on {dev}: element {i}: cpu {a}, gpu {b}");
    }
}

tensor_fn! {
    /// A parameter matrix and vector every op family reads, so each runs as a model method.
    struct Ops { p: f64[n, m], q: f64[m] }

    impl Ops {
        fn unary(&self, x: f64[n, m]) -> (f64[n, m], f64[n, m], f64[n, m], f64[n, m], f64[n, m], f64[n, m]) {
            (
                exp(x * p) + log(x * x + 1.5) + log1p(abs(p)),
                sqrt(abs(x) + p * p) * tanh(x + p),
                sigmoid(x - p) + softplus(3 * x * p),
                relu(x - p) + abs(x + q),
                pow(x, 3) * p + pow(abs(p) + 1, 0.5) + pow(x + 2, -2),
                -x / (abs(p) + 1) + erf(x * p) + gelu(x - p),
            )
        }

        fn binary(&self, x: f64[n, m], y: f64[m]) -> (f64[n, m], f64[n, m], f64[n, m]) {
            (
                x * p + y - 2 * q,
                maximum(x, p) + minimum(x, y),
                (x + 1) / (p * p + 0.5) - 3 / (y * y + 1),
            )
        }

        fn reduce(&self, x: f64[n, m]) -> (f64, f64[m], f64[n], f64, f64[n], f64[m]) {
            (
                sum(x * p),
                sum(x * p, axis = 0),
                mean(x + p, axis = 1),
                max(x * p),
                max(x - p, axis = 1),
                max(x + q, axis = 0),
            )
        }

        fn dots(&self, x: f64[n, m], v: f64[m], u: f64[n]) -> (f64[n], f64[m], f64[n, n], f64[m, m], f64, f64[n, m]) {
            (
                dot(p, v),
                dot(u, x),
                dot(x, p.T),
                dot(x.T, p),
                dot(v, q),
                sigmoid(dot(dot(x, p.T), p) + q),
            )
        }

        fn scalars(&self, s: f64) -> (f64, f64) {
            (s * 2, s)
        }

        fn total(&self, s: f64) -> f64 {
            sum(q) * s
        }

        fn step(&mut self, x: f64[n, m], lr: f64) -> f64 {
            let h = tanh(dot(x, p.T));
            let cost = sum(h * h) / 2 + sum(softplus(dot(h, p) - x) * q) + sum(q * q);
            p -= lr * grad(cost, p);
            q -= lr * grad(cost, q);
            cost
        }
    }
}

fn ops(n: usize, m: usize) -> Ops {
    Ops::new(mat(n, m, 1), vec1(m, 2)).expect("shapes agree")
}

fn flat<D: ndarray::Dimension>(a: &ndarray::Array<f64, D>) -> Vec<f64> {
    a.iter().copied().collect()
}

/// The sizes each test runs at: tiny and odd, then wider than a block.
const SIZES: [(usize, usize); 2] = [(5, 7), (33, 130)];

#[test]
fn unary_ops_match() {
    for (n, m) in SIZES {
        let x = mat(n, m, 3);
        let cpu = ops(n, m).unary(x.view()).expect("cpu");
        for dev in devices() {
            let mut g = ops(n, m);
            g.to_device(dev).expect("to device");
            let r = g.unary(x.view()).expect("gpu");
            close("exp/log/log1p", dev, &flat(&cpu.0), &flat(&r.0), 1e-11);
            close("sqrt*tanh", dev, &flat(&cpu.1), &flat(&r.1), 1e-11);
            close("sigmoid+softplus", dev, &flat(&cpu.2), &flat(&r.2), 1e-11);
            close("relu+abs", dev, &flat(&cpu.3), &flat(&r.3), 1e-12);
            close("pow", dev, &flat(&cpu.4), &flat(&r.4), 1e-11);
            close("neg/div", dev, &flat(&cpu.5), &flat(&r.5), 1e-12);
        }
    }
}

#[test]
fn binary_ops_and_broadcasting_match() {
    for (n, m) in SIZES {
        let (x, y) = (mat(n, m, 4), vec1(m, 5));
        let cpu = ops(n, m).binary(x.view(), y.view()).expect("cpu");
        for dev in devices() {
            let mut g = ops(n, m);
            g.to_device(dev).expect("to device");
            let r = g.binary(x.view(), y.view()).expect("gpu");
            close("mul/add/sub", dev, &flat(&cpu.0), &flat(&r.0), 1e-12);
            close("maximum/minimum", dev, &flat(&cpu.1), &flat(&r.1), 1e-12);
            close("div", dev, &flat(&cpu.2), &flat(&r.2), 1e-12);
        }
    }
}

#[test]
fn reductions_match() {
    for (n, m) in SIZES {
        let x = mat(n, m, 6);
        let cpu = ops(n, m).reduce(x.view()).expect("cpu");
        for dev in devices() {
            let mut g = ops(n, m);
            g.to_device(dev).expect("to device");
            let r = g.reduce(x.view()).expect("gpu");
            close("sum all", dev, &[cpu.0], &[r.0], 1e-11);
            close("sum axis 0", dev, &flat(&cpu.1), &flat(&r.1), 1e-11);
            close("mean axis 1", dev, &flat(&cpu.2), &flat(&r.2), 1e-11);
            close("max all", dev, &[cpu.3], &[r.3], 0.0);
            close("max axis 1", dev, &flat(&cpu.4), &flat(&r.4), 0.0);
            close("max axis 0", dev, &flat(&cpu.5), &flat(&r.5), 0.0);
        }
    }
}

#[test]
fn products_match() {
    for (n, m) in SIZES {
        let (x, v, u) = (mat(n, m, 7), vec1(m, 8), vec1(n, 9));
        let cpu = ops(n, m).dots(x.view(), v.view(), u.view()).expect("cpu");
        for dev in devices() {
            let mut g = ops(n, m);
            g.to_device(dev).expect("to device");
            let r = g.dots(x.view(), v.view(), u.view()).expect("gpu");
            close("mv", dev, &flat(&cpu.0), &flat(&r.0), 1e-11);
            close("vm", dev, &flat(&cpu.1), &flat(&r.1), 1e-11);
            close("x p^T", dev, &flat(&cpu.2), &flat(&r.2), 1e-11);
            close("x^T p", dev, &flat(&cpu.3), &flat(&r.3), 1e-11);
            close("vv", dev, &[cpu.4], &[r.4], 1e-11);
            close(
                "gemm epilogue chain",
                dev,
                &flat(&cpu.5),
                &flat(&r.5),
                1e-11,
            );
        }
    }
}

#[test]
fn training_steps_and_simultaneous_updates_match() {
    for (n, m) in SIZES {
        let x = mat(n, m, 10);
        let mut cpu = ops(n, m);
        let cpu_costs: Vec<f64> = (0..3)
            .map(|_| cpu.step(x.view(), 0.05).expect("cpu"))
            .collect();
        for dev in devices() {
            let mut g = ops(n, m);
            g.to_device(dev).expect("to device");
            let costs: Vec<f64> = (0..3)
                .map(|_| g.step(x.view(), 0.05).expect("gpu"))
                .collect();
            close("costs", dev, &cpu_costs, &costs, 1e-10);
            assert_eq!(g.device().expect("one device"), dev);
            let p = g.p.get_value().expect("download p");
            let q = g.q.get_value().expect("download q");
            close(
                "p after 3 steps",
                dev,
                &flat(&cpu.p.get_value().unwrap()),
                &flat(&p),
                1e-10,
            );
            close(
                "q after 3 steps",
                dev,
                &flat(&cpu.q.get_value().unwrap()),
                &flat(&q),
                1e-10,
            );
        }
    }
}

tensor_fn! {
    /// A softmax classifier: every classifier op (log_softmax, picking, argmax, comparisons,
    /// softmax, where, keepdims) in a training step, a metric and a prediction. The weight
    /// penalty makes the update of `w` one GEMM whose beta is `1 - lr * 2 * l2`.
    struct Classifier { w: f64[m, k], b: f64[k] }

    impl Classifier {
        fn train(&mut self, x: f64[n, m], y: i64[n], lr: f64, l2: f64) -> f64 {
            let cost = -mean(log_softmax(dot(x, w) + b)[arange(n), y]) + l2 * sum(w * w);
            w -= lr * grad(cost, w);
            b -= lr * grad(cost, b);
            cost
        }
        fn errors(&self, x: f64[n, m], y: i64[n]) -> f64 {
            mean(neq(argmax(dot(x, w) + b, axis = 1), y))
        }
        fn predict(&self, x: f64[n, m]) -> (i64[n], i64[k], f64[n, k], f64[n, k]) {
            let z = dot(x, w) + b;
            (
                argmax(z, axis = 1),
                argmax(z, axis = 0),
                softmax(z),
                where(gt(z, 0), z, 0) - max(z, axis = 1, keepdims = true),
            )
        }
    }
}

fn classifier(m: usize, k: usize) -> Classifier {
    Classifier::new(mat(m, k, 12), vec1(k, 13)).expect("shapes agree")
}

#[test]
fn a_classifier_trains_and_predicts_alike() {
    assert!(
        Classifier::TRAIN_INFO
            .launches
            .contains("beta = 1 - lr * 2 * l2"),
        "{}",
        Classifier::TRAIN_INFO.launches
    );
    for (n, m) in SIZES {
        let k = 10;
        let x = mat(n, m, 14);
        let y: Array1<i64> = (0..n as i64).map(|i| (i * 7) % k as i64).collect();
        let mut cpu = classifier(m, k);
        let cpu_costs: Vec<f64> = (0..3)
            .map(|_| cpu.train(x.view(), y.view(), 0.1, 0.01).expect("cpu"))
            .collect();
        let cpu_err = cpu.errors(x.view(), y.view()).expect("cpu");
        let cpu_pred = cpu.predict(x.view()).expect("cpu");
        for dev in devices() {
            let mut g = classifier(m, k);
            g.to_device(dev).expect("to device");
            let costs: Vec<f64> = (0..3)
                .map(|_| g.train(x.view(), y.view(), 0.1, 0.01).expect("gpu"))
                .collect();
            close("nll", dev, &cpu_costs, &costs, 1e-10);
            close(
                "w",
                dev,
                &flat(&cpu.w.get_value().unwrap()),
                &flat(&g.w.get_value().unwrap()),
                1e-10,
            );
            assert_eq!(
                g.errors(x.view(), y.view()).expect("gpu"),
                cpu_err,
                "errors on {dev}"
            );
            let p = g.predict(x.view()).expect("gpu");
            assert_eq!(p.0, cpu_pred.0, "argmax rows on {dev}");
            assert_eq!(p.1, cpu_pred.1, "argmax columns on {dev}");
            close("softmax", dev, &flat(&cpu_pred.2), &flat(&p.2), 1e-12);
            close(
                "where/keepdims",
                dev,
                &flat(&cpu_pred.3),
                &flat(&p.3),
                1e-12,
            );
            // A label outside 0..k is an error before anything runs, on every device.
            let mut bad = y.clone();
            bad[n - 1] = k as i64;
            let e = g
                .train(x.view(), bad.view(), 0.1, 0.01)
                .expect_err("label k");
            assert!(
                e.to_string().contains("outside the classes 0..10"),
                "{dev}: {e}"
            );
        }
    }
}

tensor_fn! {
    /// A denoising autoencoder's step and raw draws of every kind, in f64 and f32.
    struct Denoising { w: f64[m, h], b: f64[h], c: f64[m] }

    impl Denoising {
        fn draws(&self, x: f64[n, m]) -> (f64[n, m], f64[n, m], f64[n, m], f64[h], f64) {
            (
                binomial(shape(x), 0.3) * x,
                uniform(shape(x), -1, 2),
                normal(shape(x), 0.5, 2),
                normal([h], 0, 1),
                sum(normal(shape(x), 0, 1)),
            )
        }
        fn step(&mut self, x: f64[n, m], lr: f64, level: f64) -> f64 {
            let noisy = binomial(shape(x), 1 - level) * x;
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

tensor_fn! {
    struct Draws32 { s: f32[m] }
    impl Draws32 {
        fn draws(&self, x: f32[n, m]) -> (f32[n, m], f32[n, m], f32[n, m]) {
            (binomial(shape(x), 0.5) * s, uniform(shape(x), 0, 1), normal(shape(x), 0, 1))
        }
    }
}

fn denoising(m: usize, h: usize) -> Denoising {
    let mut d = Denoising::new(mat(m, h, 15), vec1(h, 16), vec1(m, 17)).expect("shapes agree");
    d.seed(2024);
    d
}

fn bits<D: ndarray::Dimension>(a: &ndarray::Array<f64, D>) -> Vec<u64> {
    a.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn random_draws_are_bit_identical_on_every_device() {
    for (n, m) in SIZES {
        let h = 9;
        let x = fill(&[n, m], 18, 0.0, 1.0)
            .into_dimensionality()
            .expect("rank 2");
        let cpu = denoising(m, h);
        let cpu_draws: Vec<_> = (0..2).map(|_| cpu.draws(x.view()).expect("cpu")).collect();
        assert_ne!(
            bits(&cpu_draws[0].1),
            bits(&cpu_draws[1].1),
            "calls draw anew"
        );
        let xf = x.mapv(|v| v as f32);
        let c32 = Draws32::new(Array1::from_elem(m, 1.5f32)).expect("shapes agree");
        let cpu32 = c32.draws(xf.view()).expect("cpu");
        for dev in devices() {
            let mut g = denoising(m, h);
            g.to_device(dev).expect("to device");
            // Two calls: the second replays the first's launches with the next stream words.
            for (k, want) in cpu_draws.iter().enumerate() {
                let got = g.draws(x.view()).expect("gpu");
                assert_eq!(bits(&got.0), bits(&want.0), "binomial on {dev}, call {k}");
                assert_eq!(bits(&got.1), bits(&want.1), "uniform on {dev}, call {k}");
                assert_eq!(bits(&got.2), bits(&want.2), "normal on {dev}, call {k}");
                assert_eq!(
                    bits(&got.3),
                    bits(&want.3),
                    "normal([h]) on {dev}, call {k}"
                );
                close("sum of normals", dev, &[want.4], &[got.4], 1e-12);
            }
            assert_eq!(g.random_stream(), cpu.random_stream());
            let mut g32 = Draws32::new(Array1::from_elem(m, 1.5f32)).expect("shapes agree");
            g32.to_device(dev).expect("to device");
            let got = g32.draws(xf.view()).expect("gpu");
            let b32 = |a: &Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
            assert_eq!(b32(&got.0), b32(&cpu32.0), "f32 binomial on {dev}");
            assert_eq!(b32(&got.1), b32(&cpu32.1), "f32 uniform on {dev}");
            assert_eq!(b32(&got.2), b32(&cpu32.2), "f32 normal on {dev}");
        }
    }
}

#[test]
fn a_denoising_autoencoder_trains_alike() {
    for (n, m) in SIZES {
        let x = fill(&[n, m], 19, 0.0, 1.0)
            .into_dimensionality()
            .expect("rank 2");
        let mut cpu = denoising(m, 9);
        let cpu_costs: Vec<f64> = (0..3)
            .map(|_| cpu.step(x.view(), 0.1, 0.3).expect("cpu"))
            .collect();
        for dev in devices() {
            let mut g = denoising(m, 9);
            g.to_device(dev).expect("to device");
            let costs: Vec<f64> = (0..3)
                .map(|_| g.step(x.view(), 0.1, 0.3).expect("gpu"))
                .collect();
            close("dA costs", dev, &cpu_costs, &costs, 1e-10);
            close(
                "W",
                dev,
                &flat(&cpu.w.get_value().unwrap()),
                &flat(&g.w.get_value().unwrap()),
                1e-10,
            );
        }
    }
}

/// The main job's model, exactly as it is defined there.
#[allow(dead_code)]
#[path = "../examples/autoencoder.rs"]
mod example;
use example::Autoencoder;

fn autoencoder(hidden: usize) -> Autoencoder {
    let w = fill(&[784, hidden], 11, -0.2, 0.2)
        .mapv(|x| x as f32)
        .into_dimensionality()
        .expect("rank 2");
    Autoencoder::new(w, Array1::zeros(hidden), Array1::zeros(784)).expect("shapes agree")
}

fn pixels(rows: usize) -> Array2<f32> {
    fill(&[rows, 784], 12, 0.0, 1.0)
        .mapv(|x| x as f32)
        .into_dimensionality()
        .expect("rank 2")
}

#[test]
fn the_seed_autoencoder_trains_alike_with_the_dataset_on_the_device() {
    let (hidden, batch, steps) = (6, 4, 3);
    let data = pixels(batch * steps);
    let mut cpu = autoencoder(hidden);
    let cpu_costs: Vec<f64> = (0..steps)
        .map(|i| {
            let x = data.slice(ndarray::s![i * batch..(i + 1) * batch, ..]);
            cpu.train(x, 0.1).expect("cpu") as f64
        })
        .collect();
    for dev in devices() {
        let mut g = autoencoder(hidden);
        g.to_device(dev).expect("to device");
        // Theano's givens: the dataset lives on the device, minibatches are row ranges of it.
        let mut set = Shared::new("train", data.clone());
        set.to_device(dev).expect("dataset to device");
        let queued: Vec<_> = (0..steps)
            .map(|i| {
                let x = set.rows(i * batch..(i + 1) * batch).expect("rows");
                g.train_lazy(x, 0.1).expect("queued")
            })
            .collect();
        let costs: Vec<f64> = queued
            .into_iter()
            .map(|c| c.get().expect("read cost") as f64)
            .collect();
        close("f32 costs", dev, &cpu_costs, &costs, 1e-5);
        let w = g.w.get_value().expect("download w");
        let wc = cpu.w.get_value().unwrap();
        close(
            "f32 W",
            dev,
            &flat(&wc.mapv(f64::from)),
            &flat(&w.mapv(f64::from)),
            1e-5,
        );
        // The features and reconstructions of host data agree too.
        let x = data.slice(ndarray::s![..batch, ..]);
        let (hc, hg) = (cpu.hidden(x).unwrap(), g.hidden(x).expect("gpu hidden"));
        close(
            "hidden",
            dev,
            &flat(&hc.mapv(f64::from)),
            &flat(&hg.mapv(f64::from)),
            1e-5,
        );
    }
}

#[test]
fn a_method_of_scalars_only_runs_on_a_device() {
    for dev in devices() {
        let mut g = ops(5, 7);
        g.to_device(dev).expect("to device");
        assert_eq!(g.scalars(1.5).expect("gpu"), (3.0, 1.5), "on {dev}");
        assert_eq!(
            g.scalars_lazy(2.5).expect("queued").get().expect("read"),
            (5.0, 2.5),
            "on {dev}"
        );
    }
}

#[test]
fn queued_results_read_back_correctly_past_one_ring_of_slots() {
    // Scalar results of queued calls share ring buffers of 4096 slots; more calls than that
    // start a new ring while the values in the old one are still unread.
    let cpu = ops(3, 4);
    let calls = 4096 + 300;
    let want: Vec<f64> = (0..calls)
        .map(|i| cpu.total(i as f64 * 0.25).unwrap())
        .collect();
    for dev in devices() {
        let mut g = ops(3, 4);
        g.to_device(dev).expect("to device");
        let queued: Vec<_> = (0..calls)
            .map(|i| g.total_lazy(i as f64 * 0.25).expect("queued"))
            .collect();
        // Read in reverse: the second ring first, then the first.
        let mut got = vec![f64::NAN; calls];
        for (i, q) in queued.into_iter().enumerate().rev() {
            got[i] = q.get().expect("read");
        }
        close("queued sums", dev, &want, &got, 1e-12);

        // Array outputs of a queued call come back the same as from a waiting one.
        let x = mat(3, 4, 17);
        let lazy = g.unary_lazy(x.view()).expect("queued").get().expect("read");
        let now = g.unary(x.view()).expect("waited");
        assert_eq!(lazy, now, "on {dev}");
    }
}

tensor_fn! {
    /// `Ops::step` again, in a model of its own: only the graph-replay test calls it, so the
    /// executor's counts of its calls are that test's own.
    struct Replayed { p: f64[n, m], q: f64[m] }

    impl Replayed {
        fn step(&mut self, x: f64[n, m], lr: f64) -> f64 {
            let h = tanh(dot(x, p.T));
            let cost = sum(h * h) / 2 + sum(softplus(dot(h, p) - x) * q) + sum(q * q);
            p -= lr * grad(cost, p);
            q -= lr * grad(cost, q);
            cost
        }
    }
}

#[test]
fn repeated_calls_replay_one_recorded_graph() {
    let (n, m) = (5, 7);
    let x = mat(n, m, 13);
    let graphs = std::env::var("TENSOR_FN_CUDA_GRAPHS").as_deref() != Ok("0");
    for dev in devices() {
        let mut g = Replayed::new(mat(n, m, 1), vec1(m, 2)).expect("shapes agree");
        g.to_device(dev).expect("to device");
        let calls = || Replayed::gpu_calls("step", dev).expect("a method");
        assert_eq!(calls(), GpuCalls::default(), "no call on {dev} yet");
        let mut cpu = ops(n, m);
        let mut check = |lr: f64, g: &mut Replayed| {
            let want = cpu.step(x.view(), lr).unwrap();
            let got = g.step(x.view(), lr).expect("step");
            close("cost", dev, &[want], &[got], 1e-10);
        };
        for _ in 0..4 {
            check(0.05, &mut g);
        }
        let (recorded, replayed, direct) = if graphs { (1, 3, 0) } else { (0, 0, 4) };
        let want = GpuCalls {
            recorded,
            replayed,
            direct,
        };
        assert_eq!(calls(), want, "on {dev}: four identical calls");

        // A scalar argument is part of what a graph recorded: changing the learning rate
        // records another, and going back replays the first; every step matches the CPU.
        for lr in [0.05, 0.01, 0.01, 0.05, 0.02] {
            check(lr, &mut g);
        }
        let (recorded, replayed, direct) = if graphs { (3, 6, 0) } else { (0, 0, 9) };
        let want = GpuCalls {
            recorded,
            replayed,
            direct,
        };
        assert_eq!(
            calls(),
            want,
            "on {dev}: learning rates 0.05 0.01 0.01 0.05 0.02"
        );
        let p = g.p.get_value().unwrap();
        close(
            "p",
            dev,
            &flat(&cpu.p.get_value().unwrap()),
            &flat(&p),
            1e-10,
        );
    }
    assert_eq!(Replayed::gpu_calls("train", Device::PtxVm), None);
}

#[test]
fn device_values_are_not_borrowed_and_mixed_devices_are_errors() {
    let (n, m) = (5, 7);
    let x = mat(n, m, 14);
    for dev in devices() {
        let mut g = ops(n, m);
        g.p.to_device(dev).expect("to device");
        // Only `p` moved: the model is on two devices.
        let e = g.unary(x.view()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("`unary`: parameter `q` is on cpu, but the function runs on {dev} (where `p` lives)")
        );
        assert_eq!(
            g.p.value().unwrap_err().to_string(),
            format!("shared variable `p` lives on {dev}: copy it with `get_value()`, or move it with `to_device(Device::Cpu)`")
        );
        assert!(g.p.data().is_err() && g.p.data_mut().is_err() && g.p.value_mut().is_err());
        g.to_device(dev).expect("the rest moves");
        assert_eq!(g.device().unwrap(), dev);

        // A function running on the CPU never reads device memory behind the caller's back.
        let mut set = Shared::new("x", x.clone());
        set.to_device(dev).unwrap();
        let cpu = ops(n, m);
        let e = cpu.unary(set.rows(0..n).unwrap()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("`unary`: argument `x` is on {dev}, but the function runs on cpu")
        );
        // Row ranges are checked.
        assert_eq!(
            set.rows(3..9).unwrap_err().to_string(),
            "shared variable `x`: rows 3..9 of a 5 x 7 matrix"
        );
        // Wrong shapes are the same errors on a GPU as on the CPU, before anything runs.
        let bad = mat(n, m + 1, 15);
        let e = g.unary(bad.view()).unwrap_err().to_string();
        assert_eq!(e, "dim `m` is 7 from `p` but 8 from `x`");
    }
}

#[test]
fn shared_values_round_trip_through_a_device() {
    let v = mat(3, 4, 16);
    for dev in devices() {
        let mut s = Shared::new("v", v.clone());
        s.to_device(dev).unwrap();
        assert_eq!(s.device(), dev);
        assert_eq!(s.get_value().unwrap(), v);
        let copy = s.try_clone().unwrap();
        s.set_value(Array2::zeros((3, 4))).unwrap();
        assert_eq!(s.get_value().unwrap(), Array2::<f64>::zeros((3, 4)));
        assert_eq!(
            copy.get_value().unwrap(),
            v,
            "a clone is its own device buffer"
        );
        assert!(s.set_value(Array2::zeros((4, 3))).is_err());
        s.to_device(Device::Cpu).unwrap();
        assert_eq!(s.value().unwrap(), Array2::<f64>::zeros((3, 4)));
    }
}

#[test]
fn cuda_is_a_clear_error_without_a_gpu() {
    match Device::parse("cuda") {
        Ok(d) => assert_eq!(d, Device::Cuda(0)),
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("without the `cuda` feature")
                    || e.contains("no CUDA device")
                    || e.contains("no CUDA driver"),
                "{e}"
            );
        }
    }
    assert_eq!(
        Device::parse("gpu7").unwrap_err().to_string(),
        "device unavailable: unknown device `gpu7` (expected `cpu`, `cuda`, `cuda:N`, `ptx-vm` or `best`)"
    );
    let (best, why) = Device::best_with_reason();
    assert!(best == Device::Cpu || best == Device::Cuda(0));
    assert_eq!(best == Device::Cpu, why.is_some());
}

tensor_fn! {
    /// Images as views: a reshape to rank 4, a channel bias, a flatten and sums over image axes,
    /// which a GPU runs as views of matrices (no convolution).
    struct Views { b: f64[3], w: f64[12, 2] }

    impl Views {
        fn step(&mut self, x: f64[n, 12], lr: f64) -> (f64, f64[n, 3, 2, 2]) {
            let h = tanh(reshape(x, [n, 3, 2, 2]) + reshape(b, [1, 3, 1, 1]));
            let cost = sum(pow(dot(flatten(h, 2), w), 2));
            b -= lr * grad(cost, b);
            w -= lr * grad(cost, w);
            (cost, h)
        }
    }
}

#[test]
fn views_of_images_run_alike() {
    let x = mat(4, 12, 801);
    let make = || Views::new(vec1(3, 802), mat(12, 2, 803)).unwrap();
    let mut cpu = make();
    let (c0, h0) = cpu.step(x.view(), 0.01).unwrap();
    let (c1, _) = cpu.step(x.view(), 0.01).unwrap();
    for dev in devices() {
        let mut g = make();
        g.to_device(dev).expect("to device");
        let (d0, k0) = g.step(x.view(), 0.01).unwrap();
        let (d1, _) = g.step(x.view(), 0.01).unwrap();
        close("cost", dev, &[c0, c1], &[d0, d1], 1e-12);
        close("h", dev, &flat(&h0), &flat(&k0), 1e-12);
        close(
            "b",
            dev,
            &flat(&cpu.b.get_value().unwrap()),
            &flat(&g.b.get_value().unwrap()),
            1e-12,
        );
    }
}

tensor_fn! {
    /// Convolutions and pooling on odd sizes (nothing is a tile multiple): 5 images of 3 x 7 x 9,
    /// 3 x 2 filters with and without the flip, a channel bias, 2 x 2 and 3 x 2 windows (with
    /// ignored borders), and a second layer of each kind of convolution, so that a training
    /// step needs every gradient: of the filters, of the input of a convolution (flipped and
    /// not), and of the pooling.
    struct Images64 {
        w: f64[4, 3, 3, 2], b: f64[4], v: f64[4, 3, 3, 2], w2: f64[2, 4, 2, 3], w3: f64[3, 4, 2, 2]
    }

    impl Images64 {
        fn step(&mut self, x: f64[n, 3, 7, 9], lr: f64) -> (f64, f64[n, 4, 2, 4], f64[n, 4, 1, 4]) {
            let h = max_pool(tanh(conv2d(x, w) + reshape(b, [1, 4, 1, 1])), [2, 2]);
            let q = tanh(max_pool(conv2d(x, v, filter_flip = false), [3, 2]));
            let h2 = conv2d(h, w2, filter_flip = false);
            let h3 = conv2d(h, w3);
            let cost = sum(h2 * h2) + sum(tanh(h3)) + sum(q * q);
            w -= lr * grad(cost, w);
            b -= lr * grad(cost, b);
            v -= lr * grad(cost, v);
            w2 -= lr * grad(cost, w2);
            w3 -= lr * grad(cost, w3);
            (cost, h, q)
        }
    }
}

tensor_fn! {
    /// [`Images64`] in f32.
    struct Images32 {
        w: f32[4, 3, 3, 2], b: f32[4], v: f32[4, 3, 3, 2], w2: f32[2, 4, 2, 3], w3: f32[3, 4, 2, 2]
    }

    impl Images32 {
        fn step(&mut self, x: f32[n, 3, 7, 9], lr: f32) -> (f32, f32[n, 4, 2, 4], f32[n, 4, 1, 4]) {
            let h = max_pool(tanh(conv2d(x, w) + reshape(b, [1, 4, 1, 1])), [2, 2]);
            let q = tanh(max_pool(conv2d(x, v, filter_flip = false), [3, 2]));
            let h2 = conv2d(h, w2, filter_flip = false);
            let h3 = conv2d(h, w3);
            let cost = sum(h2 * h2) + sum(tanh(h3)) + sum(q * q);
            w -= lr * grad(cost, w);
            b -= lr * grad(cost, b);
            v -= lr * grad(cost, v);
            w2 -= lr * grad(cost, w2);
            w3 -= lr * grad(cost, w3);
            (cost, h, q)
        }
    }
}

fn arr4(shape: [usize; 4], seed: u32, scale: f64) -> ndarray::Array4<f64> {
    fill(&shape, seed, -scale, scale)
        .into_dimensionality()
        .expect("rank 4")
}

/// The parameters of [`Images64`] (and, rounded, of [`Images32`]).
fn image_params() -> [ArrayD<f64>; 5] {
    [
        arr4([4, 3, 3, 2], 901, 0.5).into_dyn(),
        fill(&[4], 902, -0.5, 0.5),
        arr4([4, 3, 3, 2], 903, 0.5).into_dyn(),
        arr4([2, 4, 2, 3], 904, 0.5).into_dyn(),
        arr4([3, 4, 2, 2], 905, 0.5).into_dyn(),
    ]
}

fn images64() -> Images64 {
    let [w, b, v, w2, w3] = image_params().map(|a| a.into_dyn());
    let d4 = |a: ArrayD<f64>| a.into_dimensionality::<ndarray::Ix4>().unwrap();
    Images64::new(
        d4(w),
        b.into_dimensionality().unwrap(),
        d4(v),
        d4(w2),
        d4(w3),
    )
    .unwrap()
}

fn images32() -> Images32 {
    let [w, b, v, w2, w3] = image_params().map(|a| a.mapv(|x| x as f32));
    let d4 = |a: ArrayD<f32>| a.into_dimensionality::<ndarray::Ix4>().unwrap();
    Images32::new(
        d4(w),
        b.into_dimensionality().unwrap(),
        d4(v),
        d4(w2),
        d4(w3),
    )
    .unwrap()
}

fn flat32<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>) -> Vec<f64> {
    a.iter().map(|&x| f64::from(x)).collect()
}

/// A test that [`Images64`] or [`Images32`] (made by `$make`) trains alike on every device:
/// two steps from `$x`, outputs and parameters compared to `$tol` (`$flat` reads an array as
/// f64s).
macro_rules! images_train_alike {
    ($name:ident, $make:expr, $x:expr, $flat:ident, $tol:expr) => {
        #[test]
        fn $name() {
            let x = $x;
            let mut cpu = $make;
            let want: Vec<_> = (0..2)
                .map(|_| cpu.step(x.view(), 0.05).expect("cpu"))
                .collect();
            for dev in devices() {
                let mut g = $make;
                g.to_device(dev).expect("to device");
                for (i, w) in want.iter().enumerate() {
                    let (cost, h, q) = g.step(x.view(), 0.05).expect("gpu");
                    close(
                        &format!("cost {i}"),
                        dev,
                        &[w.0.into()],
                        &[cost.into()],
                        $tol,
                    );
                    close(
                        &format!("pooled h {i}"),
                        dev,
                        &$flat(&w.1),
                        &$flat(&h),
                        $tol,
                    );
                    close(
                        &format!("pooled q {i}"),
                        dev,
                        &$flat(&w.2),
                        &$flat(&q),
                        $tol,
                    );
                }
                for (name, a, b) in [
                    (
                        "w",
                        $flat(&cpu.w.get_value().unwrap()),
                        $flat(&g.w.get_value().unwrap()),
                    ),
                    (
                        "b",
                        $flat(&cpu.b.get_value().unwrap()),
                        $flat(&g.b.get_value().unwrap()),
                    ),
                    (
                        "v",
                        $flat(&cpu.v.get_value().unwrap()),
                        $flat(&g.v.get_value().unwrap()),
                    ),
                    (
                        "w2",
                        $flat(&cpu.w2.get_value().unwrap()),
                        $flat(&g.w2.get_value().unwrap()),
                    ),
                    (
                        "w3",
                        $flat(&cpu.w3.get_value().unwrap()),
                        $flat(&g.w3.get_value().unwrap()),
                    ),
                ] {
                    close(&format!("{name} after 2 steps"), dev, &a, &b, $tol);
                }
            }
        }
    };
}

images_train_alike!(
    convolutions_and_pooling_train_alike_in_f64,
    images64(),
    arr4([5, 3, 7, 9], 906, 1.0),
    flat,
    1e-12
);
images_train_alike!(
    convolutions_and_pooling_train_alike_in_f32,
    images32(),
    arr4([5, 3, 7, 9], 906, 1.0).mapv(|v| v as f32),
    flat32,
    1e-4
);

#[test]
fn every_image_call_has_a_gpu_kernel() {
    for op in [
        "conv2d(",
        "conv2d_grad_input(",
        "conv2d_grad_filter(",
        "max_pool(",
        "max_pool_grad(",
    ] {
        assert!(
            Images64::STEP_INFO.launches.contains(op),
            "{op}: {}",
            Images64::STEP_INFO.launches
        );
    }
}

#[path = "common/lenet.rs"]
mod lenet_model;
use lenet_model::LeNet;

fn lenet() -> LeNet {
    let f = |shape: &[usize], seed: u32, scale: f64| {
        fill(shape, seed, -scale, scale).mapv(|v| v as f32)
    };
    let d4 = |a: ArrayD<f32>| a.into_dimensionality::<ndarray::Ix4>().unwrap();
    let d2 = |a: ArrayD<f32>| a.into_dimensionality::<ndarray::Ix2>().unwrap();
    let d1 = |a: ArrayD<f32>| a.into_dimensionality::<ndarray::Ix1>().unwrap();
    LeNet::new(
        d4(f(&[20, 1, 5, 5], 911, 0.2)),
        d1(f(&[20], 912, 0.1)),
        d4(f(&[50, 20, 5, 5], 913, 0.04)),
        d1(f(&[50], 914, 0.1)),
        d2(f(&[800, 500], 915, 0.07)),
        d1(f(&[500], 916, 0.1)),
        d2(f(&[500, 10], 917, 0.1)),
        d1(f(&[10], 918, 0.1)),
    )
    .unwrap()
}

/// A batch of 2 images with labels `(i * a + b) % 10`, and LeNet after 2 CPU steps on it with
/// their costs: the reference of the GPU tests below.
fn lenet_case(seed: u32, a: i64, b: i64) -> (Array2<f32>, Array1<i64>, LeNet, Vec<f32>) {
    let n = 2;
    let x = fill(&[n, 784], seed, 0.0, 1.0)
        .mapv(|v| v as f32)
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let y: Array1<i64> = (0..n as i64).map(|i| (i * a + b) % 10).collect();
    let mut cpu = lenet();
    let want: Vec<f32> = (0..2)
        .map(|_| cpu.train(x.view(), y.view(), 0.1).expect("cpu"))
        .collect();
    (x, y, cpu, want)
}

/// `g`'s costs and every parameter against the CPU's, to 1e-4.
fn lenet_alike(what: &str, dev: Device, cpu: &LeNet, want: &[f32], g: &LeNet, got: &[f32]) {
    let d = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    close(&format!("{what}: costs"), dev, &d(want), &d(got), 1e-4);
    let four = |s: &Shared<f32, ndarray::Ix4>| flat32(&s.get_value().unwrap());
    let two = |s: &Shared<f32, ndarray::Ix2>| flat32(&s.get_value().unwrap());
    let one = |s: &Shared<f32, ndarray::Ix1>| flat32(&s.get_value().unwrap());
    for (name, a, b) in [
        ("w0", four(&cpu.w0), four(&g.w0)),
        ("b0", one(&cpu.b0), one(&g.b0)),
        ("w1", four(&cpu.w1), four(&g.w1)),
        ("b1", one(&cpu.b1), one(&g.b1)),
        ("w2", two(&cpu.w2), two(&g.w2)),
        ("b2", one(&cpu.b2), one(&g.b2)),
        ("w3", two(&cpu.w3), two(&g.w3)),
        ("b3", one(&cpu.b3), one(&g.b3)),
    ] {
        close(&format!("{what}: {name} after 2 steps"), dev, &a, &b, 1e-4);
    }
}

/// The staged data-parallel step on a GPU, both ways: the gradient part's outputs go into the
/// communicator's device flat buffer and the update part reads the summed gradients there (as
/// with NCCL), or they come back into the host flat buffer (as with MPI).
#[test]
fn a_staged_data_parallel_lenet_step_runs_alike() {
    let (x, y, cpu, want) = lenet_case(920, 7, 2);
    let mut comm = tensor_fn::dist::Communicator::single();
    comm.set_stage_alone(true);
    for (dev, host) in devices().into_iter().flat_map(|d| [(d, false), (d, true)]) {
        comm.set_host_staging(host);
        assert_eq!(comm.reduces_on(dev), !host);
        let mut g = lenet();
        g.to_device(dev).expect("to device");
        let got: Vec<f32> = (0..2)
            .map(|_| {
                g.train_data_parallel(&mut comm, x.view(), y.view(), 0.1)
                    .expect("gpu")
            })
            .collect();
        let what = if host {
            "staged through the host"
        } else {
            "staged on the device"
        };
        lenet_alike(what, dev, &cpu, &want, &g, &got);
    }
}

#[test]
fn a_lenet_training_step_runs_alike() {
    let (x, y, cpu, want) = lenet_case(919, 3, 1);
    for dev in devices() {
        let mut g = lenet();
        g.to_device(dev).expect("to device");
        let got: Vec<f32> = (0..2)
            .map(|_| g.train(x.view(), y.view(), 0.1).expect("gpu"))
            .collect();
        lenet_alike("fused", dev, &cpu, &want, &g, &got);
    }
}
