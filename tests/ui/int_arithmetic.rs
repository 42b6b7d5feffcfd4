use tensor_fn::prelude::*;

tensor_fn! {
    y: i64[n], x: f64[n];
    z = x + y * 2;
}

fn main() {}
