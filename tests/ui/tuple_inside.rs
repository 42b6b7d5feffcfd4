use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n];
    y = exp((x, x));
}

fn main() {}
