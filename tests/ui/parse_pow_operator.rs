use tensor_fn::prelude::*;

fn main() {
    let _f = tensor_fn!(|x: f64[n]| x ** 2);
}
