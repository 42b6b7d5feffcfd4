use tensor_fn::prelude::*;

tensor_fn! {
    pub struct Model { weights: f32[n] }

    impl Model {
        pub fn train(&mut self, x: f32[n], lr: f32) -> f32 {
            let cost = sum(weights * x);
            weight -= lr * grad(cost, weights);
            cost
        }
    }
}

fn main() {}
