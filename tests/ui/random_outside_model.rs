use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n, m];
    // A corruption needs a stream to draw from, which only a model keeps.
    noisy = binomial(shape(x), 0.7) * x;
}

fn main() {}
