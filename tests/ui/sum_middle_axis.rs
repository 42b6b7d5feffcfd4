use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n, 3, 4, 4];
    y = sum(x, axis = 1);
}

fn main() {}
