//! What the deeplearning.net tutorial examples share: the data split, numpy's `RandomState`
//! (for the tutorials' exact initial weights), the tutorials' early stopping, their error
//! measure, the command-line flags, progress bars and the files written to `--out`.
#![allow(dead_code)] // each example uses part of it

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tensor_fn::io::Checkpoint;

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2};
use tensor_fn::data::mnist::Mnist;
use tensor_fn::prelude::*;

/// The flags every tutorial example takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// MNIST: a directory of IDX files or a mnist.pkl.gz (default: $TENSOR_FN_MNIST, else the
    /// shipped data/mnist).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Train on the first N of the 50000 training images only (for quick checks).
    #[arg(long, value_parser = at_least_one)]
    pub limit: Option<usize>,
    /// Where the results, the per-epoch log, the pictures and the checkpoint go.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Device: cpu, cuda, cuda:N, ptx-vm (the PTX interpreter: slow, for checks) or best.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// One line per epoch, no progress bar (for logs and benchmarks).
    #[arg(long)]
    pub quiet: bool,
}

/// A whole number of at least 1.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e} (expected a whole number of at least 1)")),
    }
}

/// A finite number above 0.
pub fn positive(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(_) => Err("must be a finite number above 0".into()),
        Err(e) => Err(format!("{e} (expected a number such as 0.1)")),
    }
}

/// A number in [0, 1).
pub fn fraction(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        Ok(_) => Err("must be at least 0 and below 1".into()),
        Err(e) => Err(format!("{e} (expected a number such as 0.3)")),
    }
}

impl Common {
    pub fn device(&self) -> Result<Device, tensor_fn::Error> {
        if self.device == "best" {
            let (d, why) = Device::best_with_reason();
            if let Some(why) = why {
                eprintln!("--device best: using the CPU ({why})");
            }
            return Ok(d);
        }
        Device::parse(&self.device)
    }

    /// The output directory, created.
    pub fn out_dir(&self) -> Result<&Path, String> {
        std::fs::create_dir_all(&self.out).map_err(|e| format!("{}: {e}", self.out.display()))?;
        Ok(&self.out)
    }

    pub fn bar(&self, len: usize, what: &str) -> ProgressBar {
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(len as u64)
        };
        let style =
            format!("{what} {{msg}} [{{bar:30}}] {{pos}}/{{len}}, {{per_sec}}, eta {{eta}}");
        if let Ok(s) = ProgressStyle::with_template(&style) {
            bar.set_style(s);
        }
        bar
    }
}

/// One part of the split: images as rows, labels as `i64`.
pub struct Part {
    pub x: Array2<f32>,
    pub y: Array1<i64>,
}

/// The tutorials' split of MNIST: train 50000, valid 10000, test 10000.
pub struct Data {
    pub train: Part,
    pub valid: Part,
    pub test: Part,
}

impl Data {
    pub fn load(common: &Common) -> Result<Data, Box<dyn std::error::Error>> {
        let t = Instant::now();
        let m = Mnist::load(common.data.as_deref())?;
        let (tx, vx) = m.seed_split();
        let (ty, vy) = m.seed_split_labels();
        let limit = common.limit.unwrap_or(tx.nrows()).min(tx.nrows());
        let d = Data {
            train: Part {
                x: tx.slice(s![..limit, ..]).to_owned(),
                y: ty.slice(s![..limit]).mapv(i64::from),
            },
            valid: Part {
                x: vx.to_owned(),
                y: vy.mapv(i64::from),
            },
            test: Part {
                x: m.test_images.clone(),
                y: m.test_labels.mapv(i64::from),
            },
        };
        eprintln!(
            "loaded MNIST: {} training, {} validation, {} test images in {:.2} s",
            d.train.x.nrows(),
            d.valid.x.nrows(),
            d.test.x.nrows(),
            t.elapsed().as_secs_f64()
        );
        Ok(d)
    }
}

