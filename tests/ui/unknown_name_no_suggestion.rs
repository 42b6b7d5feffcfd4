use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n];
    y = x * bias;
}

fn main() {}
