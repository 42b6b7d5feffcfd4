use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n, 1, 28, 28];
    y = max_pool(x, [2]);
}

fn main() {}
