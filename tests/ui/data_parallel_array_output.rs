use tensor_fn::prelude::*;

tensor_fn! {
    pub struct Model { w: f32[4, 3] }
    impl Model {
        #[data_parallel]
        pub fn train(&mut self, x: f32[n, 4], lr: f32) -> f32[n, 3] {
            let h = tanh(dot(x, w));
            w -= lr * grad(mean(h), w);
            h
        }
    }
}

fn main() {}
