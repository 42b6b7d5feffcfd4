use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n, 784];
    y = max_pool(x, [2, 2]);
}

fn main() {}
