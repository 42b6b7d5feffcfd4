//! The deeplearning.net tutorial "Stacked Denoising Autoencoders" (`SdA.py`), written with
//! `tensor_fn!`: three sigmoid layers of 1000 under a logistic regression layer. Each layer is
//! first pretrained as a denoising autoencoder on the output of the layers below it
//! (corruption 0.1, 0.2, 0.3; learning rate 0.001; 15 epochs per layer), then the whole
//! network is fine-tuned on the labels (learning rate 0.1, at most 1000 epochs, the tutorial's
//! early stopping with a patience of 10 epochs). Minibatches of one image throughout, as in the
//! tutorial, which reports a test error of 1.3% after 36 epochs of fine-tuning.
//!
//! The initial weights are the tutorial's (numpy `RandomState(89677)`); the corruption masks
//! come from our Philox stream, seeded as the tutorial seeds its `RandomStreams`.
//!
//! Run: `cargo run --release --example sda -- --help`

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2};
use tensor_fn::io::{self, Checkpoint};
use tensor_fn::prelude::*;

#[path = "tutorials/mod.rs"]
mod tutorials;
use tutorials::{json_num, json_str, Classifier, Common, Data, NumpyRandomState, Schedule};

tensor_fn! {
    /// Sigmoid layers `h_k = sigmoid(h_{k-1} W_k + b_k)` (`h_0` the image) under a softmax
    /// layer; `v_k` is the visible bias of layer k's denoising autoencoder, which shares
    /// `W_k` (tied) and `b_k` with the sigmoid layer.
    pub struct StackedDenoisingAutoencoder {
        w1: f32[784, h1], b1: f32[h1], v1: f32[784],
        w2: f32[h1, h2], b2: f32[h2], v2: f32[h1],
        w3: f32[h2, h3], b3: f32[h3], v3: f32[h2],
        w_out: f32[h3, 10], b_out: f32[10]
    }

    impl StackedDenoisingAutoencoder {
        /// One SGD step of the first layer's denoising autoencoder; returns the cost before it.
        pub fn pretrain1(&mut self, x: f32[n, 784], lr: f32, corruption: f32) -> f32 {
            let noisy = binomial(shape(x), 1 - corruption) * x;
            let z = sigmoid(dot(sigmoid(dot(noisy, w1) + b1), w1.T) + v1);
            let cost = mean(-sum(x * log(z) + (1 - x) * log(1 - z), axis = 1));
            w1 -= lr * grad(cost, w1);
            b1 -= lr * grad(cost, b1);
            v1 -= lr * grad(cost, v1);
            cost
        }

        /// The second layer's: its input is the first layer's output, which stays fixed.
        pub fn pretrain2(&mut self, x: f32[n, 784], lr: f32, corruption: f32) -> f32 {
            let input = sigmoid(dot(x, w1) + b1);
            let noisy = binomial(shape(input), 1 - corruption) * input;
            let z = sigmoid(dot(sigmoid(dot(noisy, w2) + b2), w2.T) + v2);
            let cost = mean(-sum(input * log(z) + (1 - input) * log(1 - z), axis = 1));
            w2 -= lr * grad(cost, w2);
            b2 -= lr * grad(cost, b2);
            v2 -= lr * grad(cost, v2);
            cost
        }

        /// The third layer's, on the output of the first two.
        pub fn pretrain3(&mut self, x: f32[n, 784], lr: f32, corruption: f32) -> f32 {
            let input = sigmoid(dot(sigmoid(dot(x, w1) + b1), w2) + b2);
            let noisy = binomial(shape(input), 1 - corruption) * input;
            let z = sigmoid(dot(sigmoid(dot(noisy, w3) + b3), w3.T) + v3);
            let cost = mean(-sum(input * log(z) + (1 - input) * log(1 - z), axis = 1));
            w3 -= lr * grad(cost, w3);
            b3 -= lr * grad(cost, b3);
            v3 -= lr * grad(cost, v3);
            cost
        }

        /// One SGD step of the whole network on the negative log-likelihood of the labels.
        pub fn finetune(&mut self, x: f32[n, 784], y: i64[n], lr: f32) -> f32 {
            let h = sigmoid(dot(sigmoid(dot(sigmoid(dot(x, w1) + b1), w2) + b2), w3) + b3);
            let nll = -mean(log_softmax(dot(h, w_out) + b_out)[arange(n), y]);
            w1 -= lr * grad(nll, w1);
            b1 -= lr * grad(nll, b1);
            w2 -= lr * grad(nll, w2);
            b2 -= lr * grad(nll, b2);
            w3 -= lr * grad(nll, w3);
            b3 -= lr * grad(nll, b3);
            w_out -= lr * grad(nll, w_out);
            b_out -= lr * grad(nll, b_out);
            nll
        }

        /// The fraction of misclassified images.
        pub fn errors(&self, x: f32[n, 784], y: i64[n]) -> f32 {
            let h = sigmoid(dot(sigmoid(dot(sigmoid(dot(x, w1) + b1), w2) + b2), w3) + b3);
            mean(neq(argmax(dot(h, w_out) + b_out, axis = 1), y))
        }
    }
}

