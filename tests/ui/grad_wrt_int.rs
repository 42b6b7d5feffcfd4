use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n, k], y: i64[n];
    g = grad(-mean(log_softmax(x)[arange(n), y]), y);
}

fn main() {}
