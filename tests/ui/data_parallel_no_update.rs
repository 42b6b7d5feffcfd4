use tensor_fn::prelude::*;

tensor_fn! {
    pub struct Model { w: f32[4, 3] }
    impl Model {
        #[data_parallel]
        pub fn cost(&mut self, x: f32[n, 4]) -> f32 {
            mean(dot(x, w))
        }
    }
}

fn main() {}
