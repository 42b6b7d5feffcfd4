#!/usr/bin/env bash
# Times the deeplearning.net tutorial models (logistic, mlp, dA, lenet) in tensor-fn and in the
# peers, on this machine, in one run, and writes a table of seconds per epoch into README.md
# (between the tutorials-bench markers).
#
#   bash scripts/bench-tutorials.sh PEERS_DIR [EPOCHS]
#
# PEERS_DIR is the directory of the peers' tutorial implementations (run.sh, common.py; in
# this project's workspace ../shared/bench/tutorials), whose ../setup.sh must have been run.
# Every framework trains the same model with the same hyperparameters for EPOCHS epochs
# (default 3; early stopping cannot end a run that short); the time of an epoch is its
# training steps only (validation excluded), as the peers measure it. The epoch-1 costs of the
# deterministic models (logistic, mlp, lenet) must agree across frameworks to 1e-4 relative, or
# the run fails. The peers' LeNet cross-correlates with the drawn filters where the tutorial's
# Theano convolves, so ours runs with --match-peers (the drawn filters flipped: the same
# function, the same trajectory).
#
# Environment:
#   BENCH_PEERS   the peers (default: pytensor jax, plus torch if installed)
#   BENCH_MODELS  the models, a subset of "logistic mlp dA lenet" (the default); the table has
#                 a row for each model that ran
#   LENET_LIMIT   train lenet on the first N training images only, in every framework (default:
#                 all 50000; the peers' LeNet takes some 20-40 s an epoch on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
peers="$(cd "${1:?usage: bash scripts/bench-tutorials.sh PEERS_DIR [EPOCHS]}" && pwd)"
epochs="${2:-3}"
models="${BENCH_MODELS:-logistic mlp dA lenet}"
lenet_limit="${LENET_LIMIT:-}"
venv="${PEERS_VENV:-/tmp/tensor-fn-peers}"
[ -x "$venv/bin/python" ] || { echo "run $peers/../setup.sh first (expects $venv)" >&2; exit 2; }
[[ "$epochs" =~ ^[1-9][0-9]*$ ]] || { echo "EPOCHS must be a whole number of at least 1, not '$epochs'" >&2; exit 2; }
examples=()
for model in $models; do
  case "$model" in
    logistic) examples+=(--example logistic_sgd) ;;
    mlp) examples+=(--example mlp) ;;
    dA) examples+=(--example da) ;;
    lenet) examples+=(--example lenet) ;;
    *) echo "BENCH_MODELS: unknown model '$model' (known: logistic mlp dA lenet)" >&2; exit 2 ;;
  esac
done
[ ${#examples[@]} -gt 0 ] || { echo "BENCH_MODELS names no model" >&2; exit 2; }
ours_limit=() peers_limit=()
if [ -n "$lenet_limit" ]; then
  # At least one minibatch of 500.
  if ! [[ "$lenet_limit" =~ ^[0-9]+$ ]] || [ "$lenet_limit" -lt 500 ]; then
    echo "LENET_LIMIT must be a whole number of at least 500 (one minibatch), not '$lenet_limit'" >&2
    exit 2
  fi
  ours_limit=(--limit "$lenet_limit")
  peers_limit=(--limit-train "$lenet_limit")
fi
default_peers="pytensor jax"
"$venv/bin/python" -c "import torch" 2>/dev/null && default_peers="$default_peers torch"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

logged() {
  local name="$1"; shift
  local rc=0
  "$@" >"$work/$name.log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "scripts/bench-tutorials.sh: $name failed (exit $rc): $*" >&2
    tail -n 40 "$work/$name.log" >&2
    exit 1
  fi
}

cargo build --release --quiet "${examples[@]}"
for model in $models; do
  extra=()
  [ "$model" = lenet ] && extra=("${peers_limit[@]}")
  case "$model" in
    logistic) logged "ours-$model" ./target/release/examples/logistic_sgd --epochs "$epochs" --quiet --out "$work/$model" ;;
    mlp) logged "ours-$model" ./target/release/examples/mlp --epochs "$epochs" --quiet --out "$work/$model" ;;
    dA) logged "ours-$model" ./target/release/examples/da --epochs "$epochs" --corruption 0.3 --quiet --out "$work/$model" ;;
    lenet) logged "ours-$model" ./target/release/examples/lenet --epochs "$epochs" --quiet --match-peers "${ours_limit[@]}" --out "$work/$model" ;;
  esac
  echo "== tensor-fn $model"; grep -E "epoch" "$work/ours-$model.log" || true
  for peer in ${BENCH_PEERS:-$default_peers}; do
    logged "$peer-$model" bash "$peers/run.sh" "$model" "$peer" --epochs "$epochs" "${extra[@]}" --json "$work/peers.jsonl"
    echo "== $peer $model"; grep -E "^epoch" "$work/$peer-$model.log" || true
  done
