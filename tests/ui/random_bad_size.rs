use tensor_fn::prelude::*;

tensor_fn! {
    pub struct Dae { w: f32[m, h] }
    impl Dae {
        pub fn corrupt(&self, x: f32[n, m]) -> f32[n, m] {
            binomial(x, 0.7) * x
        }
    }
}

fn main() {}
