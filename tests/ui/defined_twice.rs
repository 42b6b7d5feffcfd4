use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n];
    y = exp(x);
    y = log(x);
}

fn main() {}
