//! Data-parallel training: `#[data_parallel]` methods and `tensor_fn::dist::Communicator`.
//!
//! Without MPI: the staged step (gradients into one flat buffer, all-reduce, updates) equals
//! the fused single-process step, and a world of one runs the fused step itself.
//!
//! With `--features mpi` (Open MPI installed; `scripts/test.sh` installs it): this test binary
//! runs itself under `mpirun -np 2` (the ignored test `mpi_worker`), and
//! - two ranks, each on half of every minibatch, train the seed's autoencoder and LeNet for
//!   100 steps to the parameters and costs of one process on the whole minibatches;
//! - a rank killed in the middle of training makes the other fail with an error naming it,
//!   within the collective timeout, instead of hanging.

mod common;
#[path = "common/lenet.rs"]
mod lenet_model;
#[path = "common/seed.rs"]
mod seed_model;

use lenet_model::LeNet;
use ndarray::{s, Array1, Array2, ArrayD, ArrayView1, ArrayView2};
use seed_model::Autoencoder;
use tensor_fn::data::mnist::Mnist;
use tensor_fn::prelude::*;

tensor_fn! {
    /// Two outputs, momentum, weight decay: what the staging must keep apart (the velocity is
    /// a parameter, updated from the averaged gradient).
    pub struct Momentum { w: f64[6, 3], v: f64[6, 3], b: f64[3] }

    impl Momentum {
        #[data_parallel]
        pub fn train(&mut self, x: f64[n, 6], y: i64[n], lr: f64, mu: f64) -> (f64, f64) {
            let p = log_softmax(dot(x, w) + b);
            let cost = -mean(p[arange(n), y]) + 0.01 * sum(w * w);
            let wrong = mean(neq(argmax(p, axis = 1), y));
            v = mu * v - lr * grad(cost, w);
            w += mu * v - lr * grad(cost, w);
            b -= lr * grad(cost, b);
            (cost, wrong)
        }
    }
}

tensor_fn! {
    /// A denoising autoencoder's step: its corruption is a draw.
    pub struct Denoising { w: f32[12, 5], b: f32[5], c: f32[12] }

    impl Denoising {
        #[data_parallel]
        pub fn train(&mut self, x: f32[n, 12], lr: f32) -> f32 {
            let noisy = x * binomial(shape(x), 0.7);
            let z = sigmoid(dot(sigmoid(dot(noisy, w) + b), w.T) + c);
            let cost = mean(-sum(x * log(z) + (1 - x) * log(1 - z), axis = 1));
            w -= lr * grad(cost, w);
            b -= lr * grad(cost, b);
            c -= lr * grad(cost, c);
            cost
        }
    }
}

const STEPS: usize = 100;

/// The first `n` shipped training images and their labels.
fn data(n: usize) -> (Array2<f32>, Array1<i64>) {
    let m = Mnist::load(None).expect("the shipped MNIST loads");
    (
        m.train_images.slice(s![..n, ..]).to_owned(),
        m.train_labels.slice(s![..n]).mapv(|l| l as i64),
    )
}

fn seed_model() -> Autoencoder {
    Autoencoder::new(common::init(500), Array1::zeros(500), Array1::zeros(784)).unwrap()
}

fn fill(shape: &[usize], seed: u32, scale: f32) -> ArrayD<f32> {
    let mut i = 0u32;
    ArrayD::from_shape_fn(shape, |_| {
        i += 1;
        let mut x = i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503);
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale
    })
}

fn lenet() -> LeNet {
    let d4 = |a: ArrayD<f32>| a.into_dimensionality::<ndarray::Ix4>().unwrap();
    let d2 = |a: ArrayD<f32>| a.into_dimensionality::<ndarray::Ix2>().unwrap();
    LeNet::new(
        d4(fill(&[20, 1, 5, 5], 1, 0.2)),
        Array1::zeros(20),
        d4(fill(&[50, 20, 5, 5], 2, 0.04)),
        Array1::zeros(50),
        d2(fill(&[800, 500], 3, 0.07)),
        Array1::zeros(500),
        d2(fill(&[500, 10], 4, 0.1)),
        Array1::zeros(10),
    )
    .unwrap()
}

