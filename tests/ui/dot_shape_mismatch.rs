use tensor_fn::prelude::*;

tensor_fn! {
    x: f32[b, 784], w: f32[500, 784];
    hidden = dot(x, w);
}

fn main() {}
