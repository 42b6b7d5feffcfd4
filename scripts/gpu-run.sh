#!/usr/bin/env bash
# tensor-fn's checks on a GPU machine, from the folder scripts/package-gpu.sh made (this file is
# its run.sh). The machine needs the NVIDIA driver (libcuda.so.1) and, for the PyTorch peer,
# python3 with torch and numpy; no Rust, no network.
#
#   bash run.sh [RESULTS_DIR]            (default: results/ next to this script)
#
# Sections, each run whatever happened before (a failure never stops the run):
#   gpu-info        nvidia-smi
#   test-*          every test binary in bin/, with TENSOR_FN_REQUIRE_GPU=1 (no skipping);
#                   test-nccl finds libnccl.so.2 in python3's nvidia-nccl wheel (PyTorch's), or
#                   TENSOR_FN_NCCL, and runs as a world of one on cuda:0
#   init            the peers' initial W (peers/write_init.py), so both trainings start alike
#   autoencoder     bin/autoencoder --device cuda, 2 epochs (the seed's workload)
#   lenet           bin/lenet --device cuda --match-peers, 1 epoch (convolutions; its epoch-1
#                   cost on the CPU is 0.894602)
#   mnist-pkl       data/mnist as the mnist.pkl.gz the peer reads (bit-identical to the original)
#   torch-cuda      the PyTorch peer (peers/torch_ae.py), eager, on the GPU, 2 epochs
# RESULTS_DIR/results.txt gets each section's command, output and exit code, then a summary of
# seconds per epoch and per step; RESULTS_DIR/<section>.log holds each output alone. Scratch
# files (the 20 MB pickle, W0.npy, the autoencoder's pictures) go to a temporary directory.
# Exit code: the number of failed sections.
# Time limits in seconds: TEST_TIMEOUT per test binary (default 90), TRAIN_TIMEOUT (150),
# PEER_TIMEOUT (150), and RUN_BUDGET for the whole run (default 540: sections that would
# overrun it are cut short or skipped, so results.txt is complete before a 10-minute limit).
# EPOCHS (default 2).
set -u
deadline=$((SECONDS + ${RUN_BUDGET:-540}))
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
res="${1:-$here/results}"
mkdir -p "$res"
res="$(cd "$res" && pwd)"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/tensor-fn-gpu-run.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
# Panics in the test binaries show where they came from.
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
report="$res/results.txt"
: >"$report"
epochs="${EPOCHS:-2}"
steps=2500 # 50000 training images / minibatch 20
failed=0

say() { echo "$*" | tee -a "$report"; }

# section NAME SECONDS COMMAND...: runs COMMAND under a time limit, logs it, never fails.
section() {
    local name="$1" limit="$2" rc start end left
    shift 2
    say ""
    say "== $name"
    say "\$ $*"
    left=$((deadline - SECONDS))
    if [ "$left" -lt 5 ]; then
        say "(skipped: the run's time budget is spent)"
        failed=$((failed + 1))
        return 0
    fi
    [ "$limit" -le "$left" ] || limit="$left"
    start="$(date +%s.%N)"
    timeout --kill-after=10 "$limit" "$@" >"$res/$name.log" 2>&1 </dev/null
    rc=$?
    end="$(date +%s.%N)"
    cat "$res/$name.log" >>"$report"
    tail -n 25 "$res/$name.log"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        say "(killed: over the ${limit} s limit)"
    fi
    say "exit code: $rc ($(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s)"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
    return 0
}

say "tensor-fn GPU run, $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
[ -f build-info.txt ] && cat build-info.txt | tee -a "$report"

if command -v nvidia-smi >/dev/null 2>&1; then
    section gpu-info 15 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
        --format=csv
else
    say "(no nvidia-smi)"
fi

# Tests that read MNIST or check PTX find them here, not at the build machine's paths.
export TENSOR_FN_MNIST="$here/data/mnist"
if [ -z "${PTXAS:-}" ] && command -v ptxas >/dev/null 2>&1; then
    PTXAS="$(command -v ptxas)"
    export PTXAS
fi
# NCCL for test-nccl: the one the caller names, else the wheel PyTorch installed with it.
if [ -z "${TENSOR_FN_NCCL:-}" ]; then
    nccl="$(python3 -c 'import glob, os, site
