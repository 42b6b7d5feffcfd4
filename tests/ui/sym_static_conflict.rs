use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n], y: f64[3];
    z = x + y;
}

fn main() {}
