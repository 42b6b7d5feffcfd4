use tensor_fn::prelude::*;

tensor_fn! {
    a: f32[784, b], w: f32[784, 500];
    h = dot(a, w);
}

fn main() {}