pub type Sda = StackedDenoisingAutoencoder;

/// The parameters as a checkpoint (with the random stream, so pretraining resumes it).
fn snapshot(m: &Sda, epoch: usize) -> Result<Checkpoint, tensor_fn::Error> {
    let (seed, _) = m.random_stream();
    let mut ck = Checkpoint::new(epoch, m.b1.shape()[0], seed);
    ck.insert("w1", &m.w1.get_value()?.view())
        .insert("b1", &m.b1.get_value()?.view())
        .insert("v1", &m.v1.get_value()?.view())
        .insert("w2", &m.w2.get_value()?.view())
        .insert("b2", &m.b2.get_value()?.view())
        .insert("v2", &m.v2.get_value()?.view())
        .insert("w3", &m.w3.get_value()?.view())
        .insert("b3", &m.b3.get_value()?.view())
        .insert("v3", &m.v3.get_value()?.view())
        .insert("w_out", &m.w_out.get_value()?.view())
        .insert("b_out", &m.b_out.get_value()?.view())
        .set_random_stream(m.random_stream());
    Ok(ck)
}

/// A model on the CPU from a checkpoint `snapshot` wrote; its layer sizes come from the file.
fn restore(ck: &Checkpoint) -> Result<Sda, tensor_fn::Error> {
    // A missing tensor has length 0 here, and then `vector` names it.
    let len = |name: &str| ck.tensor(name).map_or(0, |t| t.len());
    let (h1, h2, h3) = (len("b1"), len("b2"), len("b3"));
    let m = Sda::new(
        ck.matrix("w1", (784, h1))?.to_owned(),
        ck.vector("b1", h1)?.to_owned(),
        ck.vector("v1", 784)?.to_owned(),
        ck.matrix("w2", (h1, h2))?.to_owned(),
        ck.vector("b2", h2)?.to_owned(),
        ck.vector("v2", h1)?.to_owned(),
        ck.matrix("w3", (h2, h3))?.to_owned(),
        ck.vector("b3", h3)?.to_owned(),
        ck.vector("v3", h2)?.to_owned(),
        ck.matrix("w_out", (h3, 10))?.to_owned(),
        ck.vector("b_out", 10)?.to_owned(),
    )?;
    Ok(m)
}

/// The network as the fine-tuning loop sees it: a classifier.
struct Net(Sda);

impl Classifier for Net {
    fn step(
        &mut self,
        x: ArrayView2<f32>,
        y: ArrayView1<i64>,
        lr: f32,
    ) -> Result<f32, tensor_fn::Error> {
        self.0.finetune(x, y, lr)
    }
    fn errors(&self, x: ArrayView2<f32>, y: ArrayView1<i64>) -> Result<f32, tensor_fn::Error> {
        self.0.errors(x, y)
    }
    fn snapshot(&self, epoch: usize) -> Result<Checkpoint, tensor_fn::Error> {
        snapshot(&self.0, epoch)
    }
    fn restore(ck: &Checkpoint) -> Result<Self, tensor_fn::Error> {
        restore(ck).map(Net)
    }
}

