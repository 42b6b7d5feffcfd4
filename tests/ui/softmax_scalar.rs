use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n];
    p = softmax(sum(x));
}

fn main() {}
