use tensor_fn::prelude::*;

tensor_fn! {
    a: f64[n, m], b: f64[m];
    c = dot(a, b, a);
}

fn main() {}
