use tensor_fn::prelude::*;

tensor_fn! {
    weights: f64[n], x: f64[n];
    y = dot(weight, x);
}

fn main() {}
