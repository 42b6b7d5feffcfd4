//! The seed's autoencoder as the main job writes it, with its data-parallel step, shared by
//! the tests of data parallelism.

use tensor_fn::prelude::*;

tensor_fn! {
    /// The seed's autoencoder with tied weights.
    pub struct Autoencoder { w: f32[784, h], b1: f32[h], b2: f32[784] }

    impl Autoencoder {
        #[data_parallel]
        pub fn train(&mut self, x: f32[b, 784], lr: f32) -> f32 {
            let hidden = sigmoid(dot(x, w) + b1);
            let output = sigmoid(dot(hidden, w.T) + b2);
            let cost = mean(-sum(x * log(output) + (1 - x) * log(1 - output), axis = 1));
            w -= lr * grad(cost, w);
            b1 -= lr * grad(cost, b1);
            b2 -= lr * grad(cost, b2);
            cost
        }
    }
}
