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

use tensor_fn::dist::Communicator;
use tensor_fn::gpu::testing::gpu_required;

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
}
