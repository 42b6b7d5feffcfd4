use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n, m], k: f64;
    s = sum(x, axis = k);
}

fn main() {}
