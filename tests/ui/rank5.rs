use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n, 1, 2, 3, 4];
    y = exp(x);
}

fn main() {}
