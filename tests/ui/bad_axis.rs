use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n, m];
    s = sum(x, axis = 2);
}

fn main() {}