/// The tutorials' error measure: the mean of the error rates of the `n / batch` whole
/// minibatches of a set (for minibatches of 600, the first 9600 of 10000 images), which is
/// what their published figures are. The minibatches are all of one size, so that is the
/// error rate over their images, counted here in chunks of about 1000.
pub fn tutorial_error(
    errors: impl for<'a> FnMut(
        ArrayView2<'a, f32>,
        ArrayView1<'a, i64>,
    ) -> Result<f32, tensor_fn::Error>,
    set: &Part,
    batch: usize,
) -> Result<f64, tensor_fn::Error> {
    let used = set.x.nrows() / batch * batch;
    error_rate(errors, set, used, batch * (1000 / batch).max(1))
}

/// The error rate over a whole set, in chunks of `chunk` images.
pub fn full_error(
    errors: impl for<'a> FnMut(
        ArrayView2<'a, f32>,
        ArrayView1<'a, i64>,
    ) -> Result<f32, tensor_fn::Error>,
    set: &Part,
    chunk: usize,
) -> Result<f64, tensor_fn::Error> {
    error_rate(errors, set, set.x.nrows(), chunk)
}

/// The error rate over the first `rows` images of a set, from the rates of chunks of `chunk`
/// images, each turned back into a whole count of errors.
fn error_rate(
    mut errors: impl for<'a> FnMut(
        ArrayView2<'a, f32>,
        ArrayView1<'a, i64>,
    ) -> Result<f32, tensor_fn::Error>,
    set: &Part,
    rows: usize,
    chunk: usize,
) -> Result<f64, tensor_fn::Error> {
    let mut wrong = 0.0;
    let mut at = 0;
    while at < rows {
        let end = (at + chunk).min(rows);
        let e = errors(set.x.slice(s![at..end, ..]), set.y.slice(s![at..end]))? as f64;
        wrong += (e * (end - at) as f64).round();
        at = end;
    }
    Ok(wrong / rows.max(1) as f64)
}

/// The tutorials' early stopping (`logistic_sgd.py`, `mlp.py`): validate every
/// `min(steps per epoch, patience / 2)` steps; a better validation error records the test
/// error, and one better by more than 0.5% extends the patience to twice the current step;
/// training stops once the step count reaches the patience (or after `max_epochs`).
pub struct EarlyStopping {
    pub patience: usize,
    pub patience_increase: usize,
    pub improvement_threshold: f64,
    pub validation_frequency: usize,
    pub best_valid: f64,
    pub best_iter: usize,
    pub test_at_best: f64,
}

impl EarlyStopping {
    pub fn new(patience: usize, steps_per_epoch: usize) -> Self {
        EarlyStopping {
            patience,
            patience_increase: 2,
            improvement_threshold: 0.995,
            validation_frequency: steps_per_epoch.min(patience / 2).max(1),
            best_valid: f64::INFINITY,
            best_iter: 0,
            test_at_best: f64::NAN,
        }
    }

    /// Whether step `iter` (counted from 0 over the whole run) ends with a validation.
    pub fn validates_after(&self, iter: usize) -> bool {
        (iter + 1).is_multiple_of(self.validation_frequency)
    }

    /// Records the validation error after step `iter`; returns whether it is the best so far
    /// (then the caller measures the test error and keeps the model).
    pub fn record(&mut self, iter: usize, valid: f64) -> bool {
        if valid < self.best_valid {
            if valid < self.best_valid * self.improvement_threshold {
                self.patience = self.patience.max(iter * self.patience_increase);
            }
            self.best_valid = valid;
            self.best_iter = iter;
            true
        } else {
            false
        }
    }

    /// Whether training stops after step `iter`.
    pub fn done(&self, iter: usize) -> bool {
        self.patience <= iter
    }
}

/// numpy's legacy `RandomState` (MT19937): the tutorials draw their initial weights from
/// `numpy.random.RandomState(seed)`, and these are the same numbers, so a run starts where
/// theirs (and the peers') does.
pub struct NumpyRandomState {
    mt: [u32; 624],
    index: usize,
}

