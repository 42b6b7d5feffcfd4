use tensor_fn::prelude::*;

tensor_fn! {
    a: f64[n, m];
    c = dot(a);
}

fn main() {}
