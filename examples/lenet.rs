//! The deeplearning.net tutorial "Convolutional Neural Networks (LeNet)"
//! (`convolutional_mlp.py`), written with `tensor_fn!`: two convolution + max-pooling layers
//! (20 and 50 filters of 5x5, pooling 2x2, tanh) under a 800-500 tanh layer and a softmax
//! layer of 10, learning rate 0.1, minibatch 500, the tutorial's initial weights (numpy
//! `RandomState(23455)`), at most 200 epochs with the tutorial's early stopping (patience 10000
//! steps, validation every epoch). The tutorial reports a best validation error of 0.91% and a
//! test error of 0.92% after 380 minutes on a CPU (0.93% on a GPU).
//!
//! ```text
//! 28x28x1 -> conv 5x5 x20 -> 24x24x20 -> max-pool 2x2 -> tanh(. + b0) -> 12x12x20
//!         -> conv 5x5 x50 ->  8x8x50  -> max-pool 2x2 -> tanh(. + b1) ->  4x4x50
//!         -> flatten 800 -> tanh(. W2 + b2) 500 -> log_softmax(. W3 + b3) 10
//! ```
//!
//! `conv2d` convolves as Theano's does (the filters flipped), so with the default flags this is
//! the tutorial's network from the tutorial's first step. The peers of
//! `scripts/bench-tutorials.sh` (PyTensor, JAX, PyTorch) compute a cross-correlation with the
//! same drawn filters instead; `--match-peers` hands the model each drawn 5x5 filter flipped
//! in both spatial axes, so that our convolution computes exactly their cross-correlation and
//! the runs follow the same trajectory (equal epoch-1 costs up to float32 rounding). Either
//! way the initial filters are i.i.d. and symmetric around 0, so the flip only relabels the
//! taps of a filter.
//!
//! `--out` gets `results.json`, `epochs.csv` and the best model's `checkpoint.tfck` (as the
//! other tutorials), and `filters.png`: the best model's 20 first-layer filters in a 4x5 grid,
//! each scaled to its own range (its smallest weight white, its largest black), drawn as the
//! 5x5 pattern each filter is matched against the image (the stored filter flipped back,
//! since `conv2d` flips it; with `--match-peers`, the peers' filter itself).
//!
//! Run: `cargo run --release --example lenet -- --help`

use std::path::Path;
use std::time::Instant;

use clap::Parser;
use ndarray::{Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4};
use tensor_fn::io::{self, Checkpoint, GridStyle};
use tensor_fn::prelude::*;

#[path = "tutorials/mod.rs"]
mod tutorials;
use tutorials::{Classifier, Common, Data, NumpyRandomState, Schedule};

