//! What one step's all-reduce costs: the sum of a data-parallel method's flat buffer across
//! the ranks of this job, timed over repetitions. Run under `mpirun -np N` (a build with
//! `--features mpi`); alone it measures a world of one.
//!
//! Run: `mpirun -np 2 target/release/examples/allreduce_time`

use std::time::Instant;

use tensor_fn::prelude::*;

fn main() {
    let mut comm = match Communicator::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    // The flat buffers of the seed's autoencoder (W, b1, b2 and the cost) and of LeNet (its
    // eight parameters and the cost).
    let models = [
        ("seed autoencoder", 784 * 500 + 500 + 784 + 1),
        (
            "LeNet",
            20 * 25 + 20 + 50 * 20 * 25 + 50 + 800 * 500 + 500 + 500 * 10 + 10 + 1,
        ),
    ];
    for (name, len) in models {
        let mut buf = comm.take_flat::<f32>(len);
        buf.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
        let reps = 200;
        let mut run = |buf: Vec<f32>, n: usize| -> Result<(Vec<f32>, f64), Error> {
            comm.barrier()?;
            let t = Instant::now();
            let mut buf = buf;
            for _ in 0..n {
                buf = comm.all_reduce_sum_vec(buf)?;
            }
            Ok((buf, t.elapsed().as_secs_f64() / n as f64))
        };
        let result = run(buf, 20).and_then(|(b, _)| run(b, reps));
        match result {
            Ok((b, secs)) => {
                if comm.is_root() {
                    println!(
                        "{name}: {len} floats ({:.2} MB), {:.0} us per all-reduce over {} processes ({})",
                        len as f64 * 4.0 / 1e6,
                        secs * 1e6,
                        comm.size(),
                        comm.engine()
                    );
                }
                comm.give_flat(b);
            }
            Err(e) => {
                eprintln!("error: rank {}: {e}", comm.rank());
                comm.abort(1);
            }
        }
    }
}
