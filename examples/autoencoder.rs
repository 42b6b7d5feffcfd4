//! The seed's second half: a tied-weights autoencoder on MNIST (784-500-784, sigmoid,
//! cross-entropy, plain SGD, learning rate 0.1, minibatch 20, 20 epochs), written with
//! `tensor_fn!` exactly as the seed defines it.
//!
//! Run: `cargo run --release --example autoencoder -- --help`

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{s, Array1, Array2};
use rand::{Rng, SeedableRng};
use tensor_fn::data::mnist::Mnist;
use tensor_fn::io::{self, Checkpoint, EpochCost, LinePlot};
use tensor_fn::prelude::*;

tensor_fn! {
    /// The seed's autoencoder with tied weights: `hidden = sigmoid(x W + b1)`,
    /// `output = sigmoid(hidden W^T + b2)`. The hidden size `h` is symbolic, so any `--hidden`
    /// works with one compiled model.
    pub struct Autoencoder { w: f32[784, h], b1: f32[h], b2: f32[784] }

    impl Autoencoder {
        /// One SGD step on a minibatch; returns the mean cross-entropy before the step.
        pub fn train(&mut self, x: f32[b, 784], lr: f32) -> f32 {
            let hidden = sigmoid(dot(x, w) + b1);
            let output = sigmoid(dot(hidden, w.T) + b2);
            let cost = mean(-sum(x * log(output) + (1 - x) * log(1 - output), axis = 1));
            w -= lr * grad(cost, w);
            b1 -= lr * grad(cost, b1);
            b2 -= lr * grad(cost, b2);
            cost
        }

        /// The hidden features of a batch (the seed's `get_hidden`).
        pub fn hidden(&self, x: f32[b, 784]) -> f32[b, h] {
            sigmoid(dot(x, w) + b1)
        }

        /// The reconstruction of a batch.
        pub fn reconstruct(&self, x: f32[b, 784]) -> f32[b, 784] {
            sigmoid(dot(sigmoid(dot(x, w) + b1), w.T) + b2)
        }
    }
}

/// Train the seed's autoencoder on MNIST.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Passes over the 50000 training images.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Minibatch size.
    #[arg(long, default_value_t = 20)]
    batch: usize,
    /// Hidden units.
    #[arg(long, default_value_t = 500)]
    hidden: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    /// Seed of the random initial weights.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// MNIST: a directory of IDX files or a mnist.pkl.gz (default: $TENSOR_FN_MNIST, else the
    /// shipped data/mnist).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Train on the first N training images only (default: the seed's 50000).
    #[arg(long)]
    limit: Option<usize>,
    /// Start from this W (a 784 x hidden .npy, e.g. the peers' `write_init.py` output).
    #[arg(long, value_name = "W.npy", conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Continue a run from its checkpoint (written to --out after every epoch).
    #[arg(long, value_name = "CHECKPOINT")]
    resume: Option<PathBuf>,
    /// Where the pictures, features, weights, costs and checkpoint go.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Device: cpu, cuda, cuda:N, ptx-vm (the PTX interpreter: slow, for checks) or best.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print one line per epoch without a progress bar (for logs and benchmarks).
    #[arg(long)]
    quiet: bool,
}

