#!/usr/bin/env bash
# The main job's command line (examples/autoencoder.rs), end to end on a small slice of the
# shipped MNIST: a run writes its files, --resume continues it exactly, and bad input (a broken
# checkpoint, a wrong W, an impossible flag, a learning rate that diverges, a model too large
# for memory) is a clear error that leaves every file it was given, and every file already in
# --out, byte for byte as it was.
#   bash scripts/check-cli.sh
# Uses the dev-profile binary of `cargo build --example autoencoder` (built here if needed).
set -euo pipefail
cd "$(dirname "$0")/.."

# Where cargo put the binary, whatever the target directory ($CARGO_TARGET_DIR or target/).
bin="$(cargo build --quiet --example autoencoder --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)"
if [[ ! -x "$bin" ]]; then
    echo "check-cli: cargo build --example autoencoder did not report an executable" >&2
    exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/check-cli.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# A panic, should one happen, prints its backtrace: the checks below look for it.
export RUST_BACKTRACE=1
small=(--hidden 8 --limit 200 --batch 20 --quiet)
outputs=(checkpoint.tfck weights.npy cost.csv cost.png features.png reconstructions.png
    hidden_test.npy)

fail() {
    echo "check-cli: FAILED: $1" >&2
    shift
    local line
    for line in "$@"; do echo "  $line" >&2; done
    exit 1
}

# run NAME ARGS...: runs the binary; stdout in $work/NAME.out, stderr in $work/NAME.err,
# exit status in $rc.
run() {
    local name="$1"
    shift
    rc=0
    "$bin" "$@" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
}

stderr_of() { sed 's/^/    /' "$work/$1.err" | tail -n 8; }

expect_ok() {
    [[ "$rc" == 0 ]] || fail "$1: expected exit status 0, found $rc" "stderr:" "$(stderr_of "$1")"
}

# expect_refused NAME REGEX: a non-zero status from an error (not a panic or a signal), and a
# message on stderr matching REGEX (grep -E).
expect_refused() {
    local name="$1" want="$2"
    if [[ "$rc" == 0 ]]; then
        fail "$name: expected an error, found exit status 0" "stderr:" "$(stderr_of "$name")"
    fi
    if [[ "$rc" == 101 || "$rc" -ge 128 ]] ||
        grep -qE "panicked|stack backtrace" "$work/$name.err"; then
        fail "$name: expected a clear error, found a panic or abort (exit status $rc)" \
            "stderr:" "$(stderr_of "$name")"
    fi
    if ! grep -qE -- "$want" "$work/$name.err"; then
        fail "$name: expected stderr to match /$want/" "found:" "$(stderr_of "$name")"
    fi
}

# snapshot PATH...: the names and SHA-256 of every file under PATH (temporaries included).
snapshot() { find "$@" -type f -print0 | sort -z | xargs -0 sha256sum; }

# expect_unchanged NAME BEFORE PATH...: PATH's files are byte for byte what BEFORE recorded.
expect_unchanged() {
    local name="$1" before="$2"
    shift 2
    local now
    now="$(snapshot "$@")"
    if [[ "$now" != "$before" ]]; then
        fail "$name: expected $* unchanged" \
            "$(diff <(echo "$before") <(echo "$now") | sed 's/^/    /')"
    fi
}

# The cost of epoch N in a run's stdout: `epoch N: mean cost C, ...` -> C.
cost_of() { sed -n "s/^epoch $2: mean cost \([^,]*\),.*/\1/p" "$work/$1.out"; }

# --- a run writes its files ---------------------------------------------------------------
run1="$work/run"
run first "${small[@]}" --epochs 2 --out "$run1"
expect_ok first
for f in "${outputs[@]}"; do
    [[ -s "$run1/$f" ]] || fail "first: expected $f in --out" "found: $(ls "$run1" | tr '\n' ' ')"
done
rows="$(wc -l <"$run1/cost.csv")"
[[ "$rows" == 3 ]] || fail "first: expected cost.csv with a header and 2 epochs" \
    "found $rows lines"
