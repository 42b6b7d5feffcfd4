use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n], x: f64[m];
    y = exp(x);
}

fn main() {}