/// A model's parameters, flattened in declared order.
fn seed_params(m: &Autoencoder) -> Vec<Vec<f32>> {
    vec![
        m.w.get_value().unwrap().iter().copied().collect(),
        m.b1.get_value().unwrap().to_vec(),
        m.b2.get_value().unwrap().to_vec(),
    ]
}

fn lenet_params(m: &LeNet) -> Vec<Vec<f32>> {
    vec![
        m.w0.get_value().unwrap().iter().copied().collect(),
        m.b0.get_value().unwrap().to_vec(),
        m.w1.get_value().unwrap().iter().copied().collect(),
        m.b1.get_value().unwrap().to_vec(),
        m.w2.get_value().unwrap().iter().copied().collect(),
        m.b2.get_value().unwrap().to_vec(),
        m.w3.get_value().unwrap().iter().copied().collect(),
        m.b3.get_value().unwrap().to_vec(),
    ]
}

/// The largest difference of `a` from `b`, relative to `b`'s largest magnitude, over every
/// tensor (each tensor relative to itself).
fn worst_relative(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            let scale = y.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-30);
            let diff = x
                .iter()
                .zip(y)
                .fold(0f64, |m, (p, q)| m.max((*p as f64 - *q as f64).abs()));
            diff / scale
        })
        .fold(0.0, f64::max)
}

/// One rank's run: `steps` global minibatches of `batch` rows, this rank's slice of each.
/// Returns the costs (averaged over the ranks, so alike on all of them).
fn seed_run(
    m: &mut Autoencoder,
    comm: Option<&mut Communicator>,
    x: ArrayView2<f32>,
    batch: usize,
) -> Vec<f32> {
    let mut costs = Vec::new();
    match comm {
        None => {
            for i in 0..STEPS {
                let rows = i * batch..(i + 1) * batch;
                costs.push(m.train(x.slice(s![rows, ..]), 0.1).unwrap());
            }
        }
        Some(comm) => {
            let local = comm.slice(batch).unwrap();
            for i in 0..STEPS {
                let rows = i * batch + local.start..i * batch + local.end;
                let c = m.train_data_parallel(comm, x.slice(s![rows, ..]), 0.1);
                costs.push(c.unwrap_or_else(|e| {
                    eprintln!("error: {e}");
                    std::process::exit(3)
                }));
            }
        }
    }
    costs
}

fn lenet_run(
    m: &mut LeNet,
    comm: Option<&mut Communicator>,
    x: ArrayView2<f32>,
    y: ArrayView1<i64>,
    batch: usize,
) -> Vec<f32> {
    let mut costs = Vec::new();
    let local = match &comm {
        Some(c) => c.slice(batch).unwrap(),
        None => 0..batch,
    };
    let mut comm = comm;
    for i in 0..STEPS {
        let rows = i * batch + local.start..i * batch + local.end;
        let (xs, ys) = (x.slice(s![rows.clone(), ..]), y.slice(s![rows]));
        let c = match comm.as_deref_mut() {
            None => m.train(xs, ys, 0.05),
            Some(comm) => m.train_data_parallel(comm, xs, ys, 0.05),
        };
        costs.push(c.unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(3)
        }));
    }
    costs
}

fn as_params(costs: &[f32]) -> Vec<Vec<f32>> {
    vec![costs.to_vec()]
}

#[test]
fn the_staged_step_equals_the_fused_step() {
    let (x, _) = data(STEPS * 20);
    let (mut fused, mut staged) = (seed_model(), seed_model());
    let mut comm = Communicator::single();
    comm.set_stage_alone(true);
    assert!(comm.stages());
    let c1 = seed_run(&mut fused, None, x.view(), 20);
    let c2 = seed_run(&mut staged, Some(&mut comm), x.view(), 20);
    let worst = worst_relative(&seed_params(&staged), &seed_params(&fused));
    let worst_cost = worst_relative(&as_params(&c2), &as_params(&c1));
    eprintln!(
        "seed, staged vs fused over {STEPS} steps: parameters {worst:.2e}, costs {worst_cost:.2e}"
    );
    assert!(worst <= 1e-5 && worst_cost <= 1e-5);
}

