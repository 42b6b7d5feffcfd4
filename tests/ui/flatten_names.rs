use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n, 784], z: f32[b, n];
    y = flatten(z, 1);
}

fn main() {}
