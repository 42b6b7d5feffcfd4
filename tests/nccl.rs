//! The NCCL engine of `Communicator` (feature `nccl`): on a GPU machine it averages buffers
//! across the ranks of an `mpirun` job (or is the identity in a world of one); anywhere else
//! making it is a clear "no NCCL/GPU" error, never a panic.
//!
//! ```text
//! cargo test --features nccl --test nccl                       # here: the error
//! TENSOR_FN_REQUIRE_GPU=1 mpirun -np 2 target/.../nccl-<hash>  # two GPUs: the means
//! ```
//!
//! One test only: MPI, which bootstraps NCCL, can be initialized once per process.
#![cfg(feature = "nccl")]

#[path = "common/seed.rs"]
mod seed_model;

use ndarray::{s, Array1, Array2};
use seed_model::Autoencoder;
use tensor_fn::data::mnist::Mnist;
use tensor_fn::dist::Communicator;
use tensor_fn::gpu::testing::gpu_required;
use tensor_fn::Device;

#[test]
fn nccl_averages_across_ranks_or_says_why_it_cannot() {
    let mut comm = match Communicator::nccl() {
        Ok(comm) => comm,
        Err(e) => {
            let text = e.to_string();
            assert!(
                !gpu_required(),
                "TENSOR_FN_REQUIRE_GPU=1, but NCCL did not start: {text}"
            );
            assert!(text.contains("no NCCL/GPU: "), "{text}");
            eprintln!("skipped: {text}");
            return;
        }
    };
    assert_eq!(comm.engine(), "nccl");
    let (rank, size) = (comm.rank(), comm.size());
    assert!(rank < size, "rank {rank} of {size}");

    // Rank r holds r * 1000 + i at index i, so the mean is i + 500 * (size - 1): exact in
    // f32 for these sizes. A world of one gives the buffer back unchanged.
    let spread = 500.0 * (size - 1) as f64;
    let mut small: Vec<f32> = (0..1000).map(|i| (rank * 1000 + i) as f32).collect();
    comm.all_reduce_mean(&mut small).unwrap();
    for (i, &x) in small.iter().enumerate() {
        assert_eq!(
            x,
            (i as f64 + spread) as f32,
            "f32 index {i} on rank {rank}"
        );
    }
    // Longer than the first (the staging buffer grows), odd-sized, and f64.
    let mut large: Vec<f64> = (0..100_001).map(|i| (rank * 1000 + i) as f64).collect();
    comm.all_reduce_mean(&mut large).unwrap();
    for (i, &x) in large.iter().enumerate() {
        assert_eq!(x, i as f64 + spread, "f64 index {i} on rank {rank}");
    }
    // Shorter again, after the larger one.
    let mut one = [rank as f32 * 2.0];
    comm.all_reduce_mean(&mut one).unwrap();
    assert_eq!(one[0], (size - 1) as f32, "rank {rank}");

    // Broadcasts go through MPI: every rank ends with rank 0's values.
    let mut start = [rank as f64 + 0.5; 3];
    comm.broadcast(&mut start, 0).unwrap();
    assert_eq!(start, [0.5; 3], "rank {rank}");
    comm.barrier().unwrap();

    // Training: the seed model on this rank's GPU, each rank on its slice of 100 minibatches
    // of 20 through the staged step, against one process on the whole minibatches (the fused
    // step, on the same GPU), to 1e-5 relative.
    comm.set_stage_alone(true);
    let images = Mnist::load(None)
        .expect("the shipped MNIST loads")
        .train_images;
    let x = images.slice(s![..2000, ..]);
    let init = Array2::from_shape_fn((784, 500), |(i, j)| {
        ((i * 7919 + j * 104729) % 1000) as f32 / 1000.0 * 0.2 - 0.1
    });
    let mut dp = Autoencoder::new(init.clone(), Array1::zeros(500), Array1::zeros(784)).unwrap();
    let mut one = Autoencoder::new(init, Array1::zeros(500), Array1::zeros(784)).unwrap();
    let local = comm.slice(20).unwrap();
    let gpu: Device = comm.device().expect("an NCCL communicator has a GPU");
    dp.to_device(gpu).unwrap();
    one.to_device(gpu).unwrap();
    let mut worst = 0f64;
    for i in 0..100 {
        let mine = s![i * 20 + local.start..i * 20 + local.end, ..];
        let c = dp
            .train_data_parallel(&mut comm, x.slice(mine), 0.1)
            .unwrap();
        let c1 = one
            .train(x.slice(s![i * 20..(i + 1) * 20, ..]), 0.1)
            .unwrap();
        worst = worst.max(((c - c1) / c1).abs() as f64);
    }
    let (a, b) = (dp.w.get_value().unwrap(), one.w.get_value().unwrap());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    eprintln!(
        "rank {rank} of {size}, NCCL on {gpu}: W differs by {:.2e}, costs by {worst:.2e}",
        diff / scale
    );
    assert!(diff / scale <= 1e-5 && worst <= 1e-5);
}
