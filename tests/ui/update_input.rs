use tensor_fn::prelude::*;

tensor_fn! {
    pub struct Model { w: f32[n] }

    impl Model {
        pub fn train(&mut self, x: f32[n], lr: f32) -> f32 {
            let cost = sum(w * x);
            x -= lr * grad(cost, x);
            cost
        }
    }
}

fn main() {}
