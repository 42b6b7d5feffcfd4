use tensor_fn::prelude::*;

tensor_fn! {
    w: f64[n], x: f64[n];
    g = grad(sum(w * x), w * 2);
}

fn main() {}
