use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n, 784];
    y = reshape(x, [n, 1, 28, 27]);
}

fn main() {}
