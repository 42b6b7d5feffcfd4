use tensor_fn::prelude::*;

tensor_fn! {
    pub struct Model { w: f32[4, 3], mu: f32[4] }
    impl Model {
        #[data_parallel]
        pub fn train(&mut self, x: f32[n, 4], lr: f32) -> f32 {
            let cost = mean(tanh(dot(x - mu, w)));
            w -= lr * grad(cost, w);
            mu = 0.9 * mu + 0.1 * mean(x, axis = 0);
            cost
        }
    }
}

fn main() {}
