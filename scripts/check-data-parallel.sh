#!/usr/bin/env bash
# The main job and LeNet under `mpirun -np 2 ... --data-parallel` (feature `mpi`), end to end
# on small slices of the shipped MNIST:
# - two processes train as one does (the same cost every epoch), and rank 0 alone prints and
#   writes files;
# - a checkpoint written by one process count resumes under another, exactly;
# - a minibatch the processes cannot share, or mpirun without --data-parallel, is a clear
#   error on every rank, not a hang.
#   bash scripts/check-data-parallel.sh     (needs Open MPI: scripts/install-mpi.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 # harmless when not root

built="$(cargo build --quiet --features mpi --example autoencoder --example lenet \
    --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')"
ae="$(grep '/autoencoder$' <<<"$built" | tail -n 1)"
lenet="$(grep '/lenet$' <<<"$built" | tail -n 1)"
[[ -x "$ae" && -x "$lenet" ]] || {
    echo "check-data-parallel: cargo did not report the examples' executables" >&2
    exit 1
}

work="$(mktemp -d "${TMPDIR:-/tmp}/check-dp.XXXXXX")"
trap 'rm -rf "$work"' EXIT
fail() {
    echo "check-data-parallel: FAILED: $1" >&2
    shift
    local line
    for line in "$@"; do echo "  $line" >&2; done
    exit 1
}
# run NAME CMD...: stdout in $work/NAME.out, stderr in $work/NAME.err, exit status in $rc.
run() {
    local name="$1"
    shift
    rc=0
    timeout 300 "$@" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
}
mpi2=(mpirun -np 2 --oversubscribe)
expect_ok() {
    [[ $rc == 0 ]] || fail "$1: exit status $rc" "stdout: $(cat "$work/$1.out")" "stderr: $(cat "$work/$1.err")"
}
# costs NAME: the epoch costs a run printed, one per line.
costs() { sed -n 's/^epoch \([0-9]*\): \(mean \)\{0,1\}cost \([0-9.]*\).*/\1 \3/p' "$work/$1.out"; }
# same_costs A B: equal epochs, costs equal to 1e-5 relative (float32 sums in another order).
same_costs() {
    python3 - "$(costs "$1")" "$(costs "$2")" <<'PY' || fail "$1 vs $2: costs differ" "$1: $(costs "$1" | tr '\n' ' ')" "$2: $(costs "$2" | tr '\n' ' ')"
import sys
a = [l.split() for l in sys.argv[1].splitlines()]
b = [l.split() for l in sys.argv[2].splitlines()]
ok = len(a) == len(b) > 0 and all(
    x[0] == y[0] and abs(float(x[1]) - float(y[1])) <= 1e-5 * abs(float(y[1])) for x, y in zip(a, b))
sys.exit(0 if ok else 1)
PY
}

small=(--hidden 16 --limit 400 --batch 20 --quiet)

# --- two processes train as one, and only rank 0 speaks and writes ---------------------------
run one "$ae" "${small[@]}" --epochs 3 --out "$work/one"
expect_ok one
run two "${mpi2[@]}" "$ae" "${small[@]}" --epochs 3 --out "$work/two" --data-parallel
expect_ok two
same_costs two one
[[ "$(grep -c '^epoch 3:' "$work/two.out")" == 1 ]] ||
    fail "two: expected one line for epoch 3 (rank 0 alone prints)" "$(cat "$work/two.out")"
grep -q "data-parallel over 2 process(es) (mpi): 10 of each minibatch's 20 rows" "$work/two.err" ||
    fail "two: expected the data-parallel banner" "$(cat "$work/two.err")"
for f in checkpoint.tfck weights.npy cost.csv features.png; do
    [[ -s "$work/two/$f" ]] || fail "two: rank 0 did not write $f"
done

# --- a checkpoint resumes under another process count ----------------------------------------
run two2 "${mpi2[@]}" "$ae" "${small[@]}" --epochs 2 --out "$work/r21" --data-parallel
expect_ok two2
run resume1 "$ae" "${small[@]}" --epochs 3 --out "$work/r21" --resume "$work/r21/checkpoint.tfck"
expect_ok resume1
run one2 "$ae" "${small[@]}" --epochs 2 --out "$work/r12"
expect_ok one2
run resume2 "${mpi2[@]}" "$ae" "${small[@]}" --epochs 3 --out "$work/r12" --data-parallel \
    --resume "$work/r12/checkpoint.tfck"
