use tensor_fn::prelude::*;

tensor_fn! {
    w: f64[n], x: f64[n];
    h = w * x;
    cost = sum(h);
    g = grad(cost, h);
}

fn main() {}
