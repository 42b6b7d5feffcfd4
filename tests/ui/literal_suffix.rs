use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n];
    y = x * 2.0f64;
}

fn main() {}
