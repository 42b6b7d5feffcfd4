#!/usr/bin/env bash
# The main job on a CUDA device agrees with the CPU: a few SGD steps of the seed's autoencoder
# (small: the device here is the emulated driver, whose interpreter is slow), once with
# `--device cpu` and once with `--device cuda`, and their per-epoch mean costs compared to 1e-5.
#   bash scripts/check-cuda-job.sh EMU_DIR
# EMU_DIR holds lib64/libcuda.so.1 (scripts/cuda-emu.sh); CUDA_LIBRARY_PATH must name the libcuda
# to build against (scripts/cuda-stub.sh). With EMU_DIR set to an empty string the run uses the
# machine's own driver (a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."

emu="${1?usage: bash scripts/check-cuda-job.sh EMU_DIR}"
: "${CUDA_LIBRARY_PATH:?set CUDA_LIBRARY_PATH to a libcuda to build against (scripts/cuda-stub.sh)}"
cargo build --quiet --features cuda --example autoencoder
bin="${CARGO_TARGET_DIR:-target}/debug/examples/autoencoder"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 10 steps of 20 images per epoch, 2 epochs, 16 hidden units.
args=(--hidden 16 --limit 200 --epochs 2 --batch 20 --quiet)
"$bin" "${args[@]}" --device cpu --out "$work/cpu" >"$work/cpu.log" 2>&1 ||
    { cat "$work/cpu.log" >&2; echo "check-cuda-job.sh: the CPU run failed" >&2; exit 1; }
if [ -n "$emu" ]; then
    export LD_LIBRARY_PATH="$emu/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
"$bin" "${args[@]}" --device cuda --out "$work/cuda" >"$work/cuda.log" 2>&1 ||
    { cat "$work/cuda.log" >&2; echo "check-cuda-job.sh: the CUDA run failed" >&2; exit 1; }
grep -q 'device cuda:0' "$work/cuda.log" ||
    { cat "$work/cuda.log" >&2; echo "check-cuda-job.sh: the CUDA run did not say it ran on cuda:0" >&2; exit 1; }

# cost.csv: epoch,cost,seconds. Same epochs, costs within 1e-5 relative.
awk -F, '
    FNR == 1 { next }
    NR == FNR { want[$1] = $2; n++; next }
    {
        seen++
        if (!($1 in want)) { printf "epoch %s: only in the CUDA run\n", $1; bad = 1; next }
        d = $2 - want[$1]; if (d < 0) d = -d
        m = want[$1]; if (m < 0) m = -m
        printf "epoch %s: cpu %s, cuda %s, relative difference %.2e\n", $1, want[$1], $2, d / (m > 1 ? m : 1)
        if (d > 1e-5 * (m > 1 ? m : 1)) bad = 1
    }
    END { if (n == 0 || seen != n) { print "the two runs have different epochs"; bad = 1 } exit bad }
' "$work/cpu/cost.csv" "$work/cuda/cost.csv" ||
    { echo "check-cuda-job.sh: the CUDA run's costs differ from the CPU run's" >&2; exit 1; }
echo "ok: the main job on cuda:0 matches the CPU (2 epochs of 10 steps)"