fn init_weights(hidden: usize, seed: u64) -> Array2<f32> {
    // The seed's initialisation: uniform in +-4 sqrt(6 / (hidden + visible)).
    let bound = 4.0 * (6.0 / (hidden as f64 + 784.0)).sqrt();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Array2::from_shape_fn((784, hidden), |_| rng.gen_range(-bound..bound) as f32)
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let device = if args.device == "best" {
        let (d, why) = Device::best_with_reason();
        if let Some(why) = why {
            eprintln!("--device best: using the CPU ({why})");
        }
        d
    } else {
        Device::parse(&args.device)?
    };
    if args.batch == 0 || args.hidden == 0 {
        return Err("--batch and --hidden must be at least 1".into());
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let t = Instant::now();
    let data = Mnist::load(args.data.as_deref())?;
    let (train, _valid) = data.seed_split();
    let train = match args.limit {
        Some(n) => train.slice_move(s![..n.min(train.nrows()), ..]),
        None => train,
    };
    eprintln!(
        "loaded {} training images in {:.2} s; device {device}",
        train.nrows(),
        t.elapsed().as_secs_f64()
    );

    // Initial parameters: a checkpoint, a W from numpy, or the seed's random init.
    let mut history: Vec<EpochCost> = Vec::new();
    let (mut model, first_epoch) = match (&args.resume, &args.init) {
        (Some(path), _) => {
            let ck = Checkpoint::load(path)?;
            let hidden = ck.hidden;
            let w = ck.matrix("w", (784, hidden))?.to_owned();
            let b1 = ck.vector("b1", hidden)?.to_owned();
            let b2 = ck.vector("b2", 784)?.to_owned();
            history = parse_history(ck.meta("history").unwrap_or(""));
            eprintln!("resuming after epoch {} from {}", ck.epoch, path.display());
            (Autoencoder::new(w, b1, b2)?, ck.epoch + 1)
        }
        (None, Some(path)) => {
            let w: Array2<f32> = io::read_npy_2d(path)?;
            if w.nrows() != 784 {
                return Err(format!(
                    "{}: W must have 784 rows, found {:?}",
                    path.display(),
                    w.shape()
                )
                .into());
            }
            let hidden = w.ncols();
            (
                Autoencoder::new(w, Array1::zeros(hidden), Array1::zeros(784))?,
                1,
            )
        }
        (None, None) => {
            let w = init_weights(args.hidden, args.seed);
            (
                Autoencoder::new(w, Array1::zeros(args.hidden), Array1::zeros(784))?,
                1,
            )
        }
    };
    let hidden = model.w.shape()[1];

    // On a GPU the parameters and the whole training set live in device memory; a step
    // reads its minibatch as a row range of the set (Theano's givens), and its cost is read
    // back once per epoch for all steps together.
    let train_set =
        if device.is_gpu() {
            let info = Autoencoder::TRAIN_INFO;
            eprintln!(
            "training step: {} kernel launches and {} parameter copies, replayed as one graph; \
             one copy in (the minibatch rows) and one out (the cost)",
            info.launch_count(),
            info.plan.lines().filter(|l| l.starts_with("update")).count(),
        );
            model.to_device(device)?;
            let mut set = Shared::new("train", train.to_owned());
            set.to_device(device)?;
            Some(set)
        } else {
            None
        };

    let steps = train.nrows() / args.batch;
    let mut seconds = Vec::new();
    for epoch in first_epoch..=args.epochs {
        let bar = if args.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(steps as u64)
        };
        bar.set_style(ProgressStyle::with_template(
            "epoch {msg} [{bar:30}] {pos}/{len} steps, {per_sec}, eta {eta}",
        )?);
        bar.set_message(epoch.to_string());
        let t = Instant::now();
        let mut total = 0.0f64;
        let mut queued = Vec::new();
        for i in 0..steps {
            let rows = i * args.batch..(i + 1) * args.batch;
            match &train_set {
                Some(set) => queued.push(model.train_lazy(set.rows(rows)?, args.lr)?),
                None => total += model.train(train.slice(s![rows, ..]), args.lr)? as f64,
            }
            if i % 64 == 0 {
                bar.set_position(i as u64);
            }
        }
        for c in queued {
            total += c.get()? as f64;
        }
        bar.finish_and_clear();
        let secs = t.elapsed().as_secs_f64();
        let cost = total / steps as f64;
        seconds.push(secs);
        history.push(EpochCost {
            epoch,
            cost,
            seconds: secs,
        });
        println!(
            "epoch {epoch}: mean cost {cost:.6}, {secs:.3} s ({:.1} us/step)",
            secs / steps as f64 * 1e6
        );
        save_checkpoint(
            &model,
            epoch,
            args.seed,
            &history,
            &args.out.join("checkpoint.tfck"),
        )?;
    }
    if !seconds.is_empty() {
        println!(
            "average time per epoch: {:.3} s",
            seconds.iter().sum::<f64>() / seconds.len() as f64
        );
    }

    write_outputs(&model, &data, &history, hidden, &args.out)?;
    if let Some(kib) = peak_rss_kib() {
        eprintln!("peak memory (resident): {:.1} MiB", kib as f64 / 1024.0);
    }
    Ok(())
}

fn save_checkpoint(
    model: &Autoencoder,
    epoch: usize,
    seed: u64,
    history: &[EpochCost],
    path: &Path,
) -> Result<(), tensor_fn::Error> {
    let mut ck = Checkpoint::new(epoch, model.w.shape()[1], seed);
    // Parameters on a GPU come back to the host once per epoch, here.
    let (w, b1, b2) = (
        model.w.get_value()?,
        model.b1.get_value()?,
        model.b2.get_value()?,
    );
    ck.insert("w", &w.view())
        .insert("b1", &b1.view())
        .insert("b2", &b2.view())
        .set_meta("history", format_history(history));
    ck.save_atomic(path)
}

/// `epoch:cost:seconds` triples separated by `;`, kept in the checkpoint so a resumed run
/// still plots the whole curve.
fn format_history(h: &[EpochCost]) -> String {
    h.iter()
        .map(|e| format!("{}:{}:{}", e.epoch, e.cost, e.seconds))
        .collect::<Vec<_>>()
        .join(";")
}

fn parse_history(s: &str) -> Vec<EpochCost> {
    s.split(';')
        .filter_map(|row| {
            let mut it = row.split(':');
            Some(EpochCost {
                epoch: it.next()?.parse().ok()?,
                cost: it.next()?.parse().ok()?,
                seconds: it.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The seed's pictures and arrays: filters, reconstructions, costs, hidden features, weights.
fn write_outputs(
    model: &Autoencoder,
    data: &Mnist,
    history: &[EpochCost],
    hidden: usize,
    out: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let w = model.w.get_value()?;
    io::write_filter_grid(out.join("features.png"), w.view(), hidden.min(100), 10)?;
    let originals = data.test_images.slice(s![..10, ..]);
    let recons = model.reconstruct(originals)?;
    io::write_reconstructions(out.join("reconstructions.png"), originals, recons.view())?;
    io::write_cost_csv(out.join("cost.csv"), history)?;
    let ys: Vec<f64> = history.iter().map(|e| e.cost).collect();
    let x0 = history.first().map_or(1, |e| e.epoch) as f64;
    LinePlot::new("mean training cost per epoch")
        .x_label("epoch")
        .y_label("cost")
        .x_start(x0)
        .write(out.join("cost.png"), &ys)?;
    // The seed's get_hidden on the test set, in chunks to keep the workspace small.
    let mut features = Array2::<f32>::zeros((data.test_images.nrows(), hidden));
    for (i, chunk) in data
        .test_images
        .axis_chunks_iter(ndarray::Axis(0), 1000)
        .enumerate()
    {
        let h = model.hidden(chunk)?;
        features
            .slice_mut(s![i * 1000..i * 1000 + h.nrows(), ..])
            .assign(&h);
    }
    io::write_npy(out.join("hidden_test.npy"), &features)?;
    io::write_npy(out.join("weights.npy"), &w)?;
    eprintln!(
        "wrote features.png, reconstructions.png, cost.csv, cost.png, hidden_test.npy, weights.npy, checkpoint.tfck to {}",
        out.display()
    );
    Ok(())
}

/// Peak resident memory of this process, where the OS reports it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
