use tensor_fn::prelude::*;

tensor_fn! {
    p: f32[n, k], y: f32[n];
    cost = -mean(log_softmax(p)[arange(n), y]);
}

fn main() {}