expect_ok resume2
for r in resume1 resume2; do
    python3 -c "
import sys
a = float('$(costs "$r" | sed -n 's/^3 //p')' or 'nan'); b = float('$(costs one | sed -n 's/^3 //p')')
sys.exit(0 if abs(a - b) <= 1e-5 * abs(b) else 1)" ||
        fail "$r: epoch 3 after a resume under another process count costs $(costs "$r"), uninterrupted $(costs one | sed -n 's/^3 //p')"
done

# --- errors, on every rank, without a hang ---------------------------------------------------
run odd "${mpi2[@]}" "$ae" --hidden 16 --limit 400 --batch 21 --quiet --epochs 1 --out "$work/odd" --data-parallel
[[ $rc != 0 ]] || fail "odd: a batch of 21 for 2 processes must fail"
grep -q -- "--batch 21: a data-parallel minibatch of 21 rows does not split equally between 2 processes" \
    "$work/odd.err" || fail "odd: expected the batch error" "$(cat "$work/odd.err")"
run alone "${mpi2[@]}" "$ae" "${small[@]}" --epochs 1 --out "$work/alone"
[[ $rc != 0 ]] || fail "alone: mpirun without --data-parallel must fail"
grep -q "started by an MPI launcher as one of 2 processes: pass --data-parallel" "$work/alone.err" ||
    fail "alone: expected the launcher error" "$(cat "$work/alone.err")"
[[ ! -e "$work/alone/checkpoint.tfck" ]] || fail "alone: wrote a checkpoint"

# --- LeNet ------------------------------------------------------------------------------------
lsmall=(--limit 600 --batch 100 --epochs 1 --quiet)
run lenet1 "$lenet" "${lsmall[@]}" --out "$work/l1"
expect_ok lenet1
run lenet2 "${mpi2[@]}" "$lenet" "${lsmall[@]}" --out "$work/l2" --data-parallel
expect_ok lenet2
same_costs lenet2 lenet1
[[ -s "$work/l2/results.json" && -s "$work/l2/checkpoint.tfck" ]] ||
    fail "lenet2: rank 0 did not write results.json and checkpoint.tfck"
[[ "$(grep -c '^epoch 1:' "$work/lenet2.out")" == 1 ]] ||
    fail "lenet2: expected one line for epoch 1" "$(cat "$work/lenet2.out")"
# Two epochs on two processes, resumed alone for a third: the third costs what it costs in an
# uninterrupted run.
run lenet3 "$lenet" --limit 600 --batch 100 --quiet --epochs 3 --out "$work/l3"
expect_ok lenet3
run lenet2of3 "${mpi2[@]}" "$lenet" --limit 600 --batch 100 --quiet --epochs 2 --out "$work/lr" \
    --data-parallel
expect_ok lenet2of3
run lenet3rd "$lenet" --limit 600 --batch 100 --quiet --epochs 3 --out "$work/lr" \
    --resume "$work/lr/last.tfck"
expect_ok lenet3rd
grep -q "resuming after epoch 2" "$work/lenet3rd.err" ||
    fail "lenet3rd: expected 'resuming after epoch 2'" "$(cat "$work/lenet3rd.err")"
python3 -c "
import sys
a = '$(costs lenet3rd | sed -n 's/^3 //p')'; b = '$(costs lenet3 | sed -n 's/^3 //p')'
sys.exit(0 if a and b and abs(float(a) - float(b)) <= 1e-5 * abs(float(b)) else 1)" ||
    fail "lenet3rd: epoch 3 after resuming costs '$(costs lenet3rd)', uninterrupted '$(costs lenet3)'"
run lenetbad "$lenet" --limit 600 --batch 50 --quiet --epochs 3 --out "$work/lr" \
    --resume "$work/lr/last.tfck"
[[ $rc != 0 ]] && grep -q "the checkpoint was trained with minibatches of 100" "$work/lenetbad.err" ||
    fail "lenetbad: a resume with another --batch must be refused" "$(cat "$work/lenetbad.err")"
echo "check-data-parallel: all checks passed"