/// Stacked denoising autoencoders (784-1000-1000-1000-10) on MNIST: layer-wise pretraining,
/// then fine-tuning with the tutorial's early stopping.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Sizes of the three hidden layers.
    #[arg(long, value_delimiter = ',', num_args = 1, default_value = "1000,1000,1000",
          value_parser = tutorials::at_least_one)]
    hidden: Vec<usize>,
    /// Fraction of each layer's input zeroed while it is pretrained, one per layer.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.2,0.3", value_parser = tutorials::fraction)]
    corruption: Vec<f32>,
    /// Pretraining epochs per layer.
    #[arg(long, default_value_t = 15)]
    pretrain_epochs: usize,
    /// Pretraining learning rate.
    #[arg(long, default_value_t = 0.001, value_parser = tutorials::positive)]
    pretrain_lr: f32,
    /// At most this many fine-tuning epochs (the tutorial's training_epochs).
    #[arg(long, default_value_t = 1000, value_parser = tutorials::at_least_one)]
    epochs: usize,
    /// Fine-tuning learning rate.
    #[arg(long, default_value_t = 0.1, value_parser = tutorials::positive)]
    lr: f32,
    /// Minibatch size, for pretraining and fine-tuning.
    #[arg(long, default_value_t = 1, value_parser = tutorials::at_least_one)]
    batch: usize,
    /// Fine-tuning steps to look at however bad validation gets (default: 10 epochs' worth,
    /// the tutorial's patience).
    #[arg(long, value_parser = tutorials::at_least_one)]
    patience: Option<usize>,
    /// Start from this pretrained network (a `pretrained.tfck` that an earlier run wrote)
    /// instead of pretraining.
    #[arg(long)]
    pretrained: Option<PathBuf>,
    /// Seed of numpy's RandomState: the initial weights and the masks' stream.
    #[arg(long, default_value_t = 89677)]
    seed: u32,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let wall = Instant::now();
    if args.hidden.len() != 3 || args.corruption.len() != 3 {
        return Err(format!(
            "--hidden and --corruption take three values, one per layer (got {} and {})",
            args.hidden.len(),
            args.corruption.len()
        )
        .into());
    }
    let device = args.common.device()?;
    let data = Data::load(&args.common)?;
    let out = args.common.out_dir()?.to_path_buf();
    let steps = data.train.x.nrows() / args.batch;
    if steps == 0 {
        return Err(format!("--batch {}: larger than the training set", args.batch).into());
    }
    let mut sda = match &args.pretrained {
        Some(path) => {
            let ck = Checkpoint::load(path)?;
            require_whole_pretraining(&ck, path)?;
            let mut m = restore(&ck)?;
            if let Some((seed, calls)) = ck.random_stream(path)? {
                m.set_random_stream(seed, calls);
            }
            eprintln!("pretrained network from {}", path.display());
            m
        }
        None => initial(args.seed, [args.hidden[0], args.hidden[1], args.hidden[2]])?,
    };
    sda.to_device(device)?;
    let pretrain_wall = Instant::now();
    let pretraining = if args.pretrained.is_none() {
        pretrain(&mut sda, &args, &data, steps, &out)?
    } else {
        Vec::new()
    };
    let pretrain_wall = pretrain_wall.elapsed().as_secs_f64();
    if args.pretrained.is_none() {
        println!("The pretraining code ran for {pretrain_wall:.1} s");
    }

    let finetune_wall = Instant::now();
    let mut net = Net(sda);
    let schedule = Schedule {
        max_epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        patience: args.patience.unwrap_or(10 * steps),
    };
    let fit = tutorials::fit(&mut net, &data, &args.common, &schedule)?;
    let finetune_wall = finetune_wall.elapsed().as_secs_f64();
    let per_layer_epoch: Vec<f64> = pretraining.iter().map(|e| e.seconds).collect();
    println!(
        "Pretraining: {pretrain_wall:.1} s ({:.3} s per layer and epoch); fine-tuning: \
         {finetune_wall:.1} s",
        tutorials::mean(&per_layer_epoch)
    );
    let pretrained_from = args
        .pretrained
        .as_ref()
        .map_or(String::new(), |p| p.display().to_string());
    tutorials::report::<Net>(
        "sda",
        device,
        &fit,
        &data,
        &args.common,
        wall,
        &[
            (
                "pretrain_epochs_per_layer",
                args.pretrain_epochs.to_string(),
            ),
            (
                "pretrain_seconds_per_layer_epoch",
                json_num(tutorials::mean(&per_layer_epoch)),
            ),
            ("pretrain_wall_seconds", json_num(pretrain_wall)),
            ("finetune_wall_seconds", json_num(finetune_wall)),
            ("pretrained_from", json_str(&pretrained_from)),
        ],
    )
}

/// Refuses a `pretrained.tfck` written before its pretraining ended (the run was stopped):
/// fine-tuning from it would quietly skip the rest. Checkpoints of other kinds (a fine-tuned
/// `checkpoint.tfck`) carry no pretraining record and are taken as they are.
fn require_whole_pretraining(ck: &Checkpoint, path: &Path) -> Result<(), String> {
    let Some(layer) = ck.meta("pretrained_layer") else {
        return Ok(());
    };
    let epoch = ck.meta("pretrained_epoch").unwrap_or("?");
    let per_layer = ck.meta("pretrain_epochs").unwrap_or("?");
    if layer == "3" && epoch == per_layer {
        return Ok(());
    }
    Err(format!(
        "{}: its pretraining stopped at layer {layer}, epoch {epoch} of {per_layer}; run \
         without --pretrained to pretrain all three layers",
        path.display()
    ))
}

