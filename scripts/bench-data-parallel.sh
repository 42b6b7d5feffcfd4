#!/usr/bin/env bash
# Data parallelism on this machine, every number from one run of this script:
# - overhead: the main job and LeNet as one process, plain and with --data-parallel (a world
#   of one runs the fused step), and with the staged parts forced (TENSOR_FN_STAGE_ALONE=1:
#   gradients into the flat buffer, then the updates, what each rank of a larger job runs);
# - scaling: 1 process x 2 threads against 2 processes x 1 thread (mpirun -np 2, each rank on
#   a core of its own);
# - the all-reduce alone: Open MPI's sum of each model's flat buffer between 2 processes.
# Each configuration runs REPS times, alternating; the table gives the median seconds of
# training per epoch and the spread.
#   bash scripts/bench-data-parallel.sh [REPS]     (needs Open MPI: scripts/install-mpi.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${1:-3}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --quiet --release --features mpi --example autoencoder --example lenet \
    --example allreduce_time
bin=target/release/examples
work="$(mktemp -d "${TMPDIR:-/tmp}/bench-dp.XXXXXX")"
trap 'rm -rf "$work"' EXIT

seed=(--epochs 3 --limit 10000 --quiet)
lenet=(--epochs 3 --limit 10000 --quiet)
# Configurations: NAME|COMMAND (the model's flags and --out are appended).
configs=(
    "seed 1x2|$bin/autoencoder"
    "seed 1x2 --data-parallel|$bin/autoencoder --data-parallel"
    "seed 1x2 staged|env TENSOR_FN_STAGE_ALONE=1 $bin/autoencoder --data-parallel"
    "seed 2x1 mpirun|mpirun -np 2 $bin/autoencoder --data-parallel"
    "lenet 1x2|$bin/lenet"
    "lenet 1x2 --data-parallel|$bin/lenet --data-parallel"
    "lenet 1x2 staged|env TENSOR_FN_STAGE_ALONE=1 $bin/lenet --data-parallel"
    "lenet 2x1 mpirun|mpirun -np 2 $bin/lenet --data-parallel"
)
for r in $(seq "$reps"); do
    for c in "${configs[@]}"; do
        name="${c%%|*}"
        cmd="${c#*|}"
        case "$name" in seed*) flags=("${seed[@]}") ;; *) flags=("${lenet[@]}") ;; esac
        # shellcheck disable=SC2086 # the command is words
        $cmd "${flags[@]}" --out "$work/out" >"$work/run.out" 2>"$work/run.err" || {
            echo "bench-data-parallel: $name failed:" >&2
            cat "$work/run.err" >&2
            exit 1
        }
        # Seconds of training per epoch, after the first epoch (warm-up).
        secs="$(sed -n 's/^epoch \([0-9]*\): .*[ ,] \([0-9.]*\) s[ (].*/\1 \2/p' "$work/run.out" |
            awk '$1 > 1 { s += $2; n++ } END { if (n) printf "%.4f", s / n }')"
        echo "$name|$secs" >>"$work/times"
    done
done
echo "| configuration | s/epoch (median) | runs |"
echo "|---|---|---|"
for c in "${configs[@]}"; do
    name="${c%%|*}"
    grep -F "$name|" "$work/times" | awk -F'|' -v n="$name" '$1 == n { print $2 }' | sort -n |
        awk -v n="$name" '{ v[NR] = $1 } END { printf "| %s | %.3f | %s |\n", n, v[int((NR + 1) / 2)], v[1] "-" v[NR] }'
done
echo
echo "all-reduce of the flat buffer, 2 processes (mpirun -np 2):"
mpirun -np 2 "$bin/allreduce_time"
