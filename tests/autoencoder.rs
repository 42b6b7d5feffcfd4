//! The seed's autoencoder as a library user writes it: training on a slice of the shipped
//! MNIST lowers the cost and changes the filters, bad shapes are errors, and the result matches
//! a plain re-implementation. (That a step allocates nothing after the first is
//! `tests/zero_alloc.rs`, a binary of its own.)

use ndarray::{s, Array1, Array2, ArrayView2};
use tensor_fn::data::mnist::Mnist;
use tensor_fn::prelude::*;

/// The model exactly as the main job defines it.
#[allow(dead_code)]
#[path = "../examples/autoencoder.rs"]
mod example;
use example::Autoencoder;

mod common;
use common::init;

fn images() -> Array2<f32> {
    let data = Mnist::load_default().expect("the shipped MNIST loads");
    data.train_images.slice(s![..6000, ..]).to_owned()
}

#[test]
fn training_lowers_the_cost_and_changes_the_filters() {
    let x = images();
    let hidden = 64;
    let w0 = init(hidden);
    let mut m = Autoencoder::new(w0.clone(), Array1::zeros(hidden), Array1::zeros(784)).unwrap();
    let mut costs = Vec::new();
    for i in 0..300 {
        let batch = x.slice(s![i * 20..(i + 1) * 20, ..]);
        costs.push(m.train(batch, 0.1).unwrap());
    }
    let first: f32 = costs[..20].iter().sum::<f32>() / 20.0;
    let last: f32 = costs[280..].iter().sum::<f32>() / 20.0;
    assert!(costs.iter().all(|c| c.is_finite()));
    assert!(last < 0.7 * first, "cost went from {first} to {last}");
    let moved = (&m.w.value().unwrap() - &w0).mapv(f32::abs).sum() / w0.len() as f32;
    assert!(moved > 1e-3, "filters barely changed: mean |dW| = {moved}");
}

/// The same step written by hand (forward, backprop) in f64, the way the numpy peer does it.
fn reference_step(
    w: &mut Array2<f64>,
    b1: &mut Array1<f64>,
    b2: &mut Array1<f64>,
    x: ArrayView2<f64>,
    lr: f64,
) -> f64 {
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    let h = (x.dot(w) + &*b1).mapv(sig);
    let out = (h.dot(&w.t()) + &*b2).mapv(sig);
    let n = x.nrows() as f64;
    let cost =
        -(&x * &out.mapv(f64::ln) + &x.mapv(|v| 1.0 - v) * &out.mapv(|o| (1.0 - o).ln())).sum() / n;
    let g2 = (&out - &x) / n;
    let gh = g2.dot(w) * &h * &h.mapv(|v| 1.0 - v);
    let dw = x.t().dot(&gh) + g2.t().dot(&h);
    *w -= &(dw * lr);
    *b1 -= &(gh.sum_axis(ndarray::Axis(0)) * lr);
    *b2 -= &(g2.sum_axis(ndarray::Axis(0)) * lr);
    cost
}

#[test]
fn matches_a_hand_written_backprop() {
    let x = images();
    let hidden = 32;
    let w0 = init(hidden);
    let mut m = Autoencoder::new(w0.clone(), Array1::zeros(hidden), Array1::zeros(784)).unwrap();
    let (mut w, mut b1, mut b2) = (
        w0.mapv(f64::from),
        Array1::<f64>::zeros(hidden),
        Array1::<f64>::zeros(784),
    );
    for i in 0..50 {
        let batch = x.slice(s![i * 20..(i + 1) * 20, ..]);
        let ours = m.train(batch, 0.1).unwrap() as f64;
        let want = reference_step(&mut w, &mut b1, &mut b2, batch.mapv(f64::from).view(), 0.1);
        assert!(
            (ours - want).abs() <= 1e-4 * want.abs(),
            "step {i}: cost {ours} vs {want}"
        );
    }
    let dw = (&m.w.value().unwrap().mapv(f64::from) - &w)
        .mapv(f64::abs)
        .fold(0.0f64, |a, &b| a.max(b));
    assert!(dw < 1e-4, "max |W - W_ref| = {dw}");
}

#[test]
fn wrong_shapes_are_errors_naming_the_argument() {
    let hidden = 8;
    let mut m = Autoencoder::new(init(hidden), Array1::zeros(hidden), Array1::zeros(784)).unwrap();
    let bad = Array2::<f32>::zeros((20, 783));
    let e = m.train(bad.view(), 0.1).unwrap_err().to_string();
    assert_eq!(
        e,
        "argument `x` has size 783 in axis 1, but its type `f32[b, 784]` says 784"
    );
    // Parameters whose symbolic dims disagree are refused at construction.
    let e =
        Autoencoder::new(init(hidden), Array1::zeros(hidden + 1), Array1::zeros(784)).unwrap_err();
    assert_eq!(e.to_string(), "dim `h` is 8 from `w` but 9 from `b1`");
}
