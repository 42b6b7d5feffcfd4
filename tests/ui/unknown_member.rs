use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n, m];
    y = x.shape;
}

fn main() {}
