use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n, 1, 28, 28], w: f32[20, 1, 5, 5];
    y = conv2d(x, w, filter_flip = 1);
}

fn main() {}