#[test]
fn a_world_of_one_runs_the_fused_step() {
    let (x, _) = data(40);
    let (mut a, mut b) = (seed_model(), seed_model());
    let mut comm = Communicator::single();
    assert!(!comm.stages());
    for i in 0..2 {
        let rows = s![i * 20..(i + 1) * 20, ..];
        let ca = a.train(x.slice(rows), 0.1).unwrap();
        let cb = b
            .train_data_parallel(&mut comm, x.slice(rows), 0.1)
            .unwrap();
        assert_eq!(ca, cb);
    }
    assert_eq!(seed_params(&a), seed_params(&b));
}

#[test]
fn lenet_staged_equals_fused() {
    let (x, y) = data(STEPS * 10);
    let (mut fused, mut staged) = (lenet(), lenet());
    let mut comm = Communicator::single();
    comm.set_stage_alone(true);
    let c1 = lenet_run(&mut fused, None, x.view(), y.view(), 10);
    let c2 = lenet_run(&mut staged, Some(&mut comm), x.view(), y.view(), 10);
    let worst = worst_relative(&lenet_params(&staged), &lenet_params(&fused));
    let worst_cost = worst_relative(&as_params(&c2), &as_params(&c1));
    eprintln!(
        "lenet, staged vs fused over {STEPS} steps: parameters {worst:.2e}, costs {worst_cost:.2e}"
    );
    assert!(worst <= 1e-5 && worst_cost <= 1e-5);
}

#[test]
fn momentum_and_integer_outputs_stage_alike() {
    let x = Array2::from_shape_fn((8, 6), |(i, j)| ((i * 5 + j * 3) % 7) as f64 / 7.0 - 0.4);
    let y = Array1::from_shape_fn(8, |i| (i % 3) as i64);
    let w = Array2::from_shape_fn((6, 3), |(i, j)| (i as f64 - j as f64) * 0.05);
    let mut a = Momentum::new(w.clone(), Array2::zeros((6, 3)), Array1::zeros(3)).unwrap();
    let mut b = Momentum::new(w, Array2::zeros((6, 3)), Array1::zeros(3)).unwrap();
    let mut comm = Communicator::single();
    comm.set_stage_alone(true);
    for _ in 0..20 {
        let (ca, wa) = a.train(x.view(), y.view(), 0.3, 0.9).unwrap();
        let (cb, wb) = b
            .train_data_parallel(&mut comm, x.view(), y.view(), 0.3, 0.9)
            .unwrap();
        assert!((ca - cb).abs() <= 1e-12 * ca.abs(), "{ca} vs {cb}");
        assert_eq!(wa, wb);
    }
    let (wa, wb) = (a.w.get_value().unwrap(), b.w.get_value().unwrap());
    let (va, vb) = (a.v.get_value().unwrap(), b.v.get_value().unwrap());
    for (p, q) in wa.iter().zip(&wb).chain(va.iter().zip(&vb)) {
        assert!((p - q).abs() <= 1e-12, "{p} vs {q}");
    }
}

#[test]
fn ranks_draw_their_own_corruption() {
    let x = Array2::from_shape_fn((6, 12), |(i, j)| ((i * 5 + j * 7) % 11) as f32 / 11.0);
    let w = Array2::from_shape_fn((12, 5), |(i, j)| (i as f32 - j as f32 * 2.0) * 0.03);
    let model = || Denoising::new(w.clone(), Array1::zeros(5), Array1::zeros(12)).unwrap();
    // Rank 0 draws what one process draws: the staged step of a world of one is the fused one.
    let (mut fused, mut staged) = (model(), model());
    let mut comm = Communicator::single();
    comm.set_stage_alone(true);
    for _ in 0..5 {
        let a = fused.train(x.view(), 0.1).unwrap();
        let b = staged
            .train_data_parallel(&mut comm, x.view(), 0.1)
            .unwrap();
        assert!((a - b).abs() <= 1e-6 * a.abs(), "{a} vs {b}");
    }
    assert_eq!(fused.random_stream(), staged.random_stream());
    // Other ranks draw with keys of their own, from the same position of the stream.
    let s = tensor_fn::RandomStream::new(7, 3);
    let [k0, c0] = s.clone().next_call_of_rank(0);
    let [k1, c1] = s.next_call_of_rank(1);
    assert_eq!((k0, c0, c1), (7, 3, 3));
    assert_ne!(k1, 7);
}

