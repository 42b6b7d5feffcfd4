use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n];
    y = x * sigmoid;
}

fn main() {}
