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
        /// (`train_data_parallel` is the same step for one rank of a data-parallel job.)
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
///
/// Bad input is refused before anything is written, and a run whose cost turns NaN or infinite
/// stops before that epoch reaches a file: the last good checkpoint and every output in --out
/// stay as they were.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Train until this many epochs (passes over the 50000 training images) are done, counted
    /// from the start of the run (a resumed run continues after its checkpoint's epoch).
    #[arg(long, default_value_t = 20, value_parser = at_least_one, allow_negative_numbers = true)]
    epochs: usize,
    /// Minibatch size.
    #[arg(long, default_value_t = 20, value_parser = at_least_one, allow_negative_numbers = true)]
    batch: usize,
    /// Hidden units.
    #[arg(long, default_value_t = 500, value_parser = at_least_one, allow_negative_numbers = true)]
    hidden: usize,
    /// SGD learning rate: a finite number above 0.
    #[arg(long, default_value_t = 0.1, value_parser = learning_rate, allow_negative_numbers = true)]
    lr: f32,
    /// Seed of the random initial weights.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// MNIST: a directory of IDX files or a mnist.pkl.gz (default: $TENSOR_FN_MNIST, else the
    /// shipped data/mnist).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Train on the first N training images only (default: the seed's 50000).
    #[arg(long, value_parser = at_least_one, allow_negative_numbers = true)]
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
    /// Train data-parallel: run under `mpirun -np N` (a build with `--features mpi`); each
    /// process computes the gradients of its slice of every minibatch (`--batch` is the global
    /// minibatch, which N must divide), the gradients are averaged, and every process applies
    /// the same update. Rank 0 alone prints and writes files. Without `mpirun`: one process,
    /// through the same staged step.
    #[arg(long)]
    data_parallel: bool,
}

/// `--epochs`, `--batch`, `--hidden`, `--limit`: a whole number of at least 1 (zero would
/// train on nothing, or on a model with no hidden units).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e} (expected a whole number of at least 1)")),
    }
}

/// `--lr`: finite and above zero. NaN or an infinity turns the weights into NaN in one step,
/// and zero or a negative rate does not descend.
fn learning_rate(s: &str) -> Result<f32, String> {
    let wide: f64 = s
        .parse()
        .map_err(|e| format!("{e} (expected a number such as 0.1)"))?;
    let lr = wide as f32;
    if lr.is_finite() && lr > 0.0 {
        Ok(lr)
    } else if wide.is_finite() && wide > 0.0 {
        Err(format!(
            "the learning rate must be a finite number above 0 ({s} is too large for an f32)"
        ))
    } else {
        Err("the learning rate must be a finite number above 0".into())
    }
}

/// The seed's initialisation: uniform in +-4 sqrt(6 / (hidden + visible)). An allocation
/// failure is an error, not an abort.
fn init_weights(hidden: usize, seed: u64) -> Result<Array2<f32>, String> {
    let bound = 4.0 * (6.0 / (hidden as f64 + 784.0)).sqrt();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut w = try_zeros(784, hidden, "W")?;
    // C order, as `Array2::from_shape_fn` draws: the same seed gives the same W.
    w.iter_mut()
        .for_each(|v| *v = rng.gen_range(-bound..bound) as f32);
    Ok(w)
}

/// A `rows x cols` matrix of zeros, or an error naming `what` and its size where the memory
/// cannot be had.
fn try_zeros(rows: usize, cols: usize, what: &str) -> Result<Array2<f32>, String> {
    let fail = || {
        format!(
            "cannot allocate {what}: {rows} x {cols} x 4 bytes = {}",
            readable_bytes(4 * rows as u128 * cols as u128)
        )
    };
    let len = rows.checked_mul(cols).ok_or_else(fail)?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| fail())?;
    v.resize(len, 0.0f32);
    Array2::from_shape_vec((rows, cols), v).map_err(|e| format!("{what}: {e}"))
}