[[ -n "$(cost_of first 1)" && -n "$(cost_of first 2)" ]] ||
    fail "first: expected a cost line for epochs 1 and 2" "found: $(cat "$work/first.out")"
echo "ok: a 2-epoch run prints its costs and writes ${outputs[*]} to --out"

# --- --resume continues exactly where the checkpoint stopped ------------------------------
run full "${small[@]}" --epochs 3 --out "$work/full"
expect_ok full
run resume "${small[@]}" --epochs 3 --resume "$run1/checkpoint.tfck" --out "$run1"
expect_ok resume
grep -q "resuming after epoch 2" "$work/resume.err" ||
    fail "resume: expected 'resuming after epoch 2' on stderr" "found:" "$(stderr_of resume)"
if [[ -n "$(cost_of resume 1)$(cost_of resume 2)" || -z "$(cost_of resume 3)" ]]; then
    fail "resume: expected a cost line for epoch 3 only" "found: $(cat "$work/resume.out")"
fi
[[ "$(cost_of resume 3)" == "$(cost_of full 3)" ]] ||
    fail "resume: expected epoch 3 to cost what it costs in an uninterrupted run" \
        "uninterrupted: $(cost_of full 3)" "resumed: $(cost_of resume 3)"
cmp -s "$run1/weights.npy" "$work/full/weights.npy" ||
    fail "resume: expected the weights of an uninterrupted 3-epoch run" \
        "weights.npy differs from that run's"
rows="$(wc -l <"$run1/cost.csv")"
[[ "$rows" == 4 ]] || fail "resume: expected cost.csv to keep epochs 1-2 and add 3" \
    "found $rows lines"
echo "ok: --resume continues after epoch 2: epoch 3 costs $(cost_of resume 3), the weights" \
    "equal an uninterrupted run's and cost.csv has all 3 epochs"

# From here on $run1 holds a good 3-epoch run; nothing below may change a byte of it.
good="$(snapshot "$run1")"

# --- broken inputs are refused and left as they were --------------------------------------
bad="$work/bad"
mkdir "$bad"
head -c 1000 "$run1/checkpoint.tfck" >"$bad/truncated.tfck"
# One bit flipped in the middle of the tensor data.
cp "$run1/checkpoint.tfck" "$bad/flipped.tfck"
at=$(($(wc -c <"$bad/flipped.tfck") / 2))
byte="$(od -An -tu1 -j "$at" -N 1 "$bad/flipped.tfck" | tr -d ' ')"
printf "$(printf '\\%03o' $((byte ^ 16)))" |
    dd of="$bad/flipped.tfck" bs=1 seek="$at" conv=notrunc status=none
cmp -s "$run1/checkpoint.tfck" "$bad/flipped.tfck" && fail "setup: the bit flip changed nothing"
# The test set's hidden features: a 10000 x 8 .npy, not 784 x hidden.
cp "$run1/hidden_test.npy" "$bad/wrong-shape.npy"
# A 784 x 8 W of NaN: weights.npy's header, then 784 * 8 quiet NaNs (0x7fc00000, little-endian).
header=$(($(wc -c <"$run1/weights.npy") - 784 * 8 * 4))
head -c "$header" "$run1/weights.npy" >"$bad/nan.npy"
printf '\x00\x00\xc0\x7f%.0s' $(seq $((784 * 8))) >>"$bad/nan.npy"
given="$(snapshot "$bad")"