for d in site.getsitepackages() + [site.getusersitepackages()]:
    for p in glob.glob(os.path.join(d, "nvidia", "nccl*", "lib", "libnccl.so.2")):
        print(p); raise SystemExit' 2>/dev/null || true)"
    if [ -n "$nccl" ]; then
        export TENSOR_FN_NCCL="$nccl"
    fi
fi
say "NCCL: ${TENSOR_FN_NCCL:-none found (test-nccl will say so)}"
for t in bin/test-*; do
    [ -x "$t" ] || continue
    section "$(basename "$t")" "${TEST_TIMEOUT:-90}" env TENSOR_FN_REQUIRE_GPU=1 "$t"
done

init=()
section init 30 python3 peers/write_init.py "$scratch/W0.npy"
[ -f "$scratch/W0.npy" ] && init=(--init "$scratch/W0.npy")
section autoencoder "${TRAIN_TIMEOUT:-150}" bin/autoencoder --device cuda --epochs "$epochs" \
    --quiet --data "$here/data/mnist" ${init[@]+"${init[@]}"} --out "$scratch/autoencoder"

section lenet "${TRAIN_TIMEOUT:-150}" bin/lenet --device cuda --epochs 1 --quiet --match-peers \
    --data "$here/data/mnist" --out "$scratch/lenet"

pkl="${MNIST_PKL:-$scratch/mnist.pkl.gz}"
if [ ! -f "$pkl" ]; then
    cat >"$scratch/make_mnist_pkl.py" <<'PY'
"""data/mnist (IDX, pixels as bytes) -> the deeplearning.net mnist.pkl.gz the peers read:
(train, valid, test) = first 50000 / last 10000 training images, test images, as float32
byte / 256 with int64 labels; bit-identical to the original pickle (see data/mnist/README.md)."""
import gzip
import pickle
import sys

import numpy as np


def idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


src, out = sys.argv[1], sys.argv[2]
x = idx(f"{src}/train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / np.float32(256)
y = idx(f"{src}/train-labels-idx1-ubyte.gz").astype(np.int64)
xt = idx(f"{src}/t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / np.float32(256)
yt = idx(f"{src}/t10k-labels-idx1-ubyte.gz").astype(np.int64)
splits = ((x[:50000], y[:50000]), (x[50000:], y[50000:]), (xt, yt))
with gzip.open(out, "wb", compresslevel=1) as f:
    pickle.dump(splits, f, protocol=4)
print(f"wrote {out}: train {splits[0][0].shape}, valid {splits[1][0].shape}, test {splits[2][0].shape}")
PY
    section mnist-pkl 60 python3 "$scratch/make_mnist_pkl.py" "$here/data/mnist" "$pkl"
fi
section torch-cuda "${PEER_TIMEOUT:-150}" env MNIST_PKL="$pkl" python3 peers/torch_ae.py \
    --variant eager --device cuda --epochs "$epochs"

# Seconds per epoch and per step (2500 steps of 20 images), from both trainings' epoch lines:
#   tensor-fn: "epoch 1: mean cost 63.171119, 1.234 s"   torch: "epoch 1: 1.234s cost 63.171119"
summary() {
    echo ""
    echo "== summary: $epochs epochs of $steps steps (minibatch 20), same initial W"
    printf '%-26s %5s %10s %10s %12s\n' implementation epoch seconds "us/step" "mean cost"
    awk -v steps="$steps" '/^epoch [0-9]+: mean cost/ {
        gsub(",", ""); printf "%-26s %5s %10.3f %10.1f %12s\n", "tensor-fn (cuda)", $2 + 0, $6, $6 / steps * 1e6, $5
    }' "$res/autoencoder.log" 2>/dev/null
    awk -v steps="$steps" '/^epoch [0-9]+: [0-9.]+s cost/ {
        s = $3; sub("s$", "", s); printf "%-26s %5s %10.3f %10.1f %12s\n", "PyTorch eager (cuda)", $2 + 0, s, s / steps * 1e6, $5
    }' "$res/torch-cuda.log" 2>/dev/null
    grep -h '^epoch 1: cost' "$res/lenet.log" 2>/dev/null |
        sed 's/^/LeNet (cuda, minibatch 500; CPU epoch-1 cost 0.894602): /'
    echo "failed sections: $failed"
}
summary | tee -a "$report"
exit "$failed"
