//! Per-call overhead of a tiny compiled function: `dot(2x2, 2)`, as the peers measure it
//! (PyTensor, JAX and numpy numbers are in the README).
//!
//! Run: `cargo run --release --example call_latency`

use std::hint::black_box;
use std::time::Instant;

use ndarray::{arr1, Array2};
use tensor_fn::prelude::*;

fn main() -> Result<(), tensor_fn::Error> {
    let f = tensor_fn!(|a: f64[n, m], v: f64[m]| dot(a, v));
    let a = Array2::<f64>::ones((2, 2));
    let v = arr1(&[1.0, 2.0]);
    assert_eq!(f(a.view(), v.view())?, arr1(&[3.0, 3.0]));
    let calls = 2_000_000;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..calls {
            black_box(f(black_box(a.view()), black_box(v.view()))?);
        }
        best = best.min(t.elapsed().as_secs_f64() / calls as f64);
    }
    println!(
        "dot(2x2, 2): {:.3} us per call (best of 5 x {calls} calls)",
        best * 1e6
    );
    Ok(())
}
