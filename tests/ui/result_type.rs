use tensor_fn::prelude::*;

tensor_fn! {
    pub struct Model { w: f32[784, h], b: f32[h] }

    impl Model {
        pub fn hidden(&self, x: f32[n, 784]) -> f32[n, 784] {
            sigmoid(dot(x, w) + b)
        }
    }
}

fn main() {}