impl NumpyRandomState {
    /// `RandomState(seed)` for a seed below 2^32 (numpy's `init_genrand`).
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        NumpyRandomState { mt, index: 624 }
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % 624] & 0x7fff_ffff);
            let mut v = self.mt[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.mt[i] = v;
        }
        self.index = 0;
    }

    /// The next 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random_sample()`: 53 random bits in [0, 1).
    pub fn random_sample(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// `uniform(low, high, size=(rows, cols))` cast to float32, in C order.
    pub fn uniform(&mut self, low: f64, high: f64, rows: usize, cols: usize) -> Array2<f32> {
        Array2::from_shape_simple_fn((rows, cols), || {
            (low + (high - low) * self.random_sample()) as f32
        })
    }

    /// `randint(2**30)`: one masked 32-bit output (every value passes the mask test).
    pub fn randint_2_30(&mut self) -> u64 {
        (self.next_u32() & ((1 << 30) - 1)) as u64
    }
}

/// One epoch's numbers, for the log and the results.
pub struct Epoch {
    pub epoch: usize,
    /// Mean of the epoch's minibatch costs (each taken before its step).
    pub cost: f64,
    /// Seconds of the epoch's training steps (validation and test passes excluded).
    pub train_seconds: f64,
    /// The tutorial-style validation error at the epoch's last validation, if any.
    pub valid: Option<f64>,
}

/// Writes `epochs.csv` atomically: one row per epoch.
pub fn write_epochs(out: &Path, epochs: &[Epoch]) -> Result<(), tensor_fn::Error> {
    let mut s = String::from("epoch,cost,train_seconds,valid_error\n");
    for e in epochs {
        let v = e.valid.map(|v| format!("{v:.6}")).unwrap_or_default();
        let _ = writeln!(s, "{},{:.6},{:.4},{v}", e.epoch, e.cost, e.train_seconds);
    }
    tensor_fn::io::write_atomic(out.join("epochs.csv"), s.as_bytes())
}

/// Writes `results.json` atomically from `(key, JSON value)` pairs.
pub fn write_results(out: &Path, fields: &[(&str, String)]) -> Result<(), tensor_fn::Error> {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("  \"{k}\": {v}"))
        .collect();
    let s = format!("{{\n{}\n}}\n", body.join(",\n"));
    tensor_fn::io::write_atomic(out.join("results.json"), s.as_bytes())
}

/// A JSON string.
pub fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON number (null for NaN or an infinity).
pub fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

/// The mean of `xs` (0 for none).
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Stops with an error naming the epoch when a cost is not finite.
pub fn require_finite_cost(epoch: usize, step: usize, cost: f32) -> Result<(), String> {
    if cost.is_finite() {
        Ok(())
    } else {
        Err(format!(
            "epoch {epoch}: the training cost is {cost} at step {}; stopping (a smaller \
             learning rate may help); the files in --out hold the last good state",
            step + 1
        ))
    }
}

/// A classifier the tutorials train: a step, an error rate, its parameters as a checkpoint and
/// back.
pub trait Classifier: Sized {
    fn step(
        &mut self,
        x: ArrayView2<f32>,
        y: ArrayView1<i64>,
        lr: f32,
    ) -> Result<f32, tensor_fn::Error>;
    fn errors(&self, x: ArrayView2<f32>, y: ArrayView1<i64>) -> Result<f32, tensor_fn::Error>;
    /// `step` for one rank of a data-parallel job, on its slice of the minibatch (a model
    /// with a `#[data_parallel]` training method). The cost is the whole minibatch's.
    fn step_data_parallel(
        &mut self,
        comm: &mut Communicator,
        x: ArrayView2<f32>,
        y: ArrayView1<i64>,
        lr: f32,
    ) -> Result<f32, tensor_fn::Error> {
        let _ = (comm, x, y, lr);
        Err(tensor_fn::Error::Comm {
            rank: None,
            message: "this model has no data-parallel training step".into(),
        })
    }
    /// The parameters, as host tensors in a checkpoint of `epoch`.
    fn snapshot(&self, epoch: usize) -> Result<Checkpoint, tensor_fn::Error>;
    /// A model on the CPU from a checkpoint `snapshot` wrote.
    fn restore(ck: &Checkpoint) -> Result<Self, tensor_fn::Error>;
}

/// The hyperparameters of a tutorial's training loop.
pub struct Schedule {
    pub max_epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub patience: usize,
}

