use tensor_fn::prelude::*;

tensor_fn! {
    pub struct Model { w: f32[784, h], v: f32[h, 784] }

    impl Model {
        pub fn train(&mut self, x: f32[b, 784], lr: f32) -> f32 {
            let cost = mean(dot(dot(x, w), v));
            w -= lr * grad(cost, v);
            cost
        }
    }
}

fn main() {}
