use tensor_fn::prelude::*;

tensor_fn! {
    a: f64[n, m], b: f64[n];
    c = a * b;
}

fn main() {}