/// What a run with early stopping ends with.
pub struct Fit {
    pub epochs: Vec<Epoch>,
    pub stop: EarlyStopping,
    pub steps_per_epoch: usize,
    /// The best-validation model's checkpoint (also in `--out`).
    pub best: Checkpoint,
}

/// The tutorials' training loop: SGD over the training set in file order, validating as
/// [`EarlyStopping`] says, measuring the test error of each new best model and keeping it as
/// `checkpoint.tfck` in `--out` (written atomically) with `epochs.csv` after every epoch.
pub fn fit<M: Classifier>(
    model: &mut M,
    data: &Data,
    common: &Common,
    sch: &Schedule,
) -> Result<Fit, Box<dyn std::error::Error>> {
    fit_with(model, data, common, sch, &mut Communicator::single(), None)
}

/// [`fit`] as one rank of a data-parallel job (`comm` of more than one process): each rank
/// trains on its slice of every minibatch through the model's data-parallel step, all ranks
/// validate the same parameters alike (so they stop alike), and rank 0 alone prints and
/// writes files. After every epoch rank 0 also writes `last.tfck`, the model as it is then
/// with the early stopping's state and the best model so far; `resume`, such a file
/// (whatever process count wrote it), continues the run after its epoch: the model must
/// already hold its parameters (`Classifier::restore` of it), the rest is taken from it here.
pub fn fit_with<M: Classifier>(
    model: &mut M,
    data: &Data,
    common: &Common,
    sch: &Schedule,
    comm: &mut Communicator,
    resume: Option<&Checkpoint>,
) -> Result<Fit, Box<dyn std::error::Error>> {
    let root = comm.is_root();
    let local = comm
        .slice(sch.batch)
        .map_err(|e| format!("--batch {}: {e}", sch.batch))?;
    let steps = data.train.x.nrows() / sch.batch;
    if steps == 0 {
        return Err(format!(
            "--batch {}: larger than the {} training images",
            sch.batch,
            data.train.x.nrows()
        )
        .into());
    }
    let out = if root {
        common.out_dir()?.to_path_buf()
    } else {
        common.out.clone()
    };
    let mut stop = EarlyStopping::new(sch.patience, steps);
    let mut epochs: Vec<Epoch> = Vec::new();
    let mut best: Option<Checkpoint> = None;
    let mut done = false;
    let mut epoch = 0;
    if let Some(ck) = resume {
        (stop, epochs, best) = resume_state(ck, steps, sch)?;
        epoch = ck.epoch;
        if root {
            eprintln!("resuming after epoch {epoch}");
        }
    }
    while epoch < sch.max_epochs && !done {
        epoch += 1;
        let bar = if root {
            common.bar(steps, "epoch")
        } else {
            ProgressBar::hidden()
        };
        bar.set_message(epoch.to_string());
        let (mut total, mut ran) = (0.0f64, 0usize);
        let mut train_seconds = 0.0;
        let mut valid = None;
        let mut t = Instant::now();
        for i in 0..steps {
            let r = i * sch.batch..(i + 1) * sch.batch;
            let c = if comm.size() > 1 {
                let mine = r.start + local.start..r.start + local.end;
                model.step_data_parallel(
                    comm,
                    data.train.x.slice(s![mine.clone(), ..]),
                    data.train.y.slice(s![mine]),
                    sch.lr,
                )?
            } else {
                model.step(
                    data.train.x.slice(s![r.clone(), ..]),
                    data.train.y.slice(s![r]),
                    sch.lr,
                )?
            };
            require_finite_cost(epoch, i, c)?;
            total += c as f64;
            ran += 1;
            let iter = (epoch - 1) * steps + i;
            if stop.validates_after(iter) {
                train_seconds += t.elapsed().as_secs_f64();
                let v = tutorial_error(|x, y| model.errors(x, y), &data.valid, sch.batch)?;
                valid = Some(v);
                if stop.record(iter, v) {
                    stop.test_at_best =
                        tutorial_error(|x, y| model.errors(x, y), &data.test, sch.batch)?;
                    let mut ck = model.snapshot(epoch)?;
                    ck.set_meta("valid_error", stop.best_valid.to_string())
                        .set_meta("test_error", stop.test_at_best.to_string());
                    best = Some(ck);
                }
                if !common.quiet && root {
                    bar.println(format!(
                        "epoch {epoch}, minibatch {}/{steps}, validation error {:.4} %",
                        i + 1,
                        v * 100.0
                    ));
                }
                t = Instant::now();
            }
            if stop.done(iter) {
                done = true;
                break;
            }
            if i % 64 == 0 {
                bar.set_position(i as u64);
            }
        }
        train_seconds += t.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let cost = total / ran.max(1) as f64;
        epochs.push(Epoch {
            epoch,
            cost,
            train_seconds,
            valid,
        });
        if !root {
            continue;
        }
        println!(
            "epoch {epoch}: cost {cost:.6}, {train_seconds:.3} s of training, validation error {} %",
            valid
                .map(|v| format!("{:.4}", v * 100.0))
                .unwrap_or_else(|| "-".into())
        );
        write_epochs(&out, &epochs)?;
        if let Some(ck) = &best {
            ck.save_atomic(out.join("checkpoint.tfck"))?;
        }
        let last = resume_point(
            model.snapshot(epoch)?,
            &stop,
            &epochs,
            best.as_ref(),
            steps,
            sch,
        );
        last.save_atomic(out.join("last.tfck"))?;
    }
    let best = best.ok_or("no validation ran: train for longer")?;
    Ok(Fit {
        epochs,
        stop,
        steps_per_epoch: steps,
        best,
    })
}

