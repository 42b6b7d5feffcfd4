use tensor_fn::prelude::*;

tensor_fn! {
    x: float32[n];
    y = exp(x);
}

fn main() {}
