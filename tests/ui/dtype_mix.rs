use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[n], y: f64[n];
    z = x - y;
}

fn main() {}
