use tensor_fn::prelude::*;

tensor_fn! {
    pub struct Linear { w: f32[n, k], b: f32[k] }

    impl Linear {
        pub fn train(&mut self, x: f32[k], lr: f32) -> f32 {
            let cost = sum(dot(w, x));
            b -= lr * grad(cost, w);
            cost
        }
    }
}

fn main() {}