#[test]
fn the_staged_plan_sums_gradients_in_place() {
    // The tied weight's two products accumulate into the flat buffer's piece; the updates
    // read the summed gradients, scaled by 1 / ranks.
    let grads = Autoencoder::TRAIN_GRADS_INFO.plan;
    assert!(
        grads.contains("b18.T x b9 (k = b) + %44: b3.T x b20 (k = b)")
            || grads
                .lines()
                .any(|l| l.contains("gemm") && l.contains(" + %")),
        "{grads}"
    );
    let apply = Autoencoder::TRAIN_APPLY_INFO.plan;
    assert!(!apply.contains("gemm"), "{apply}");
    assert!(Autoencoder::TRAIN_APPLY_INFO
        .signature
        .contains("__inv_ranks"));
}

#[test]
fn a_minibatch_the_ranks_cannot_share_is_an_error() {
    let comm = Communicator::single();
    assert_eq!(comm.slice(7).unwrap(), 0..7);
    assert_eq!(comm.rank(), 0);
    assert!(comm.is_root());
}

#[cfg(feature = "mpi")]
mod mpi {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// Writes `tensors` as little-endian f32s, each preceded by its length.
    fn write_tensors(path: &Path, tensors: &[Vec<f32>]) {
        let mut bytes = Vec::new();
        for t in tensors {
            bytes.extend((t.len() as u64).to_le_bytes());
            for v in t {
                bytes.extend(v.to_le_bytes());
            }
        }
        std::fs::write(path, bytes).unwrap();
    }