# refused NAME REGEX FLAG VALUE...: a small run into the good --out, with these flags added to
# (or replacing) --hidden 8 --limit 200 --batch 20 --epochs 4, is refused with a message
# matching REGEX, and leaves the files it was given and the files in --out as they were.
refused() {
    local name="$1" want="$2"
    shift 2
    local -A flags=([--hidden]=8 [--limit]=200 [--batch]=20 [--epochs]=4 [--out]="$run1")
    while (($#)); do
        flags[$1]="$2"
        shift 2
    done
    local args=(--quiet) flag
    for flag in "${!flags[@]}"; do args+=("$flag" "${flags[$flag]}"); done
    run "$name" "${args[@]}"
    expect_refused "$name" "$want"
    expect_unchanged "$name" "$given" "$bad"
    expect_unchanged "$name" "$good" "$run1"
}
# The first match of REGEX in NAME's stderr, for the ok: line.
said() { grep -m1 -oE -- "$2" "$work/$1.err"; }

want="truncated: the header promises [0-9]+ bytes in all, the file has 1000"
refused truncated "$want" --resume "$bad/truncated.tfck"
echo "ok: a truncated checkpoint is refused ($(said truncated "$want")); it and --out are unchanged"
want="checksum mismatch .*: the file is corrupt"
refused flipped "$want" --resume "$bad/flipped.tfck"
echo "ok: a checkpoint with one bit flipped is refused ($(said flipped "$want"));" \
    "it and --out are unchanged"
want="W must be 784 x hidden .*found shape \[10000, 8\]"
refused wrong-shape "$want" --init "$bad/wrong-shape.npy"
echo "ok: an --init W of shape 10000 x 8 is refused ($(said wrong-shape "$want"));" \
    "it and --out are unchanged"
want="6272 of the 6272 values of W are NaN or infinite"
refused nan-init "$want" --init "$bad/nan.npy"
echo "ok: an --init W of NaN is refused ($(said nan-init "$want")); it and --out are unchanged"

# --- impossible flags ---------------------------------------------------------------------
for lr in nan -1 inf 0; do
    refused "lr$lr" \
        "invalid value '$lr' for '--lr <LR>': the learning rate must be a finite number above 0" \
        --lr "$lr"
done
echo "ok: --lr nan, -1, inf and 0 are refused, naming the flag and the value; --out is unchanged"
for flag in hidden batch epochs limit; do
    refused "$flag-0" "invalid value '0' for '--$flag <[A-Z]+>': must be at least 1" --"$flag" 0
done
echo "ok: --hidden 0, --batch 0, --epochs 0 and --limit 0 are refused"
refused big-batch "--batch 500: larger than the 200 training images" --batch 500
echo "ok: a batch larger than the training images (--batch 500 --limit 200) is refused"
refused done-already "--epochs 3: the checkpoint .* has already completed 3 epochs" \
    --epochs 3 --resume "$run1/checkpoint.tfck"
echo "ok: resuming a 3-epoch checkpoint with --epochs 3 is refused: there is nothing to train"

# --- a run that diverges stops before writing anything of the bad epoch --------------------
# A learning rate of 3e38 (near f32's largest) sends the weights to infinity in one step, and
# the next step's cost is NaN.
stop="stopping before anything from this epoch is written"
refused diverge-resumed "epoch 4: the training cost is (NaN|inf) at step [0-9]+ of 10; $stop: \
the last good checkpoint \(.*checkpoint.tfck, epoch 3\)" \
    --epochs 6 --lr 3e38 --resume "$run1/checkpoint.tfck"
[[ -z "$(cost_of diverge-resumed 4)" ]] ||
    fail "diverge-resumed: expected no cost line for epoch 4" \
        "found: $(cat "$work/diverge-resumed.out")"
echo "ok: resuming with --lr 3e38 stops at epoch 4 ($(said diverge-resumed "the training cost is \
[a-zA-Z]+")); the epoch-3 checkpoint and the other outputs are unchanged"
refused diverge-fresh "epoch 1: the training cost is (NaN|inf) at step [0-9]+ of 10; $stop" \
    --lr 3e38
echo "ok: a fresh run with --lr 3e38 into a used --out stops at epoch 1; that --out is unchanged"

# --- a model too large for memory ---------------------------------------------------------
start=$SECONDS
refused huge "--hidden 100000000: W alone needs 784 x 100000000 x 4 bytes = 292.1 GiB.* \
memory available" --hidden 100000000
took=$((SECONDS - start))
[[ "$took" -le 20 ]] || fail "huge: expected the memory error within 20 s" "it took $took s"
echo "ok: --hidden 100000000 is refused in ${took} s: $(said huge "W alone needs [^,]*")"

echo "scripts/check-cli.sh: all checks passed"