/// Test images whose hidden features are computed at once (the seed's `get_hidden`, chunked).
const FEATURE_CHUNK: usize = 1000;

/// Refuses a hidden size whose run cannot fit in the memory this machine has free, before
/// anything of that size is allocated. `source` says where the size came from, e.g.
/// `--hidden 100000000`.
///
/// Per hidden unit a run holds, in f32s: W with its host copy, the checkpoint's copy and that
/// copy's bytes (4 x 784); the test set's hidden features and their .npy bytes (2 x test);
/// one chunk of them and its workspace (2 x chunk); minibatch-sized buffers (4 x batch).
fn check_memory(hidden: usize, batch: usize, test: usize, source: &str) -> Result<(), String> {
    let h = hidden as u128;
    let w = 4 * 784 * h;
    let per_unit = 4 * 784 + 2 * test + 2 * FEATURE_CHUNK.min(test) + 4 * batch;
    let total = 4 * h * per_unit as u128;
    let Some((available, whence)) = available_memory() else {
        // Without a figure to compare with, the allocations themselves are fallible.
        return Ok(());
    };
    if total <= available {
        return Ok(());
    }
    Err(format!(
        "{source}: W alone needs 784 x {hidden} x 4 bytes = {}, and the run about {} in all \
         (W and its copies, the hidden features of the {test} test images), more than the {} \
         of memory available ({whence}); use a smaller hidden size",
        readable_bytes(w),
        readable_bytes(total),
        readable_bytes(available),
    ))
}

/// Free memory in bytes and where the figure comes from: `MemAvailable` in /proc/meminfo, or
/// a cgroup (v2) memory limit where that is lower (a container sees the host's meminfo).
fn available_memory() -> Option<(u128, &'static str)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let mem = meminfo.as_deref().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    // "max" (no limit) does not parse, which is the answer wanted. The limit alone, not less
    // what the cgroup uses: that usage counts page cache the kernel can take back.
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u128>().ok());
    const LIMIT: &str = "the cgroup's memory limit, memory.max";
    match (mem, limit) {
        (Some(m), Some(l)) if l < m => Some((l, LIMIT)),
        (Some(m), _) => Some((m, "MemAvailable in /proc/meminfo")),
        (None, Some(l)) => Some((l, LIMIT)),
        (None, None) => None,
    }
}

/// `1536` -> `1.5 KiB`.
fn readable_bytes(bytes: u128) -> String {
    const UNITS: [&str; 8] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Refuses initial parameters holding NaN or infinities: training would only spread them.
fn require_finite<S, D>(
    source: &Path,
    name: &str,
    a: &ndarray::ArrayBase<S, D>,
) -> Result<(), String>
where
    S: ndarray::Data<Elem = f32>,
    D: ndarray::Dimension,
{
    let bad = a.iter().filter(|v| !v.is_finite()).count();
    if bad == 0 {
        return Ok(());
    }
    Err(format!(
        "{}: {bad} of the {} values of {name} are NaN or infinite; initial weights must be finite",
        source.display(),
        a.len()
    ))
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
        eprintln!("error: {}{e}", rank_prefix(&comm));
        // The other ranks would wait for this one until their timeout: end the job now.
        comm.abort(1);
    }
}

/// `rank 1: ` in a job of several processes, nothing alone.
fn rank_prefix(comm: &Communicator) -> String {
    if comm.size() > 1 {
        format!("rank {}: ", comm.rank())
    } else {
        String::new()
    }
}

/// Makes every rank's parameters rank 0's (after each read its initial values).
fn share_parameters(
    model: &mut Autoencoder,
    comm: &mut Communicator,
) -> Result<(), tensor_fn::Error> {
    comm.broadcast(model.w.data_mut()?, 0)?;
    comm.broadcast(model.b1.data_mut()?, 0)?;
    comm.broadcast(model.b2.data_mut()?, 0)
}