    fn read_tensors(path: &Path) -> Vec<Vec<f32>> {
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("{}: {e} (rank 0 wrote no result)", path.display()));
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let n = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            at += 8;
            out.push(
                bytes[at..at + 4 * n]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            );
            at += 4 * n;
        }
        out
    }

    /// Runs `mpi_worker` of this binary on two ranks; returns its exit status and output.
    fn mpirun(mode: &str, out: &Path, extra: &[&str], timeout_secs: &str) -> (bool, String, f64) {
        let exe = std::env::current_exe().unwrap();
        let start = Instant::now();
        let mut cmd = Command::new("mpirun");
        cmd.args(["-np", "2", "--oversubscribe"])
            .args(extra)
            .arg(&exe)
            .args(["mpi::mpi_worker", "--ignored", "--exact", "--nocapture"])
            .env("TF_DP_WORKER", mode)
            .env("TF_DP_OUT", out)
            .env("TENSOR_FN_COMM_TIMEOUT", timeout_secs)
            // Allowed, and harmless when not root: CI runs as root.
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        let o = cmd.output().unwrap_or_else(|e| {
            panic!("mpirun: {e}: these tests need Open MPI (Debian: apt-get install openmpi-bin)")
        });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text, start.elapsed().as_secs_f64())
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tensor-fn-dp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn two_ranks_train_the_seed_model_as_one_process() {
        let out = scratch("seed.bin");
        let (ok, text, _) = mpirun("seed", &out, &[], "60");
        assert!(ok, "{text}");
        let got = read_tensors(&out);
        let (x, _) = data(STEPS * 20);
        let mut one = seed_model();
        let costs = seed_run(&mut one, None, x.view(), 20);
        let params = worst_relative(&got[..3], &seed_params(&one));
        let cost = worst_relative(&got[3..], &as_params(&costs));
        eprintln!("seed, 2 ranks vs 1 process over {STEPS} steps: parameters {params:.2e}, costs {cost:.2e}");
        assert!(params <= 1e-5 && cost <= 1e-5);
    }

    #[test]
    fn two_ranks_train_lenet_as_one_process() {
        let out = scratch("lenet.bin");
        let (ok, text, _) = mpirun("lenet", &out, &[], "60");
        assert!(ok, "{text}");
        let got = read_tensors(&out);
        let (x, y) = data(STEPS * 10);
        let mut one = lenet();
        let costs = lenet_run(&mut one, None, x.view(), y.view(), 10);
        let params = worst_relative(&got[..8], &lenet_params(&one));
        let cost = worst_relative(&got[8..], &as_params(&costs));
        eprintln!("lenet, 2 ranks vs 1 process over {STEPS} steps: parameters {params:.2e}, costs {cost:.2e}");
        assert!(params <= 1e-5 && cost <= 1e-5);
    }

    #[test]
    fn a_killed_rank_is_an_error_on_the_other() {
        // Recovery on: mpirun lets the survivor run on (by default it would stop it itself,
        // which also does not hang), so the survivor's own timeout must catch the death.
        let out = scratch("kill.bin");
        let (_, text, secs) = mpirun("kill", &out, &["--enable-recovery"], "3");
        let want = "rank 0: all-reduce #51 did not finish within 3";
        assert!(
            text.contains(want) && text.contains("rank 1 did not answer (dead or stuck)"),
            "{text}"
        );
        assert!(secs < 60.0, "took {secs} s");
        assert!(!out.exists(), "the survivor must not report success");
        // Recovery off (mpirun's default): the launcher itself stops the job and names the
        // dead rank.
        let (ok, text, secs) = mpirun("kill", &out, &[], "3");
        assert!(
            !ok && text.contains("rank 1") && text.contains("signal 9"),
            "{text}"
        );
        assert!(secs < 60.0, "took {secs} s");
        assert!(!out.exists(), "the survivor must not report success");
    }

    #[test]
    fn ranks_with_different_models_are_an_error() {
        let out = scratch("mismatch.bin");
        let (ok, text, secs) = mpirun("mismatch", &out, &[], "10");
        assert!(!ok, "{text}");
        assert!(
            text.contains("the ranks sum data-parallel buffers of different lengths (this rank"),
            "{text}"
        );
        assert!(secs < 60.0, "took {secs} s");
    }

    /// One rank of the runs above (run by `mpirun`, never alone: without `TF_DP_WORKER` it
    /// returns at once).
    #[test]
    #[ignore = "run by mpirun from the tests of this module"]
    fn mpi_worker() {
        let Ok(mode) = std::env::var("TF_DP_WORKER") else {
            return;
        };
        let out = PathBuf::from(std::env::var("TF_DP_OUT").unwrap());
        let mut comm = Communicator::from_env().unwrap();
        assert_eq!(comm.size(), 2);
        assert_eq!(comm.engine(), "mpi");
        let _ = Duration::ZERO;
        let tensors = match mode.as_str() {
            "seed" | "kill" => {
                let (x, _) = data(STEPS * 20);
                let mut m = seed_model();
                let local = comm.slice(20).unwrap();
                let mut costs = Vec::new();
                for i in 0..STEPS {
                    if mode == "kill" && i == 50 && comm.rank() == 1 {
                        let pid = std::process::id().to_string();
                        let _ = Command::new("kill").args(["-9", &pid]).status();
                    }
                    let rows = i * 20 + local.start..i * 20 + local.end;
                    match m.train_data_parallel(&mut comm, x.slice(s![rows, ..]), 0.1) {
                        Ok(c) => costs.push(c),
                        Err(e) => {
                            eprintln!("error: {e}");
                            comm.abort(3);
                        }
                    }
                }
                let mut t = seed_params(&m);
                t.push(costs);
                t
            }
            "mismatch" => {
                // Rank 1 has one hidden unit fewer: its flat buffer is 785 elements shorter.
                let h = 500 - comm.rank();
                let mut m = Autoencoder::new(common::init(h), Array1::zeros(h), Array1::zeros(784))
                    .unwrap();
                let (x, _) = data(20);
                let local = comm.slice(20).unwrap();
                if let Err(e) = m.train_data_parallel(&mut comm, x.slice(s![local, ..]), 0.1) {
                    eprintln!("error: {e}");
                    comm.abort(3);
                }
                Vec::new()
            }
            "lenet" => {
                let (x, y) = data(STEPS * 10);
                let mut m = lenet();
                let costs = lenet_run(&mut m, Some(&mut comm), x.view(), y.view(), 10);
                let mut t = lenet_params(&m);
                t.push(costs);
                t
            }
            other => panic!("unknown worker mode {other}"),
        };
        if comm.is_root() {
            write_tensors(&out, &tensors);
        }
    }
}
