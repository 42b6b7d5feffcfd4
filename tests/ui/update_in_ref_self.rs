use tensor_fn::prelude::*;

tensor_fn! {
    pub struct Model { w: f32[n] }

    impl Model {
        pub fn train(&self, x: f32[n], lr: f32) -> f32 {
            let cost = sum(w * x);
            w -= lr * grad(cost, w);
            cost
        }
    }
}

fn main() {}
