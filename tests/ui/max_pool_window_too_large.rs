use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n, 1, 3, 3];
    y = max_pool(x, [4, 2]);
}

fn main() {}
