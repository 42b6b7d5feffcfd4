use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n, m];
    y = exp(x, axis = 0);
}

fn main() {}
