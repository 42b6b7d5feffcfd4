#!/usr/bin/env bash
# Builds, here and without a GPU, one folder that checks tensor-fn's CUDA backend on a GPU
# machine that has no Rust and no network (x86-64, NVIDIA driver, python3 with PyTorch):
#   bash scripts/package-gpu.sh OUTDIR        then, there:   bash OUTDIR/run.sh [RESULTS_DIR]
#
# OUTDIR/
#   run.sh          scripts/gpu-run.sh: runs everything below, writes results.txt
#   bin/test-runtime    the runtime crate's unit tests (CUDA backend tests included)
#   bin/test-gpu        tests/gpu.rs: CPU vs GPU differential tests
#   bin/test-nccl       tests/nccl.rs (features nccl): NCCL's mean, and the seed model trained
#                       through the staged data-parallel step against one process
#   bin/autoencoder     examples/autoencoder.rs
#   bin/lenet           examples/lenet.rs
#   data/mnist/     the shipped MNIST (IDX); run.sh makes the peer's mnist.pkl.gz from it
#   peers/          the PyTorch peer of the benchmark (torch_ae.py, common.py, write_init.py)
#   build-info.txt  commit, toolchain, date
# Everything is built in release (debug line tables kept, compressed, for backtraces) with
# `--features cuda` against the stub libcuda of scripts/cuda-stub.sh (cust's build script needs
# one to find). The binaries load the driver's libcuda.so.1 at run time with dlopen, so they do
# not link it: they need nothing beyond glibc to start, and report "no CUDA driver" where it is
# missing (checked below with readelf).
# PEERS_DIR: where the peers live (default ../shared/bench from the workspace root).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
outdir="${1:?usage: bash scripts/package-gpu.sh OUTDIR}"
peers="${PEERS_DIR:-$root/../shared/bench}"
for f in torch_ae.py common.py write_init.py; do
    [ -f "$peers/$f" ] || { echo "package-gpu.sh: $peers/$f not found (set PEERS_DIR)" >&2; exit 1; }
done
mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"
cd "$root"

export CARGO_TERM_COLOR=never
CUDA_LIBRARY_PATH="$(bash scripts/cuda-stub.sh .tools/cuda-stub)"
export CUDA_LIBRARY_PATH
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# build NAME CARGO-ARGS...: builds, and prints the one executable cargo reports.
build() {
    local name="$1" exe
    shift
    cargo "$@" --release --features cuda --message-format=json-render-diagnostics \
        >"$work/$name.json"
    exe="$(grep -o '"executable":"[^"]*"' "$work/$name.json" | sed 's/^"executable":"//; s/"$//')"
    if [ "$(printf '%s\n' "$exe" | grep -c .)" != 1 ]; then
        echo "package-gpu.sh: expected one executable for $name, found: ${exe:-none}" >&2
        exit 1
    fi
    printf '%s\n' "$exe"
}
start=$SECONDS
test_runtime="$(build test-runtime test --no-run -p tensor-fn-runtime --lib)"
test_gpu="$(build test-gpu test --no-run --test gpu)"
test_nccl="$(build test-nccl test --no-run --features nccl --test nccl)"
autoencoder="$(build autoencoder build --example autoencoder)"
lenet="$(build lenet build --example lenet)"
echo "package-gpu.sh: built in $((SECONDS - start)) s" >&2

rm -rf "$outdir/bin" "$outdir/data" "$outdir/peers"
mkdir -p "$outdir/bin" "$outdir/data/mnist" "$outdir/peers"
# Debug sections compressed (zlib): a third of the size, and Rust's backtraces still read
# their line tables.
for pair in "$test_runtime:test-runtime" "$test_gpu:test-gpu" "$test_nccl:test-nccl" \
    "$autoencoder:autoencoder" "$lenet:lenet"; do
    if command -v objcopy >/dev/null 2>&1; then
        objcopy --compress-debug-sections=zlib "${pair%%:*}" "$outdir/bin/${pair##*:}"
    else
        cp "${pair%%:*}" "$outdir/bin/${pair##*:}"
    fi
done
cp data/mnist/*.gz data/mnist/README.md "$outdir/data/mnist/"
cp "$peers/torch_ae.py" "$peers/common.py" "$peers/write_init.py" "$outdir/peers/"
cp scripts/gpu-run.sh "$outdir/run.sh"
chmod +x "$outdir/run.sh" "$outdir/bin/"*

# The binaries may need only glibc's own libraries: not the driver (runtime/src/gpu/cuda.rs
# dlopens libcuda.so.1; a NEEDED one would stop them from starting without it), no CUDA
# runtime, nothing from this machine.
allowed='libc.so.6|libm.so.6|libgcc_s.so.1|ld-linux-x86-64.so.2|libpthread.so.0|libdl.so.2|librt.so.1'
for b in "$outdir"/bin/*; do
    needed="$(readelf -d "$b" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
    for lib in $needed; do
        if [[ "$lib" == libcuda.so* ]]; then
            echo "package-gpu.sh: $(basename "$b") links $lib; the driver must be loaded at run time (dlopen), so that the binary starts without it" >&2
            exit 1
        fi
        if ! grep -qxE "$allowed" <<<"$lib"; then
            echo "package-gpu.sh: $(basename "$b") needs $lib, which the GPU machine may lack" >&2
            exit 1
        fi
    done
    glibc="$(objdump -T "$b" | grep -oE 'GLIBC_[0-9]+\.[0-9]+' | sort -t. -k2 -n | tail -n1)"
    echo "package-gpu.sh: bin/$(basename "$b"): needs ${needed% } (newest symbol $glibc)" >&2
done

{
    echo "built: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(
        [ -n "$(git status --porcelain 2>/dev/null)" ] && echo ' (with uncommitted changes)')"
    echo "toolchain: $(rustc --version)"
    echo "features: cuda; profile: release"
} >"$outdir/build-info.txt"

echo "package-gpu.sh: $outdir is $(du -sh "$outdir" | cut -f1) ($(du -sh "$outdir/bin" | cut -f1) of binaries); run it with: bash $outdir/run.sh" >&2
