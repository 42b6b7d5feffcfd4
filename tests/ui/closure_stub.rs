use tensor_fn::prelude::*;

// A closure that fails to compile still has its declared signature: calling it adds no errors.
fn main() {
    let f = tensor_fn!(|x: f64[n, m]| cumsum(x));
    let _ = f(ndarray::Array2::zeros((2, 2)).view());
}