/// The tutorial's initial network: from `RandomState(seed)`, first the masks' stream seed
/// (`randint(2**30)`), then each sigmoid layer's W ~ 4 U(+-sqrt(6 / (fan_in + fan_out))) in
/// turn; biases and the softmax layer zero.
pub fn initial(seed: u32, [h1, h2, h3]: [usize; 3]) -> Result<Sda, tensor_fn::Error> {
    let mut rng = NumpyRandomState::new(seed);
    let stream_seed = rng.randint_2_30();
    let mut layer = |n_in: usize, n_out: usize| -> Array2<f32> {
        let bound = (6.0 / (n_in + n_out) as f64).sqrt();
        // As the tutorial's HiddenLayer: float32 draws, then times 4 for sigmoid units.
        rng.uniform(-bound, bound, n_in, n_out) * 4.0
    };
    let (w1, w2, w3) = (layer(784, h1), layer(h1, h2), layer(h2, h3));
    let mut m = Sda::new(
        w1,
        Array1::zeros(h1),
        Array1::zeros(784),
        w2,
        Array1::zeros(h2),
        Array1::zeros(h1),
        w3,
        Array1::zeros(h3),
        Array1::zeros(h2),
        Array2::zeros((h3, 10)),
        Array1::zeros(10),
    )?;
    m.seed(stream_seed);
    Ok(m)
}

/// One pretraining epoch of one layer.
struct LayerEpoch {
    layer: usize,
    epoch: usize,
    cost: f64,
    seconds: f64,
}

/// Pretrains the three layers in turn, as denoising autoencoders. After every epoch it writes
/// `pretraining.csv` and the network as `pretrained.tfck` (atomically; `--pretrained` starts
/// from it); at the end, a picture of the first layer's filters.
fn pretrain(
    sda: &mut Sda,
    args: &Args,
    data: &Data,
    steps: usize,
    out: &Path,
) -> Result<Vec<LayerEpoch>, Box<dyn std::error::Error>> {
    let mut log = Vec::new();
    for layer in 1..=3 {
        let level = args.corruption[layer - 1];
        for epoch in 1..=args.pretrain_epochs {
            let bar = args.common.bar(steps, "pretraining");
            bar.set_message(format!("layer {layer}, epoch {epoch}"));
            let t = Instant::now();
            let mut total = 0.0f64;
            for i in 0..steps {
                let x = data
                    .train
                    .x
                    .slice(s![i * args.batch..(i + 1) * args.batch, ..]);
                let c = match layer {
                    1 => sda.pretrain1(x, args.pretrain_lr, level)?,
                    2 => sda.pretrain2(x, args.pretrain_lr, level)?,
                    _ => sda.pretrain3(x, args.pretrain_lr, level)?,
                };
                tutorials::require_finite_cost(epoch, i, c)?;
                total += c as f64;
                if i % 256 == 0 {
                    bar.set_position(i as u64);
                }
            }
            let seconds = t.elapsed().as_secs_f64();
            bar.finish_and_clear();
            let cost = total / steps as f64;
            println!("Pre-training layer {layer}, epoch {epoch}, cost {cost:.6} ({seconds:.3} s)");
            log.push(LayerEpoch {
                layer,
                epoch,
                cost,
                seconds,
            });
            let mut csv = String::from("layer,epoch,cost,train_seconds\n");
            for e in &log {
                csv += &format!("{},{},{:.6},{:.4}\n", e.layer, e.epoch, e.cost, e.seconds);
            }
            io::write_atomic(out.join("pretraining.csv"), csv.as_bytes())?;
            let mut ck = snapshot(sda, 0)?;
            ck.set_meta("pretrained_layer", layer.to_string())
                .set_meta("pretrained_epoch", epoch.to_string())
                .set_meta("pretrain_epochs", args.pretrain_epochs.to_string());
            ck.save_atomic(out.join("pretrained.tfck"))?;
        }
    }
    let w1 = sda.w1.get_value()?;
    io::write_filter_grid(out.join("filters.png"), w1.view(), w1.ncols().min(100), 10)?;
    Ok(log)
}
