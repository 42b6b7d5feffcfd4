#!/usr/bin/env bash
# The project's test command: everything CI checks, on a fresh machine, with no GPU.
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
# ptxas validates every PTX kernel we emit (no GPU needed); fetched from PyPI once into .tools.
PTXAS="$(bash scripts/fetch-ptxas.sh)"
export PTXAS
# Unit tests of every crate, integration tests (seed values, gradient checks, compile-fail
# cases, MNIST loaders), doc tests; examples are built too.
cargo test --workspace
# Every crate declares the same rust-version, and no std API newer than it is used.
cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
v = {p["name"]: p["rust_version"] for p in json.load(sys.stdin)["packages"]}
if None in v.values() or len(set(v.values())) != 1:
    sys.exit(f"scripts/test.sh: every crate must declare the workspace rust-version: {v}")'
cargo clippy --workspace --all-targets -- -D clippy::incompatible_msrv
bash scripts/check-cli.sh # the main job's CLI: runs, resumes, refuses bad input, keeps its files
# Data parallelism over Open MPI (feature `mpi`): two ranks under `mpirun -np 2` train as one
# process does, a killed rank is an error on the other, and the main job and LeNet run under
# mpirun and resume with another process count.
bash scripts/install-mpi.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 # CI runs as root
cargo test --features mpi --test data_parallel -- --test-threads 1
bash scripts/check-data-parallel.sh
# The seed's introduction runs end to end and prints exactly the committed text (it prints no
# timings: the same bytes on every machine and thread count).
intro="$(mktemp)"
cargo run --quiet --example theano_intro >"$intro"
if ! diff -u examples/theano_intro.expected.txt "$intro"; then
    echo "scripts/test.sh: the theano_intro example's output differs from" \
        "examples/theano_intro.expected.txt (diff above: - expected, + printed)" >&2
    exit 1
fi
rm -f "$intro"

# The CUDA backend (feature `cuda`) builds and runs here without a GPU, three ways.
# cust's build script links against the stub libcuda.so.1 of scripts/cuda-stub.sh (found
# through CUDA_LIBRARY_PATH); the test binaries load a driver at run time with dlopen, from
# LD_LIBRARY_PATH first. (On a GPU machine they load NVIDIA's: scripts/package-gpu.sh.)
stub="$(bash scripts/cuda-stub.sh .tools/cuda-stub)"
export CUDA_LIBRARY_PATH="$stub"
# 1. The stub, whose every function answers CUDA_ERROR_NO_DEVICE: "no CUDA device", no panic.
env -u TENSOR_FN_REQUIRE_GPU LD_LIBRARY_PATH="$stub/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    cargo test -p tensor-fn-runtime --features cuda --lib
# 2. No libcuda.so.1 at all: the binary still starts and reports "no CUDA driver".
env -u TENSOR_FN_REQUIRE_GPU -u LD_LIBRARY_PATH cargo test -p tensor-fn-runtime --features cuda --lib
# The NCCL engine (feature `nccl`: data parallelism on GPUs, NCCL loaded at run time) builds
# here and reports "no NCCL/GPU" cleanly: there is no libnccl.so.2, and no GPU behind the stub.
env -u TENSOR_FN_REQUIRE_GPU LD_LIBRARY_PATH="$stub/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    cargo test --features nccl --test nccl -- --nocapture
env -u TENSOR_FN_REQUIRE_GPU LD_LIBRARY_PATH="$stub/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    cargo test -p tensor-fn-runtime --features nccl --lib dist
# 3. The emulated driver (runtime/cuda-emu: the driver API on our PTX interpreter, with real
# stream and capture semantics): one GPU, cuda:0, and every GPU test must run on it
# (TENSOR_FN_REQUIRE_GPU=1 turns a skip into a failure). First the emulator's own tests.
emu_cargo() { # emu_cargo SUBCOMMAND [ARGS...]: cargo on the emulator's own workspace
    cargo "$1" --release --locked --manifest-path runtime/cuda-emu/Cargo.toml \
        --target-dir "${CARGO_TARGET_DIR:-target}/cuda-emu" "${@:2}"
}
emu_cargo test --quiet
emu_cargo clippy --quiet --all-targets -- -D warnings -D clippy::incompatible_msrv
emu="$(bash scripts/cuda-emu.sh .tools/cuda-emu)"
with_emu() {
    env TENSOR_FN_REQUIRE_GPU=1 LD_LIBRARY_PATH="$emu/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"
}
with_emu cargo test -p tensor-fn-runtime --features cuda
with_emu cargo test --features cuda --test gpu
# Without graphs, device arguments are read in place instead of staged: the same tests again.
TENSOR_FN_CUDA_GRAPHS=0 with_emu cargo test --features cuda --test gpu
# The main job with --device cuda: a few steps, costs equal to the CPU run's to 1e-5.
bash scripts/check-cuda-job.sh "$emu"
echo "scripts/test.sh: all checks passed"