tensor_fn! {
    /// LeNet-5 as the tutorial builds it: `LeNetConvPoolLayer`s `tanh(max_pool(conv2d(x, W))
    /// + b)` of 20 and 50 filters, a `HiddenLayer` of 500 tanh units and a
    /// `LogisticRegression` layer.
    pub struct LeNet {
        w0: f32[20, 1, 5, 5], b0: f32[20],
        w1: f32[50, 20, 5, 5], b1: f32[50],
        w2: f32[800, 500], b2: f32[500],
        w3: f32[500, 10], b3: f32[10]
    }

    impl LeNet {
        /// One SGD step on the negative log-likelihood of the labels; returns it (before the
        /// step), as the tutorial's `train_model` does. (`train_data_parallel`: the same step
        /// for one rank of a data-parallel job.)
        #[data_parallel]
        pub fn train(&mut self, x: f32[n, 784], y: i64[n], lr: f32) -> f32 {
            let h0 = tanh(max_pool(conv2d(reshape(x, [n, 1, 28, 28]), w0), [2, 2])
                + reshape(b0, [1, 20, 1, 1]));
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

        /// The fraction of misclassified images (the tutorial's `errors`).
        pub fn errors(&self, x: f32[n, 784], y: i64[n]) -> f32 {
            let h0 = tanh(max_pool(conv2d(reshape(x, [n, 1, 28, 28]), w0), [2, 2])
                + reshape(b0, [1, 20, 1, 1]));
            let h1 = tanh(max_pool(conv2d(h0, w1), [2, 2]) + reshape(b1, [1, 50, 1, 1]));
            let h2 = tanh(dot(flatten(h1, 2), w2) + b2);
            mean(neq(argmax(dot(h2, w3) + b3, axis = 1), y))
        }
    }
}

/// Filters per convolution layer, hidden units, classes (the tutorial's `nkerns`, `n_out`).
const K0: usize = 20;
const K1: usize = 50;
const HIDDEN: usize = 500;
const CLASSES: usize = 10;
/// Filter side and pooling factor.
const SIDE: usize = 5;
const POOL: usize = 2;

/// The network with what its checkpoint records about how it started.
struct Net {
    lenet: LeNet,
    seed: u32,
    match_peers: bool,
}

impl Classifier for Net {
    fn step(
        &mut self,
        x: ArrayView2<f32>,
        y: ArrayView1<i64>,
        lr: f32,
    ) -> Result<f32, tensor_fn::Error> {
        self.lenet.train(x, y, lr)
    }
    fn step_data_parallel(
        &mut self,
        comm: &mut Communicator,
        x: ArrayView2<f32>,
        y: ArrayView1<i64>,
        lr: f32,
    ) -> Result<f32, tensor_fn::Error> {
        self.lenet.train_data_parallel(comm, x, y, lr)
    }
    fn errors(&self, x: ArrayView2<f32>, y: ArrayView1<i64>) -> Result<f32, tensor_fn::Error> {
        self.lenet.errors(x, y)
    }
    fn snapshot(&self, epoch: usize) -> Result<Checkpoint, tensor_fn::Error> {
        let m = &self.lenet;
        let mut ck = Checkpoint::new(epoch, HIDDEN, u64::from(self.seed));
        ck.insert("w0", &m.w0.get_value()?.view())
            .insert("b0", &m.b0.get_value()?.view())
            .insert("w1", &m.w1.get_value()?.view())
            .insert("b1", &m.b1.get_value()?.view())
            .insert("w2", &m.w2.get_value()?.view())
            .insert("b2", &m.b2.get_value()?.view())
            .insert("w3", &m.w3.get_value()?.view())
            .insert("b3", &m.b3.get_value()?.view())
            .set_meta("match_peers", self.match_peers.to_string());
        Ok(ck)
    }
    fn restore(ck: &Checkpoint) -> Result<Self, tensor_fn::Error> {
        let lenet = LeNet::new(
            ck.array4("w0", (K0, 1, SIDE, SIDE))?.to_owned(),
            ck.vector("b0", K0)?.to_owned(),
            ck.array4("w1", (K1, K0, SIDE, SIDE))?.to_owned(),
            ck.vector("b1", K1)?.to_owned(),
            ck.matrix("w2", (K1 * 16, HIDDEN))?.to_owned(),
            ck.vector("b2", HIDDEN)?.to_owned(),
            ck.matrix("w3", (HIDDEN, CLASSES))?.to_owned(),
            ck.vector("b3", CLASSES)?.to_owned(),
        )?;
        Ok(Net {
            lenet,
            seed: u32::try_from(ck.seed).unwrap_or(0),
            match_peers: ck.meta("match_peers") == Some("true"),
        })
    }
}

/// LeNet (two convolution + max-pooling layers, a tanh layer, softmax) on MNIST with the
/// tutorial's early stopping.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// At most this many epochs (the tutorial's n_epochs).
    #[arg(long, default_value_t = 200, value_parser = tutorials::at_least_one)]
    epochs: usize,
    /// Minibatch size.
    #[arg(long, default_value_t = 500, value_parser = tutorials::at_least_one)]
    batch: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.1, value_parser = tutorials::positive)]
    lr: f32,
    /// Steps to look at however bad validation gets (the tutorial's patience).
    #[arg(long, default_value_t = 10000, value_parser = tutorials::at_least_one)]
    patience: usize,
    /// Seed of numpy's RandomState for the initial weights.
    #[arg(long, default_value_t = 23455)]
    seed: u32,
    /// Start from the drawn filters flipped in both spatial axes, so that our convolution
    /// (Theano's, which flips) computes the cross-correlation the peers of
    /// scripts/bench-tutorials.sh compute with the drawn filters: the same trajectory as theirs.
    #[arg(long)]
    match_peers: bool,
    /// Train data-parallel: run under `mpirun -np N` (a build with `--features mpi`); each
    /// process computes the gradients of its slice of every minibatch (N must divide
    /// `--batch`), and rank 0 alone prints and writes files. Every process starts from the same
    /// seeded weights and validates the same parameters.
    #[arg(long)]
    data_parallel: bool,
    /// Continue a run from the `last.tfck` it wrote to --out after its last epoch (with the
    /// same --batch and --limit; any process count).
    #[arg(long, value_name = "LAST_TFCK")]
    resume: Option<std::path::PathBuf>,
}

fn main() {
    let args = Args::parse();
    let mut comm = match Communicator::for_switch(args.data_parallel, "--data-parallel") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = run(args, &mut comm) {
        match comm.size() {
            1 => eprintln!("error: {e}"),
            _ => eprintln!("error: rank {}: {e}", comm.rank()),
        }
        // The other ranks would wait for this one until their timeout: end the job now.
        comm.abort(1);
    }
}

