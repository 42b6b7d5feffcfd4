use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n, 1, 28, 28], w: f32[28, 10];
    y = dot(x, w);
}

fn main() {}
