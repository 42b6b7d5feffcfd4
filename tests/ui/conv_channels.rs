use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n, 3, 28, 28], w: f32[20, 1, 5, 5];
    y = conv2d(x, w);
}

fn main() {}
