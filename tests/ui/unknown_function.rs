use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n];
    y = sigmod(x);
}

fn main() {
    // The stub keeps the declared signature: calling `y` adds no errors of its own.
    let x = ndarray::arr1(&[1.0, 2.0]);
    let _ = y(x.view());
}
