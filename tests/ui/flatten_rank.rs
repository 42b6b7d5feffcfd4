use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n, 1, 28, 28];
    y = flatten(x, 5);
}

fn main() {}
