use tensor_fn::prelude::*;

tensor_fn! {
    x: f64[n];
    y = x ** 2;
}

fn main() {
    let x = ndarray::arr1(&[1.0, 2.0]);
    let _ = y(x.view());
}
