use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n, k], y: i64[n];
    // `k` is the width of `x`, which `hot` does not take.
    hot = onehot(y, k);
}

fn main() {}
