//! The deeplearning.net tutorial "Classifying MNIST digits using Logistic Regression"
//! (`logistic_sgd.py`), written with `tensor_fn!`: softmax regression, minibatch 600, learning
//! rate 0.13, zero initial weights, at most 1000 epochs with the tutorial's early stopping
//! (patience 5000 steps). The tutorial reports a test error of 7.489% after 74 epochs.
//!
//! Run: `cargo run --release --example logistic_sgd -- --help`

use std::time::Instant;

use clap::Parser;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use tensor_fn::io::Checkpoint;
use tensor_fn::prelude::*;

#[path = "tutorials/mod.rs"]
pub mod tutorials;
use tutorials::{Classifier, Common, Data, Schedule};

tensor_fn! {
    /// `p(y | x) = softmax(x W + b)`.
    pub struct LogisticRegression { w: f32[784, 10], b: f32[10] }

    impl LogisticRegression {
        /// One SGD step on the negative log-likelihood of the labels; returns it (before
        /// the step), as the tutorial's `train_model` does.
        pub fn train(&mut self, x: f32[n, 784], y: i64[n], lr: f32) -> f32 {
            let p_y_given_x = softmax(dot(x, w) + b);
            let cost = -mean(log(p_y_given_x)[arange(n), y]);
            w -= lr * grad(cost, w);
            b -= lr * grad(cost, b);
            cost
        }

        /// The fraction of misclassified images (the tutorial's `errors`).
        pub fn errors(&self, x: f32[n, 784], y: i64[n]) -> f32 {
            mean(neq(argmax(softmax(dot(x, w) + b), axis = 1), y))
        }
    }
}

impl Classifier for LogisticRegression {
    fn step(
        &mut self,
        x: ArrayView2<f32>,
        y: ArrayView1<i64>,
        lr: f32,
    ) -> Result<f32, tensor_fn::Error> {
        self.train(x, y, lr)
    }
    fn errors(&self, x: ArrayView2<f32>, y: ArrayView1<i64>) -> Result<f32, tensor_fn::Error> {
        LogisticRegression::errors(self, x, y)
    }
    fn snapshot(&self, epoch: usize) -> Result<Checkpoint, tensor_fn::Error> {
        let mut ck = Checkpoint::new(epoch, 10, 0);
        ck.insert("w", &self.w.get_value()?.view())
            .insert("b", &self.b.get_value()?.view());
        Ok(ck)
    }
    fn restore(ck: &Checkpoint) -> Result<Self, tensor_fn::Error> {
        LogisticRegression::new(
            ck.matrix("w", (784, 10))?.to_owned(),
            ck.vector("b", 10)?.to_owned(),
        )
    }
}

/// Softmax regression on MNIST with the tutorial's early stopping.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// At most this many epochs (the tutorial's n_epochs).
    #[arg(long, default_value_t = 1000, value_parser = tutorials::at_least_one)]
    epochs: usize,
    /// Minibatch size.
    #[arg(long, default_value_t = 600, value_parser = tutorials::at_least_one)]
    batch: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.13, value_parser = tutorials::positive)]
    lr: f32,
    /// Steps to look at however bad validation gets (the tutorial's patience).
    #[arg(long, default_value_t = 5000, value_parser = tutorials::at_least_one)]
    patience: usize,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let wall = Instant::now();
    let device = args.common.device()?;
    let data = Data::load(&args.common)?;
    let mut model = LogisticRegression::new(Array2::zeros((784, 10)), Array1::zeros(10))?;
    model.to_device(device)?;
    let schedule = Schedule {
        max_epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        patience: args.patience,
    };
    let fit = tutorials::fit(&mut model, &data, &args.common, &schedule)?;
    tutorials::report::<LogisticRegression>(
        "logistic_sgd",
        device,
        &fit,
        &data,
        &args.common,
        wall,
        &[],
    )
}
