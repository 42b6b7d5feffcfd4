use tensor_fn::prelude::*;

// A `let` whose definition fails is reported once; its later uses add no errors.
tensor_fn! {
    pub struct Model { w: f32[784, h], b: f32[h] }

    impl Model {
        pub fn train(&mut self, x: f32[n, 784], lr: f32) -> f32 {
            let hidden = sigmoid(dot(x, wt) + b);
            let cost = mean(hidden * hidden);
            w -= lr * grad(cost, w);
            b -= lr * grad(cost, b);
            cost
        }
    }
}

fn main() {}
