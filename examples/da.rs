//! The deeplearning.net tutorial "Denoising Autoencoders" (`dA.py`), written with
//! `tensor_fn!`: 784-500 with tied weights, sigmoid units, cross-entropy against the clean
//! input, learning rate 0.1, minibatch 20, 15 epochs, once without corruption and once with
//! 30% of the pixels zeroed (a fresh Bernoulli mask per minibatch, drawn inside the compiled
//! step). The initial weights are the tutorial's (numpy `RandomState(123)`), and the mask
//! stream is seeded, as the tutorial seeds its `RandomStreams`, by that generator's first
//! `randint(2**30)`. Each run writes its filters as a picture like the tutorial's.
//!
//! Run: `cargo run --release --example da -- --help`

use std::path::Path;
use std::time::Instant;

use clap::Parser;
use ndarray::{s, Array1};
use tensor_fn::io::{self, Checkpoint};
use tensor_fn::prelude::*;

#[path = "tutorials/mod.rs"]
mod tutorials;
use tutorials::{json_num, json_str, Common, Data, Epoch, NumpyRandomState};

tensor_fn! {
    /// `y = sigmoid(x~ W + b)`, `z = sigmoid(y W^T + b')`, `x~` the corrupted input.
    pub struct DenoisingAutoencoder { w: f32[784, h], b: f32[h], b_prime: f32[784] }

    impl DenoisingAutoencoder {
        /// One SGD step: zero each pixel with probability `corruption`, reconstruct, and
        /// descend the cross-entropy against the clean input; returns the cost before it.
        pub fn train(&mut self, x: f32[n, 784], lr: f32, corruption: f32) -> f32 {
            let tilde_x = binomial(shape(x), 1 - corruption) * x;
            let y = sigmoid(dot(tilde_x, w) + b);
            let z = sigmoid(dot(y, w.T) + b_prime);
            let cost = mean(-sum(x * log(z) + (1 - x) * log(1 - z), axis = 1));
            w -= lr * grad(cost, w);
            b -= lr * grad(cost, b);
            b_prime -= lr * grad(cost, b_prime);
            cost
        }
    }
}

/// Denoising autoencoders on MNIST, one run per corruption level.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Epochs per run.
    #[arg(long, default_value_t = 15, value_parser = tutorials::at_least_one)]
    epochs: usize,
    /// Minibatch size.
    #[arg(long, default_value_t = 20, value_parser = tutorials::at_least_one)]
    batch: usize,
    /// Hidden units.
    #[arg(long, default_value_t = 500, value_parser = tutorials::at_least_one)]
    hidden: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.1, value_parser = tutorials::positive)]
    lr: f32,
    /// The corruption levels, one run each (fractions of pixels zeroed).
    #[arg(long, value_delimiter = ',', default_value = "0,0.3", value_parser = tutorials::fraction)]
    corruption: Vec<f32>,
    /// Seed of numpy's RandomState: the initial weights and the mask stream's seed.
    #[arg(long, default_value_t = 123)]
    seed: u32,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let device = args.common.device()?;
    let data = Data::load(&args.common)?;
    let steps = data.train.x.nrows() / args.batch;
    if steps == 0 {
        return Err(format!("--batch {}: larger than the training set", args.batch).into());
    }
    let out = args.common.out_dir()?.to_path_buf();
    for &level in &args.corruption {
        let dir = out.join(format!("corruption_{}", (level * 100.0).round() as u32));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        train_one(&args, device, &data, level, steps, &dir)?;
    }
    Ok(())
}

fn train_one(
    args: &Args,
    device: Device,
    data: &Data,
    level: f32,
    steps: usize,
    dir: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let wall = Instant::now();
    // As the tutorial, for every run: rng = RandomState(123); the stream's seed is
    // rng.randint(2**30); then W ~ U(+-4 sqrt(6 / (784 + h))) from rng; biases zero.
    let mut rng = NumpyRandomState::new(args.seed);
    let stream_seed = rng.randint_2_30();
    let h = args.hidden;
    let bound = 4.0 * (6.0 / (784.0 + h as f64)).sqrt();
    let w = rng.uniform(-bound, bound, 784, h);
    let mut da = DenoisingAutoencoder::new(w, Array1::zeros(h), Array1::zeros(784))?;
    da.seed(stream_seed);
    da.to_device(device)?;
    println!(
        "corruption {:.0} %: stream seed {stream_seed}",
        level * 100.0
    );
    let mut epochs = Vec::new();
    for epoch in 1..=args.epochs {
        let bar = args.common.bar(steps, "epoch");
        bar.set_message(format!("{epoch} (corruption {:.0} %)", level * 100.0));
        let t = Instant::now();
        let mut total = 0.0f64;
        for i in 0..steps {
            let r = i * args.batch..(i + 1) * args.batch;
            let c = da.train(data.train.x.slice(s![r, ..]), args.lr, level)?;
            tutorials::require_finite_cost(epoch, i, c)?;
            total += c as f64;
            if i % 64 == 0 {
                bar.set_position(i as u64);
            }
        }
        let train_seconds = t.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let cost = total / steps as f64;
        println!("Training epoch {epoch}, cost {cost:.6} ({train_seconds:.3} s)");
        epochs.push(Epoch {
            epoch,
            cost,
            train_seconds,
            valid: None,
        });
        tutorials::write_epochs(dir, &epochs)?;
        snapshot(&da, epoch)?.save_atomic(dir.join("checkpoint.tfck"))?;
    }
    let w = da.w.get_value()?;
    io::write_filter_grid(dir.join("filters.png"), w.view(), h.min(100), 10)?;
    let seconds: Vec<f64> = epochs.iter().map(|e| e.train_seconds).collect();
    let wall = wall.elapsed().as_secs_f64();
    println!(
        "The {:.0} % corruption code ran for {wall:.1} s ({:.3} s of training per epoch); filters in {}",
        level * 100.0,
        tutorials::mean(&seconds),
        dir.join("filters.png").display()
    );
    tutorials::write_results(
        dir,
        &[
            ("model", json_str("da")),
            ("device", json_str(&device.to_string())),
            ("corruption", json_num(level as f64)),
            ("epochs", epochs.len().to_string()),
            (
                "final_cost",
                json_num(epochs.last().map(|e| e.cost).unwrap_or(f64::NAN)),
            ),
            (
                "train_seconds_per_epoch",
                json_num(tutorials::mean(&seconds)),
            ),
            ("wall_seconds", json_num(wall)),
        ],
    )?;
    Ok(())
}

/// The model, its random stream and where training stands, as a checkpoint.
fn snapshot(da: &DenoisingAutoencoder, epoch: usize) -> Result<Checkpoint, tensor_fn::Error> {
    let (seed, _) = da.random_stream();
    let mut ck = Checkpoint::new(epoch, da.b.shape()[0], seed);
    ck.insert("w", &da.w.get_value()?.view())
        .insert("b", &da.b.get_value()?.view())
        .insert("b_prime", &da.b_prime.get_value()?.view())
        .set_random_stream(da.random_stream());
    Ok(ck)
}
