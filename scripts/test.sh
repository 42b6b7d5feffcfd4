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
# The seed's introduction runs end to end and prints what Theano printed.
cargo run --quiet --example theano_intro >/dev/null

# The CUDA backend (feature `cuda`) builds and runs here without a GPU: against a stub
# libcuda.so.1 whose every function answers CUDA_ERROR_NO_DEVICE (scripts/cuda-stub.sh).
# cust's build script finds it through CUDA_LIBRARY_PATH (at $stub/lib64); the test binaries
# load it through LD_LIBRARY_PATH, see "no CUDA device" and skip what needs a GPU. (On a GPU
# machine the same binaries load the driver's libcuda.so.1: scripts/package-gpu.sh.)
stub="$(bash scripts/cuda-stub.sh .tools/cuda-stub)"
with_stub() {
    env -u TENSOR_FN_REQUIRE_GPU CUDA_LIBRARY_PATH="$stub" \
        LD_LIBRARY_PATH="$stub/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"
}
with_stub cargo test -p tensor-fn-runtime --features cuda
# The same unit tests with no libcuda.so.1 on the library path: the binary must still start (it
# loads the driver with dlopen, it does not link it) and report "no CUDA driver".
env -u TENSOR_FN_REQUIRE_GPU -u LD_LIBRARY_PATH CUDA_LIBRARY_PATH="$stub" \
    cargo test -p tensor-fn-runtime --features cuda --lib
with_stub cargo test --features cuda --test gpu
# Without graphs, device arguments are read in place instead of staged: the same tests again.
TENSOR_FN_CUDA_GRAPHS=0 with_stub cargo test --features cuda --test gpu
echo "scripts/test.sh: all checks passed"
