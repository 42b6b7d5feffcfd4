use tensor_fn::prelude::*;

fn main() {
    let _f = tensor_fn!(#[data_parallel] |x: f64[n]| sum(x));
}
