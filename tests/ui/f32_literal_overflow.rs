use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n];
    y = x * 1e40;
}

fn main() {}
