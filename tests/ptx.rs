//! Every PTX module the compiler emits goes through NVIDIA's `ptxas` for sm_80 and sm_90: the
//! examples' functions (the seed's autoencoder with its gradients included) and a spread of
//! ops, forms and dtypes. `ptxas` checks syntax, types and registers without a GPU, and no
//! kernel of any module may spill registers (stores or loads). It is found through `PTXAS`,
//! `PATH` or `.tools/ptxas` (`bash scripts/fetch-ptxas.sh`), and a missing one fails the test
//! under `CI=true`.

use tensor_fn::kernels::check::{assemble, check_no_spills, entry_names, ptxas_or_skip};
use tensor_fn::prelude::*;

#[allow(dead_code)]
#[path = "../examples/autoencoder.rs"]
mod autoencoder;
#[allow(dead_code)]
#[path = "../examples/theano_intro.rs"]
mod theano_intro;

tensor_fn! {
    x: f32[n, m], y: f32[m], c: f32;
    pub elementwise = exp(x) + log1p(y) * sqrt(abs(x)) - tanh(x) / (1 + softplus(-x)) + relu(x - c) + pow(x, 3) + pow(y, 0.5) + erf(x) + gelu(y);
    pub reductions = sum(maximum(x, y), axis = 0) + max(minimum(x, c), axis = 0) + mean(x);
    pub row_stats = max(x, axis = 1) - mean(sigmoid(x), axis = 1);
    pub gradient = grad(sum(tanh(dot(x, y)) * c), x);
}

tensor_fn! {
    a: f64[n, k], b: f64[k, m], v: f64[k];
    pub mm = dot(a, b);
    pub mv = dot(a, v);
    pub tn = dot(a.T, a);
    pub hvp = grad(sum(grad(sum(pow(v, 3)), v) * v), v);
    pub loss = mean(dot(a, b) * dot(a, b));
    pub dloss = grad(loss, b);
}

tensor_fn! {
    /// Classifiers: integer labels in and out, argmax along both axes, picking, softmax.
    pub struct Softmax { w: f32[m, k], b: f32[k] }
    impl Softmax {
        pub fn train(&mut self, x: f32[n, m], y: i32[n], lr: f32) -> f32 {
            let cost = -mean(log_softmax(dot(x, w) + b)[arange(n), y]);
            w -= lr * grad(cost, w);
            b -= lr * grad(cost, b);
            cost
        }
        pub fn predict(&self, x: f32[n, m], y: i64[n]) -> (i64[n], i64[k], f32, f32[n, k]) {
            let z = dot(x, w) + b;
            (
                argmax(z, axis = 1),
                argmax(z, axis = 0),
                mean(neq(argmax(softmax(z), axis = 1), y)),
                where(ge(z, 0), z, 0) * onehot(y, k) - max(z, axis = 1, keepdims = true),
            )
        }
    }
}

tensor_fn! {
    z: f64[n, k], y: i64[n];
    pub nll64 = -mean(log_softmax(z)[arange(n), y]);
    pub dnll64 = grad(nll64, z);
    pub top_all = argmax(sum(z, axis = 1));
}

tensor_fn! {
    /// Random draws: a denoising step in f32, every kind in f64.
    pub struct Noisy { w: f32[m, h], v: f64[m] }
    impl Noisy {
        pub fn step(&mut self, x: f32[n, m], lr: f32, level: f32) -> f32 {
            let y = sigmoid(dot(binomial(shape(x), 1 - level) * x, w));
            let z = sigmoid(dot(y, w.T));
            let cost = mean(-sum(x * log(z) + (1 - x) * log(1 - z), axis = 1));
            w -= lr * grad(cost, w);
            cost
        }
        pub fn draws(&self, u: f64[n, m]) -> (f64[n, m], f64[m], f64) {
            (uniform(shape(u), -1, 1) * u, max(normal(shape(u), 0, 2), axis = 0) + v, sum(binomial(shape(u), 0.5)))
        }
    }
}