fn run(args: Args, comm: &mut Communicator) -> Result<(), Box<dyn std::error::Error>> {
    let wall = Instant::now();
    let device = args.common.device()?;
    let data = Data::load(&args.common)?;
    let resume = args.resume.as_ref().map(Checkpoint::load).transpose()?;
    let mut net = match &resume {
        Some(ck) => Net::restore(ck)?,
        None => initial(args.seed, args.match_peers)?,
    };
    if comm.size() > 1 {
        // Every rank drew the same weights from the same seed, or read the same checkpoint;
        // rank 0's are sent anyway, so the ranks start equal however they were made.
        let m = &mut net.lenet;
        for p in [
            m.w0.data_mut()?,
            m.b0.data_mut()?,
            m.w1.data_mut()?,
            m.b1.data_mut()?,
            m.w2.data_mut()?,
            m.b2.data_mut()?,
            m.w3.data_mut()?,
            m.b3.data_mut()?,
        ] {
            comm.broadcast(p, 0)?;
        }
        if comm.is_root() {
            eprintln!(
                "data-parallel over {} processes ({}): {} of each minibatch's {} images per process",
                comm.size(),
                comm.engine(),
                args.batch / comm.size(),
                args.batch
            );
        }
    }
    net.lenet.to_device(device)?;
    let schedule = Schedule {
        max_epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        patience: args.patience,
    };
    let fit = tutorials::fit_with(
        &mut net,
        &data,
        &args.common,
        &schedule,
        comm,
        resume.as_ref(),
    )?;
    if !comm.is_root() {
        return Ok(());
    }
    write_filters(
        &args.common.out.join("filters.png"),
        fit.best.array4("w0", (K0, 1, SIDE, SIDE))?,
    )?;
    tutorials::report::<Net>(
        "lenet",
        device,
        &fit,
        &data,
        &args.common,
        wall,
        &[
            ("seed", args.seed.to_string()),
            ("match_peers", args.match_peers.to_string()),
        ],
    )
}

/// The tutorial's initial network, from one `RandomState(seed)` drawn in the tutorial's
/// order: W0, then W1 (each `LeNetConvPoolLayer`'s W ~ U(+-sqrt(6 / (fan_in + fan_out))) with
/// fan_in = in_channels * 25 and fan_out = out_channels * 25 // 4, integer division as the
/// tutorial computes it: 125 and 312), then W2 ~ U(+-sqrt(6 / (800 + 500))) (the
/// `HiddenLayer`); W3 and every bias zero. With `match_peers`, W0 and W1 are handed over with
/// each 5x5 filter flipped (see the module's documentation).
fn initial(seed: u32, match_peers: bool) -> Result<Net, Box<dyn std::error::Error>> {
    let mut rng = NumpyRandomState::new(seed);
    let mut conv = |c_in: usize, c_out: usize| -> Result<Array4<f32>, ndarray::ShapeError> {
        let fan_in = c_in * SIDE * SIDE;
        let fan_out = c_out * SIDE * SIDE / (POOL * POOL);
        let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
        // numpy's `uniform(size=(c_out, c_in, 5, 5))` draws in C order, as these rows do.
        let w = rng
            .uniform(-bound, bound, c_out, c_in * SIDE * SIDE)
            .into_shape_with_order((c_out, c_in, SIDE, SIDE))?;
        Ok(if match_peers { flipped(w.view()) } else { w })
    };
    let w0 = conv(1, K0)?;
    let w1 = conv(K0, K1)?;
    let bound = (6.0 / (K1 * 16 + HIDDEN) as f64).sqrt();
    let w2 = rng.uniform(-bound, bound, K1 * 16, HIDDEN);
    let lenet = LeNet::new(
        w0,
        Array1::zeros(K0),
        w1,
        Array1::zeros(K1),
        w2,
        Array1::zeros(HIDDEN),
        Array2::zeros((HIDDEN, CLASSES)),
        Array1::zeros(CLASSES),
    )?;
    Ok(Net {
        lenet,
        seed,
        match_peers,
    })
}

/// `w[:, :, ::-1, ::-1]`: every filter flipped in both spatial axes, in standard layout.
fn flipped(w: ArrayView4<f32>) -> Array4<f32> {
    let (o, i, r, c) = w.dim();
    Array4::from_shape_fn((o, i, r, c), |(a, b, y, x)| w[[a, b, r - 1 - y, c - 1 - x]])
}

/// Draws the first layer's filters `w0` (`[20, 1, 5, 5]`) into a 4x5 grid, each 5x5 filter
/// 8 pixels per weight and scaled to its own range. A filter is drawn as the pattern
/// `conv2d` matches against the image, which is the stored filter flipped in both axes.
fn write_filters(path: &Path, w0: ArrayView4<f32>) -> Result<(), tensor_fn::Error> {
    let template = flipped(w0);
    let (k, _, r, c) = template.dim();
    // write_filter_grid takes one filter per column, each row-major.
    let columns = Array2::from_shape_fn((r * c, k), |(p, j)| template[[j, 0, p / c, p % c]]);
    let style = GridStyle {
        scale: 8,
        gap: 2,
        background: 200,
    };
    io::image::write_filter_grid_with(path, columns.view(), k, 5, &style)
}
