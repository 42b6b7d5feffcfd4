use tensor_fn::prelude::*;

// Errors in independent equations are all reported in one run, and a failed equation does not
// cause follow-on errors where it is used (`uses_hidden`).
tensor_fn! {
    x: f32[b, 784], w: f32[784, h], v: f32[h];
    hidden = sigmoid(dot(x, w) + bais);
    scores = dot(x, v);
    total = sum(x, axis = 2);
    uses_hidden = mean(hidden);
}

fn main() {}