/// `last.tfck`: `now` (the model after `epoch`) with what a resumed run needs besides: the
/// early stopping's state, the epochs so far, and the best model's tensors and notes (under
/// `best/`), plus the minibatch and epoch length a resumed run must share.
fn resume_point(
    mut now: Checkpoint,
    stop: &EarlyStopping,
    epochs: &[Epoch],
    best: Option<&Checkpoint>,
    steps: usize,
    sch: &Schedule,
) -> Checkpoint {
    let history: Vec<String> = epochs
        .iter()
        .map(|e| {
            let v = e.valid.map_or("-".to_string(), |v| v.to_string());
            format!("{}:{}:{}:{v}", e.epoch, e.cost, e.train_seconds)
        })
        .collect();
    now.set_meta(
        "stop",
        format!(
            "{}:{}:{}:{}",
            stop.patience, stop.best_valid, stop.best_iter, stop.test_at_best
        ),
    )
    .set_meta("epochs", history.join(";"))
    .set_meta("batch", sch.batch.to_string())
    .set_meta("steps_per_epoch", steps.to_string());
    if let Some(b) = best {
        now.set_meta("best/epoch", b.epoch.to_string());
        for (k, v) in &b.meta {
            now.set_meta(format!("best/{k}"), v.clone());
        }
        for (name, t) in &b.tensors {
            now.insert(format!("best/{name}"), t);
        }
    }
    now
}

