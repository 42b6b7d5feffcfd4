use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n], k: f64;
    y = pow(x, k);
}

fn main() {}
