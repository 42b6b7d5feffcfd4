//! The LeNet tutorial's training step, shared by the tests that run it: 28 x 28 images, 20 and
//! 50 filters of 5 x 5 (convolutions and their input and filter gradients), 2 x 2 pooling (and
//! its gradient), channel biases, tanh, a hidden layer of 500 and softmax.

use tensor_fn::prelude::*;

tensor_fn! {
    pub struct LeNet {
        w0: f32[20, 1, 5, 5], b0: f32[20], w1: f32[50, 20, 5, 5], b1: f32[50],
        w2: f32[800, 500], b2: f32[500], w3: f32[500, 10], b3: f32[10]
    }
    impl LeNet {
        #[data_parallel]
        pub fn train(&mut self, x: f32[n, 784], y: i64[n], lr: f32) -> f32 {
            let h0 = tanh(max_pool(conv2d(reshape(x, [n, 1, 28, 28]), w0), [2, 2]) + reshape(b0, [1, 20, 1, 1]));
            let h1 = tanh(max_pool(conv2d(h0, w1), [2, 2]) + reshape(b1, [1, 50, 1, 1]));
            let h2 = tanh(dot(flatten(h1, 2), w2) + b2);
            let cost = -mean(log_softmax(dot(h2, w3) + b3)[arange(n), y]);
            w0 -= lr * grad(cost, w0);
            b0 -= lr * grad(cost, b0);
            w1 -= lr * grad(cost, w1);
            b1 -= lr * grad(cost, b1);
            w2 -= lr * grad(cost, w2);
            b2 -= lr * grad(cost, b2);
            w3 -= lr * grad(cost, w3);
            b3 -= lr * grad(cost, b3);
            cost
        }
    }
}
