use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[b, h, w];
    y = exp(x);
}

fn main() {}