/// The early stopping, epochs and best model a `last.tfck` holds, checked against this run's
/// minibatch and epoch length (the validation schedule depends on both).
#[allow(clippy::type_complexity)]
fn resume_state(
    ck: &Checkpoint,
    steps: usize,
    sch: &Schedule,
) -> Result<(EarlyStopping, Vec<Epoch>, Option<Checkpoint>), String> {
    let bad = |what: &str| {
        format!("--resume: the checkpoint's {what} is missing or unreadable (a last.tfck of a tutorial run is needed)")
    };
    let get = |key: &str| ck.meta(key).ok_or_else(|| bad(key));
    let batch: usize = get("batch")?.parse().map_err(|_| bad("batch"))?;
    let their_steps: usize = get("steps_per_epoch")?
        .parse()
        .map_err(|_| bad("steps_per_epoch"))?;
    if batch != sch.batch || their_steps != steps {
        return Err(format!(
            "--resume: the checkpoint was trained with minibatches of {batch} and {their_steps} \
             steps per epoch, this run has {} and {steps} (pass the same --batch and --limit)",
            sch.batch
        ));
    }
    let f: Vec<&str> = get("stop")?.split(':').collect();
    let mut stop = EarlyStopping::new(sch.patience, steps);
    match f[..] {
        [p, v, i, t] => {
            stop.patience = p.parse().map_err(|_| bad("stop"))?;
            stop.best_valid = v.parse().map_err(|_| bad("stop"))?;
            stop.best_iter = i.parse().map_err(|_| bad("stop"))?;
            stop.test_at_best = t.parse().map_err(|_| bad("stop"))?;
        }
        _ => return Err(bad("stop")),
    }
    if stop.done(ck.epoch * steps) {
        return Err(format!(
            "--resume: the checkpoint's run already stopped early (no improvement for its \
             patience) at epoch {}",
            ck.epoch
        ));
    }
    let mut epochs = Vec::new();
    for row in get("epochs")?.split(';').filter(|r| !r.is_empty()) {
        let f: Vec<&str> = row.split(':').collect();
        let [e, c, t, v] = f[..] else {
            return Err(bad("epochs"));
        };
        epochs.push(Epoch {
            epoch: e.parse().map_err(|_| bad("epochs"))?,
            cost: c.parse().map_err(|_| bad("epochs"))?,
            train_seconds: t.parse().map_err(|_| bad("epochs"))?,
            valid: match v {
                "-" => None,
                v => Some(v.parse().map_err(|_| bad("epochs"))?),
            },
        });
    }
    let best = match ck.meta("best/epoch") {
        None => None,
        Some(e) => {
            let mut b = Checkpoint::new(
                e.parse().map_err(|_| bad("best/epoch"))?,
                ck.hidden,
                ck.seed,
            );
            for (k, v) in &ck.meta {
                if let Some(k) = k.strip_prefix("best/") {
                    if k != "epoch" {
                        b.set_meta(k, v.clone());
                    }
                }
            }
            for (name, t) in &ck.tensors {
                if let Some(n) = name.strip_prefix("best/") {
                    b.insert(n, t);
                }
            }
            Some(b)
        }
    };
    Ok((stop, epochs, best))
}

/// Prints the tutorial's closing lines for `fit`'s result and writes `results.json`: the
/// tutorial-style errors of the best model and its errors over the whole sets.
pub fn report<M: Classifier>(
    name: &str,
    device: Device,
    fit: &Fit,
    data: &Data,
    common: &Common,
    wall: Instant,
    extra: &[(&str, String)],
) -> Result<(), Box<dyn std::error::Error>> {
    let best = M::restore(&fit.best)?;
    let full_valid = full_error(|x, y| best.errors(x, y), &data.valid, 1000)?;
    let full_test = full_error(|x, y| best.errors(x, y), &data.test, 1000)?;
    let seconds: Vec<f64> = fit.epochs.iter().map(|e| e.train_seconds).collect();
    let epochs = fit.epochs.len();
    let wall = wall.elapsed().as_secs_f64();
    let stop = &fit.stop;
    println!(
        "Optimization complete with best validation score of {:.6} %, with test performance \
         {:.6} % (whole sets: {:.2} % / {:.2} %)",
        stop.best_valid * 100.0,
        stop.test_at_best * 100.0,
        full_valid * 100.0,
        full_test * 100.0
    );
    println!(
        "The code ran for {epochs} epochs, {:.3} s of training per epoch, {wall:.1} s in all",
        mean(&seconds)
    );
    let mut fields = vec![
        ("model", json_str(name)),
        ("device", json_str(&device.to_string())),
        ("epochs", epochs.to_string()),
        (
            "best_epoch",
            (stop.best_iter / fit.steps_per_epoch + 1).to_string(),
        ),
        ("best_valid_error", json_num(stop.best_valid)),
        ("test_error", json_num(stop.test_at_best)),
        ("whole_valid_error", json_num(full_valid)),
        ("whole_test_error", json_num(full_test)),
        ("train_seconds_per_epoch", json_num(mean(&seconds))),
        ("wall_seconds", json_num(wall)),
    ];
    fields.extend_from_slice(extra);
    write_results(&common.out, &fields)?;
    Ok(())
}
