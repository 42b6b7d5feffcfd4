use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n, 784], y: i64[n];
    z = reshape(y, [n, 1]);
}

fn main() {}