tensor_fn! {
    /// The MLP tutorial's step: a tanh layer, softmax, and a squared-weights penalty (here
    /// on a bias too).
    pub struct Mlp { w1: f32[m, h], b1: f32[h], w2: f32[h, 10], b2: f32[10] }
    impl Mlp {
        pub fn train(&mut self, x: f32[n, m], y: i64[n], lr: f32, l2: f32) -> f32 {
            let hidden = tanh(dot(x, w1) + b1);
            let nll = -mean(log_softmax(dot(hidden, w2) + b2)[arange(n), y]);
            let cost = nll + l2 * (sum(w1 * w1) + sum(w2 * w2) + sum(b1 * b1));
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

tensor_fn! {
    x: f64[n, 3, 7, 9], w: f64[4, 3, 3, 2];
    /// Odd sizes in f64, without the flip, and a 3 x 2 window.
    pub xcorr_pool = grad(sum(max_pool(conv2d(x, w, filter_flip = false), [3, 2])), w);
}

fn functions() -> Vec<(&'static str, FnInfo)> {
    vec![
        ("autoencoder train", autoencoder::Autoencoder::TRAIN_INFO),
        ("autoencoder hidden", autoencoder::Autoencoder::HIDDEN_INFO),
        (
            "autoencoder reconstruct",
            autoencoder::Autoencoder::RECONSTRUCT_INFO,
        ),
        ("intro x_2", theano_intro::x_2::INFO),
        ("intro x_10", theano_intro::x_10::INFO),
        ("intro av", theano_intro::av::INFO),
        ("intro silly", theano_intro::Silly::F_INFO),
        (
            "closure dot",
            tensor_fn!(|a: f64[n, m], v: f64[m]| dot(a, v)).info,
        ),
        ("closure zero", tensor_fn!(|x: f32[n]| x + (-x)).info),
        (
            "closure scalar",
            tensor_fn!(|x: f64, y: f64| x * y + exp(x)).info,
        ),
        ("elementwise", elementwise::INFO),
        ("reductions", reductions::INFO),
        ("row_stats", row_stats::INFO),
        ("gradient", gradient::INFO),
        ("mm", mm::INFO),
        ("mv", mv::INFO),
        ("tn", tn::INFO),
        ("hvp", hvp::INFO),
        ("loss", loss::INFO),
        ("dloss", dloss::INFO),
        ("softmax train", Softmax::TRAIN_INFO),
        ("softmax predict", Softmax::PREDICT_INFO),
        ("nll64", nll64::INFO),
        ("dnll64", dnll64::INFO),
        ("top_all", top_all::INFO),
        ("noisy step", Noisy::STEP_INFO),
        ("noisy draws", Noisy::DRAWS_INFO),
        ("mlp train", Mlp::TRAIN_INFO),
        ("lenet train", LeNet::TRAIN_INFO),
        ("xcorr_pool", xcorr_pool::INFO),
    ]
}

#[test]
fn every_emitted_module_assembles_for_sm_80_and_sm_90() {
    let Some(ptxas) = ptxas_or_skip() else { return };
    let mut kernels = 0;
    for (name, info) in functions() {
        assert!(
            info.ptx.starts_with("//") || info.ptx.contains(".version 7.8"),
            "{name}: no header"
        );
        assert!(info.ptx.contains(".target sm_80"), "{name}");
        for arch in ["sm_80", "sm_90"] {
            let log = assemble(&ptxas, info.ptx, arch, &name.replace(' ', "_"));
            if entry_names(info.ptx).is_empty() {
                // Nothing to launch (the graph folded to constants): nothing for ptxas to report.
                assert!(!log.contains("entry function"), "{name}: {arch}\n{log}");
                continue;
            }
            // Every kernel of the module reported once, none spilling (stores or loads).
            if let Err(e) = check_no_spills(&log, info.ptx) {
                panic!("{name}, {arch}: {e}");
            }
        }
        kernels += entry_names(info.ptx).len();
    }
    // The per-module checks above must have looked at something.
    assert!(
        kernels > 20,
        "only {kernels} kernels in the emitted modules"
    );
    println!(
        "ptxas accepted {kernels} kernels of {} functions, none spilling",
        functions().len()
    );
}

#[test]
fn modules_are_deterministic_and_named_by_content() {
    let a = tensor_fn!(|x: f32[n]| sigmoid(x) * 2);
    let b = tensor_fn!(|x: f32[n]| sigmoid(x) * 2);
    assert_eq!(a.info.ptx, b.info.ptx);
    let c = tensor_fn!(|x: f32[n]| sigmoid(x) * 3);
    assert_ne!(a.info.ptx, c.info.ptx);
    // One launch per loop kernel of the plan here; names carry a content hash.
    assert!(a.info.launches.contains("tf_ew_"), "{}", a.info.launches);
}

#[test]
fn a_weight_penalty_costs_no_pass_of_its_own() {
    let info = Mlp::TRAIN_INFO;
    // Each weight matrix's update, decay included, is one GEMM into the weights.
    for w in ["b0 [m, h] +=", "b2 [h, 10] +="] {
        let line = info.plan.lines().find(|l| l.contains(w));
        assert!(
            line.is_some_and(|l| l.ends_with("beta = 1 - lr * 2 * l2")),
            "{w}: {}",
            info.plan
        );
    }
    // The bias's penalty, sum(b1 * b1), is summed in the pass that updates b1 (which reads
    // b1 anyway) rather than in one of its own: 17 kernels without that.
    assert!(
        info.plan
            .lines()
            .any(|l| l.contains("loop [h]") && l.contains("store") && l.contains("sum ->")),
        "{}",
        info.plan
    );
    assert_eq!(info.kernel_count(), 16, "{}", info.plan);
}

#[test]
fn the_seed_training_step_is_eleven_kernels() {
    let info = autoencoder::Autoencoder::TRAIN_INFO;
    // Four GEMMs and seven loop kernels: the loss, its gradient at the output and the
    // output-bias sums are one pass over [b, 784]. Both gradient contributions to W are one
    // kernel on the CPU (one pass over W), two GEMM launches on the GPU.
    assert_eq!(info.kernel_count(), 11, "{}", info.plan);
    let launches = info.launch_count();
    // The fused pass has a row sum and column sums: a row kernel and a column kernel.
    assert_eq!(launches, 14, "{}", info.launches);
}

#[test]
fn lenet_pools_inside_its_convolutions() {
    let plan = LeNet::TRAIN_INFO.plan;
    // Both layers' pooling runs inside the convolution that makes the maps, and the first
    // layer's pooling gradient inside the filter gradient that reads it, never stored; the
    // second layer's is read by two calls, so it is stored.
    let fused_forward = plan
        .lines()
        .filter(|l| l.contains("conv2d(") && l.contains(", then ") && l.contains("max_pool("))
        .count();
    assert_eq!(fused_forward, 2, "{plan}");
    let fused_backward: Vec<&str> = plan
        .lines()
        .filter(|l| l.contains("(not stored)"))
        .collect();
    assert_eq!(fused_backward.len(), 1, "{plan}");
    assert!(
        fused_backward[0].contains("conv2d_grad_filter(")
            && fused_backward[0].contains("max_pool_grad(")
    );
    assert_eq!(plan.matches("max_pool_grad(").count(), 2, "{plan}");
    // The GPU runs the fused pairs as their two programs, back to back.
    assert!(
        LeNet::TRAIN_INFO.launches.contains(", then max_pool("),
        "{}",
        LeNet::TRAIN_INFO.launches
    );
}
