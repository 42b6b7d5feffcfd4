//! The first half of the seed ("theano, autoencoders and mnist"), in tensor-fn, in its order:
//! symbolic variables and their types, expressions, compiled functions, `grad`, shared
//! variables, a function with updates, and `x + (-x)` simplifying to 0.
//!
//! Run: `cargo run --release --example theano_intro`

use ndarray::{arr1, Array2};
use tensor_fn::prelude::*;

// Theano: x = T.dscalar('scalar_x'); v = T.dvector('vector_v'); A = T.dmatrix('matrix_A').
// Here variables are declared with their types; each expression is a compiled function.
tensor_fn! {
    x: f64, a: f64[n, m], v: f64[m];
    pub x_2 = x * x;
    pub x_10 = pow(x, 10);
    pub av = dot(a, v);
}

// The seed's "silly" function: wx = dot(w, x), cost = mean(wx), w updated by SGD.
tensor_fn! {
    /// A shared matrix and a function that returns [wx, cost] and updates it.
    pub struct Silly { w: f64[2, 3] }

    impl Silly {
        pub fn f(&mut self, x: f64[3]) -> (f64[2], f64) {
            let wx = dot(w, x);
            let cost = mean(wx);
            w -= 0.1 * grad(cost, w);
            (wx, cost)
        }
    }
}

fn main() -> Result<(), tensor_fn::Error> {
    println!("== symbolic variables and their types");
    // Theano prints `scalar_x`, `TensorType(float64, scalar)`; here a variable is its declaration.
    println!("x: f64        (a scalar)");
    println!("v: f64[m]     (a vector; m is bound when a function is called)");
    println!("a: f64[n, m]  (a matrix)");
    println!("\n== expressions");
    println!("x_2 = {}    : {}", x_2::INFO.expr, x_2::INFO.signature);
    println!("x_10 = {}   : {}", x_10::INFO.expr, x_10::INFO.signature);
    println!("av = {}  : {}", av::INFO.expr, av::INFO.signature);
    println!("x_2(3) = {}, x_10(2) = {}", x_2(3.0)?, x_10(2.0)?);

    println!("\n== a compiled function: f = function([A, v], dot(A, v))");
    let f = tensor_fn!(|a: f64[n, m], v: f64[m]| dot(a, v));
    let m = Array2::<f64>::ones((2, 2));
    let vec = arr1(&[1.0, 2.0]);
    println!("f(ones(2, 2), [1, 2]) = {}", f(m.view(), vec.view())?);

    println!("\n== grad, simplified at compile time");
    let g = tensor_fn!(|v: f64[n], w: f64[n]| grad(dot(v, w), w));
    println!("grad(dot(v, w), w) = {}", g.info.expr);
    println!(
        "at v = [0, 0], w = [1, 2]: {}",
        g(arr1(&[0.0, 0.0]).view(), arr1(&[1.0, 2.0]).view())?
    );

    println!("\n== shared variables");
    let mut shared = Shared::new("shared_var", Array2::<f64>::ones((2, 3)));
    println!("{} = {}", shared.name(), shared.get_value()?);
    shared.set_value(Array2::zeros((2, 3)))?;
    println!("after set_value(zeros): {}", shared.get_value()?);

    println!("\n== updates: f(x) returns [wx, cost] and sets w = w - 0.1 * grad(cost, w)");
    let mut silly = Silly::new(shared.into_value()?)?;
    for step in 1..=2 {
        let (wx, cost) = silly.f(arr1(&[1.0, 1.0, 1.0]).view())?;
        println!(
            "call {step}: wx = {wx}, cost = {cost}, w = {}",
            silly.w.get_value()?
        );
    }
    println!("update rule: {}", Silly::F_INFO.expr);

    println!("\n== h = f + g with g = -f is constantly zero");
    let h = tensor_fn!(|x: f64| x + (-x));
    println!(
        "h(x) = {}   (rewrites: {})",
        h.info.expr,
        h.info.rewrites.trim()
    );
    println!("h(42) = {}", h(42.0)?);
    Ok(())
}
