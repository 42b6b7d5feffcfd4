use tensor_fn::prelude::*;

tensor_fn! {
    pub struct Model { w: f32[4, 3] }
    impl Model {
        #[data_parallel]
        pub fn train(&mut self, x: f32[n, 4], lr: f32) -> f32 {
            let cost = mean(tanh(dot(x, w)));
            w -= lr * grad(cost, w) + 0.001 * normal(shape(w), 0, 1);
            cost
        }
    }
}

fn main() {}
