use tensor_fn::prelude::*;

tensor_fn! {
    w: f64[n], b: f64[n], x: f64[n];
    cost = sum(w * x);
    g = grad(cost, b);
}

fn main() {}
