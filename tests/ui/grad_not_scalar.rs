use tensor_fn::prelude::*;

tensor_fn! {
    w: f64[n, k], x: f64[k];
    y = dot(w, x);
    g = grad(y, w);
}

fn main() {}
