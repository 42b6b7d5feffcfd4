use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n, 784];
    y = reshape(x, [1, n, 28, 28]);
}

fn main() {}