done

python3 - "$work" "$epochs" "$models" "$lenet_limit" "${BENCH_MODELS:-}" <<'PY'
import csv, json, os, statistics, sys
sys.path.insert(0, "scripts")
from bench_table import cpu_name, write_readme_section
work, epochs, models, lenet_limit, models_env = sys.argv[1:6]
epochs, models = int(epochs), models.split()
# The models whose runs are the same function from the same start in every framework.
DETERMINISTIC = ("logistic", "mlp", "lenet")
peers_file = os.path.join(work, "peers.jsonl")
rows = [json.loads(l) for l in open(peers_file)] if os.path.exists(peers_file) else []
frameworks = sorted({r["framework"] for r in rows})
def ours(model):
    d = os.path.join(work, model, "corruption_30" if model == "dA" else "")
    with open(os.path.join(d, "epochs.csv")) as f:
        r = list(csv.DictReader(f))
    return [float(x["train_seconds"]) for x in r], [float(x["cost"]) for x in r]
def cell(secs):
    return f"{min(secs):.3f} / {statistics.median(secs):.3f}"
limited = f"; lenet trains on the first {lenet_limit} of the 50000 training images" \
    if lenet_limit and "lenet" in models else ""
lines = [
    f"The tutorial models, {epochs} epochs each from the same initial weights, measured in one "
    f"run on {os.cpu_count()} cores of `{cpu_name()}`; seconds of training per epoch, best / "
    f"median (validation not timed, as the peers time it){limited}:",
    "",
    "| model | tensor-fn | " + " | ".join(frameworks) + " | best peer / tensor-fn (medians) |",
    "|---|---|" + "---|" * len(frameworks) + "---|",
]
bad = []
for model in models:
    secs, costs = ours(model)
    cells, best = [], None
    for fw in frameworks:
        r = next((x for x in rows if x["model"] == model and x["framework"] == fw), None)
        if r is None:
            bad.append(f"{model}: no result from {fw}")
            cells.append("-")
            continue
        t = statistics.median(r["epoch_s"])
        best = t if best is None else min(best, t)
        cells.append(cell(r["epoch_s"]))
        if model in DETERMINISTIC:
            c0 = r["epoch_cost"][0]
            if abs(c0 - costs[0]) > 1e-4 * abs(c0):
                bad.append(f"{model}: {fw} epoch-1 cost {c0} vs ours {costs[0]}")
    mine = statistics.median(secs)
    ratio = f"{best / mine:.2f}x" if best is not None and mine > 0 else "-"
    lines.append(f"| {model} | {cell(secs)} | " + " | ".join(cells) + f" | {ratio} |")
checked = [m for m in models if m in DETERMINISTIC]
random = [m for m in models if m not in DETERMINISTIC]
note = []
if checked:
    note.append(" and ".join([", ".join(checked[:-1]), checked[-1]] if len(checked) > 1
                             else checked)
                + (" agrees" if len(checked) == 1 else " agree")
                + " with every peer's to 1e-4, or the run fails")
if random:
    note.append(" and ".join(random) + "'s masks differ")
env = "".join(f'{k}="{v}" ' for k, v in (("BENCH_MODELS", models_env),
                                          ("LENET_LIMIT", lenet_limit)) if v)
lines += [
    "",
    "Epoch-1 costs of tensor-fn: " + ", ".join(f"{m} {ours(m)[1][0]:.6f}" for m in models)
    + " (" + "; ".join(note) + ").",
    "",
    f"Command: `{env}bash scripts/bench-tutorials.sh ../shared/bench/tutorials {epochs}` "
    "(peers' setup: `bash ../shared/bench/setup.sh`).",
]
if bad:
    sys.exit("README.md not updated: " + "; ".join(bad))
text = "\n".join(lines)
print(text)
write_readme_section("tutorials-bench", text)
PY
