use tensor_fn::prelude::*;

tensor_fn! {
    p: f32[n, k], y: i64[n];
    cost = -mean(log_softmax(p)[arange(k), y]);
}

fn main() {}
