use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n, 1, 4, 4], w: f32[2, 1, 5, 5];
    y = conv2d(x, w);
}

fn main() {}
