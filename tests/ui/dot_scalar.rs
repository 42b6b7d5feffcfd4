use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n], s: f64;
    y = dot(x, s);
}

fn main() {}
