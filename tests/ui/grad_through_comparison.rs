use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n], y: f64[n];
    g = grad(sum(gt(x, y)), x);
}

fn main() {}
