use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n, m];
    s = x.sum();
}

fn main() {}
