use tensor_fn::prelude::*;

tensor_fn! {
    #[fast]
    x: f64[n];
    y = exp(x);
}

fn main() {}