fn run(args: Args, comm: &mut Communicator) -> Result<(), Box<dyn std::error::Error>> {
    let root = comm.is_root();
    // Rank 0 alone speaks; the others report only errors.
    let say = |msg: String| {
        if root {
            eprintln!("{msg}");
        }
    };
    let device = if args.device == "best" {
        let (d, why) = Device::best_with_reason();
        if let Some(why) = why {
            eprintln!("--device best: using the CPU ({why})");
        }
        d
    } else {
        Device::parse(&args.device)?
    };
    // Each rank computes its slice of every global minibatch of --batch rows.
    let local = comm
        .slice(args.batch)
        .map_err(|e| format!("--batch {}: {e}", args.batch))?;
    let t = Instant::now();
    let data = Mnist::load(args.data.as_deref())?;
    let (train, _valid) = data.seed_split();
    let train = match args.limit {
        Some(n) => train.slice_move(s![..n.min(train.nrows()), ..]),
        None => train,
    };
    if args.batch > train.nrows() {
        return Err(format!(
            "--batch {}: larger than the {} training images, so an epoch would have no step; \
             use a batch of at most {}",
            args.batch,
            train.nrows(),
            train.nrows()
        )
        .into());
    }
    say(format!(
        "loaded {} training images in {:.2} s; device {device}",
        train.nrows(),
        t.elapsed().as_secs_f64()
    ));
    if comm.size() > 1 || args.data_parallel {
        say(format!(
            "data-parallel over {} process(es) ({}): {} of each minibatch's {} rows per process",
            comm.size(),
            comm.engine(),
            local.len(),
            args.batch
        ));
    }
    let test = data.test_images.nrows();

    // Initial parameters: a checkpoint, a W from numpy, or the seed's random init. Each is
    // checked (shape, size, finite values) before the run writes anything.
    let mut history: Vec<EpochCost> = Vec::new();
    let (mut model, first_epoch) = match (&args.resume, &args.init) {
        (Some(path), _) => {
            let ck = Checkpoint::load(path)?;
            let hidden = ck.hidden;
            if hidden == 0 {
                return Err(
                    format!("{}: the checkpoint's hidden size is 0", path.display()).into(),
                );
            }
            check_memory(
                hidden,
                args.batch,
                test,
                &format!("{} (hidden size {hidden})", path.display()),
            )?;
            let w = ck.matrix("w", (784, hidden))?.to_owned();
            let b1 = ck.vector("b1", hidden)?.to_owned();
            let b2 = ck.vector("b2", 784)?.to_owned();
            require_finite(path, "w", &w)?;
            require_finite(path, "b1", &b1)?;
            require_finite(path, "b2", &b2)?;
            let first = ck.epoch.checked_add(1).ok_or_else(|| {
                format!("{}: the checkpoint's epoch is out of range", path.display())
            })?;
            if args.epochs <= ck.epoch {
                return Err(format!(
                    "--epochs {}: the checkpoint {} has already completed {} epochs, and \
                     --epochs counts from the start of the run; ask for more than {} to continue",
                    args.epochs,
                    path.display(),
                    ck.epoch,
                    ck.epoch
                )
                .into());
            }
            history = parse_history(ck.meta("history").unwrap_or(""));
            say(format!(
                "resuming after epoch {} from {}",
                ck.epoch,
                path.display()
            ));
            (Autoencoder::new(w, b1, b2)?, first)
        }
        (None, Some(path)) => {
            let w: Array2<f32> = io::read_npy_2d(path)?;
            if w.nrows() != 784 || w.ncols() == 0 {
                return Err(format!(
                    "{}: W must be 784 x hidden (784 rows, at least 1 column), found shape {:?}",
                    path.display(),
                    w.shape()
                )
                .into());
            }
            let hidden = w.ncols();
            check_memory(
                hidden,
                args.batch,
                test,
                &format!("{} (784 x {hidden})", path.display()),
            )?;
            require_finite(path, "W", &w)?;
            (
                Autoencoder::new(w, Array1::zeros(hidden), Array1::zeros(784))?,
                1,
            )
        }
        (None, None) => {
            check_memory(
                args.hidden,
                args.batch,
                test,
                &format!("--hidden {}", args.hidden),
            )?;
            let w = init_weights(args.hidden, args.seed)?;
            (
                Autoencoder::new(w, Array1::zeros(args.hidden), Array1::zeros(784))?,
                1,
            )
        }
    };
    let hidden = model.w.shape()[1];
    if comm.size() > 1 {
        share_parameters(&mut model, comm)?;
    }
    if root {
        std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    }

    // On a GPU the parameters and the whole training set live in device memory; a step
    // reads its minibatch as a row range of the set (Theano's givens), and its cost is read
    // back once per epoch for all steps together.
    let train_set =
        if device.is_gpu() {
            let info = Autoencoder::TRAIN_INFO;
            say(format!(
            "training step: {} kernel launches and {} parameter copies, replayed as one graph; \
             one copy in (the minibatch rows) and one out (the cost)",
            info.launch_count(),
            info.plan.lines().filter(|l| l.starts_with("update")).count(),
        ));
            model.to_device(device)?;
            let mut set = Shared::new("train", train.to_owned());
            set.to_device(device)?;
            Some(set)
        } else {
            None
        };

    let checkpoint_path = args.out.join("checkpoint.tfck");
    // The newest checkpoint with finite weights: where a run that diverges goes back to.
    let mut last_good: Option<(usize, PathBuf)> = args.resume.clone().map(|p| (first_epoch - 1, p));
    let steps = train.nrows() / args.batch;
    let mut seconds = Vec::new();
    for epoch in first_epoch..=args.epochs {
        let bar = if args.quiet || !root {
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
        // The first step whose cost is NaN or infinite, and that cost.
        let mut diverged_at: Option<(usize, f32)> = None;
        let mut queued = Vec::new();
        for i in 0..steps {
            let rows = i * args.batch..(i + 1) * args.batch;
            // This rank's slice of the minibatch; with --data-parallel, its part of the step.
            let mine = rows.start + local.start..rows.start + local.end;
            match &train_set {
                Some(set) if args.data_parallel => {
                    let c = model.train_data_parallel(comm, set.rows(mine)?, args.lr)?;
                    if !c.is_finite() {
                        diverged_at = Some((i, c));
                        break;
                    }
                    total += c as f64;
                }
                Some(set) => queued.push(model.train_lazy(set.rows(rows)?, args.lr)?),
                None if args.data_parallel => {
                    let c = model.train_data_parallel(comm, train.slice(s![mine, ..]), args.lr)?;
                    if !c.is_finite() {
                        diverged_at = Some((i, c));
                        break;
                    }
                    total += c as f64;
                }
                None => {
                    let c = model.train(train.slice(s![rows, ..]), args.lr)?;
                    if !c.is_finite() {
                        diverged_at = Some((i, c));
                        break;
                    }
                    total += c as f64;
                }
            }
            if i % 64 == 0 {
                bar.set_position(i as u64);
            }
        }
        for (i, c) in queued.into_iter().enumerate() {
            let c = c.get()?;
            if !c.is_finite() && diverged_at.is_none() {
                diverged_at = Some((i, c));
            }
            total += c as f64;
        }
        bar.finish_and_clear();
        // Nothing computed in a diverged epoch reaches a file: not the checkpoint (it would
        // replace the last good one), not the costs, not the pictures.
        if let Some((step, c)) = diverged_at {
            let what = format!("the training cost is {c} at step {} of {steps}", step + 1);
            return Err(diverged(epoch, &what, last_good.as_ref(), &args.out).into());
        }
        let secs = t.elapsed().as_secs_f64();
        let cost = total / steps as f64;
        if !cost.is_finite() {
            let what = format!("the mean training cost is {cost}");
            return Err(diverged(epoch, &what, last_good.as_ref(), &args.out).into());
        }
        seconds.push(secs);
        history.push(EpochCost {
            epoch,
            cost,
            seconds: secs,
        });
        let ck = snapshot(&model, epoch, args.seed, &history)?;
        // The cost is taken before each step, so the last step can still break the weights.
        if let Some((name, _)) = ck
            .tensors
            .iter()
            .find(|(_, a)| a.iter().any(|v| !v.is_finite()))
        {
            let what = format!("`{name}` holds NaN or infinite values after the last step");
            return Err(diverged(epoch, &what, last_good.as_ref(), &args.out).into());
        }
        if root {
            println!(
                "epoch {epoch}: mean cost {cost:.6}, {secs:.3} s ({:.1} us/step)",
                secs / steps as f64 * 1e6
            );
            ck.save_atomic(&checkpoint_path)?;
        }
        last_good = Some((epoch, checkpoint_path.clone()));
    }
    if !root {
        return Ok(());
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

/// The error of an epoch whose numbers are no longer finite, saying what is kept.
fn diverged(epoch: usize, what: &str, last_good: Option<&(usize, PathBuf)>, out: &Path) -> String {
    let kept = match last_good {
        Some((e, path)) => format!(
            "the last good checkpoint ({}, epoch {e}) and the other files in {} are left as they were",
            path.display(),
            out.display()
        ),
        None => format!("the files in {} are left as they were", out.display()),
    };
    format!(
        "epoch {epoch}: {what}; stopping before anything from this epoch is written: {kept}. \
         A smaller --lr may help"
    )
}

/// The model and where training stands, as a checkpoint. Parameters on a GPU come back to the
/// host once per epoch, here.
fn snapshot(
    model: &Autoencoder,
    epoch: usize,
    seed: u64,
    history: &[EpochCost],
) -> Result<Checkpoint, tensor_fn::Error> {
    let mut ck = Checkpoint::new(epoch, model.w.shape()[1], seed);
    let (w, b1, b2) = (
        model.w.get_value()?,
        model.b1.get_value()?,
        model.b2.get_value()?,
    );
    ck.insert("w", &w.view())
        .insert("b1", &b1.view())
        .insert("b2", &b2.view())
        .set_meta("history", format_history(history));
    Ok(ck)
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
/// Everything is computed before the first file is written, so a failure leaves the previous
/// files in `out` as they were.
fn write_outputs(
    model: &Autoencoder,
    data: &Mnist,
    history: &[EpochCost],
    hidden: usize,
    out: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let w = model.w.get_value()?;
    let originals = data
        .test_images
        .slice(s![..10.min(data.test_images.nrows()), ..]);
    let recons = model.reconstruct(originals)?;
    // The seed's get_hidden on the test set, in chunks to keep the workspace small.
    let mut features = try_zeros(
        data.test_images.nrows(),
        hidden,
        "the hidden features of the test set",
    )?;
    for (i, chunk) in data
        .test_images
        .axis_chunks_iter(ndarray::Axis(0), FEATURE_CHUNK)
        .enumerate()
    {
        let h = model.hidden(chunk)?;
        features
            .slice_mut(s![i * FEATURE_CHUNK..i * FEATURE_CHUNK + h.nrows(), ..])
            .assign(&h);
    }

    io::write_filter_grid(out.join("features.png"), w.view(), hidden.min(100), 10)?;
    io::write_reconstructions(out.join("reconstructions.png"), originals, recons.view())?;
    io::write_cost_csv(out.join("cost.csv"), history)?;
    let ys: Vec<f64> = history.iter().map(|e| e.cost).collect();
    let x0 = history.first().map_or(1, |e| e.epoch) as f64;
    LinePlot::new("mean training cost per epoch")
        .x_label("epoch")
        .y_label("cost")
        .x_start(x0)
        .write(out.join("cost.png"), &ys)?;
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
