#!/usr/bin/env bash
# Times the deeplearning.net tutorial models (logistic, mlp, dA) in tensor-fn and in the peers,
# on this machine, in one run, and writes a table of seconds per epoch into README.md (between
# the tutorials-bench markers).
#
#   bash scripts/bench-tutorials.sh PEERS_DIR [EPOCHS]
#
# PEERS_DIR is the directory of the peers' tutorial implementations (run.sh, common.py; in
# this project's workspace ../shared/bench/tutorials), whose ../setup.sh must have been run.
# Every framework trains the same model with the same hyperparameters for EPOCHS epochs
# (default 3; early stopping cannot end a run that short); the time of an epoch is its
# training steps only (validation excluded), as the peers measure it. The epoch-1 costs of the
# deterministic models (logistic, mlp) must agree across frameworks to 1e-4 relative, or the
# run fails. BENCH_PEERS lists the peers (default: pytensor jax, plus torch if installed).
set -euo pipefail
cd "$(dirname "$0")/.."
peers="$(cd "${1:?usage: bash scripts/bench-tutorials.sh PEERS_DIR [EPOCHS]}" && pwd)"
epochs="${2:-3}"
venv="${PEERS_VENV:-/tmp/tensor-fn-peers}"
[ -x "$venv/bin/python" ] || { echo "run $peers/../setup.sh first (expects $venv)" >&2; exit 2; }
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

cargo build --release --quiet --example logistic_sgd --example mlp --example da
for model in logistic mlp dA; do
  case "$model" in
    logistic) logged "ours-$model" ./target/release/examples/logistic_sgd --epochs "$epochs" --quiet --out "$work/$model" ;;
    mlp) logged "ours-$model" ./target/release/examples/mlp --epochs "$epochs" --quiet --out "$work/$model" ;;
    dA) logged "ours-$model" ./target/release/examples/da --epochs "$epochs" --corruption 0.3 --quiet --out "$work/$model" ;;
  esac
  echo "== tensor-fn $model"; grep -E "epoch" "$work/ours-$model.log" || true
  for peer in ${BENCH_PEERS:-$default_peers}; do
    logged "$peer-$model" bash "$peers/run.sh" "$model" "$peer" --epochs "$epochs" --json "$work/peers.jsonl"
    echo "== $peer $model"; grep -E "^epoch" "$work/$peer-$model.log" || true
  done
done

python3 - "$work" "$epochs" <<'PY'
import csv, json, os, statistics, sys
sys.path.insert(0, "scripts")
from bench_table import cpu_name, write_readme_section
work, epochs = sys.argv[1], int(sys.argv[2])
rows = [json.loads(l) for l in open(os.path.join(work, "peers.jsonl"))]
frameworks = sorted({r["framework"] for r in rows})
def ours(model):
    d = os.path.join(work, model, "corruption_30" if model == "dA" else "")
    with open(os.path.join(d, "epochs.csv")) as f:
        r = list(csv.DictReader(f))
    return [float(x["train_seconds"]) for x in r], [float(x["cost"]) for x in r]
def cell(secs):
    return f"{min(secs):.3f} / {statistics.median(secs):.3f}"
lines = [
    f"The tutorial models, {epochs} epochs each from the same initial weights, measured in one "
    f"run on {os.cpu_count()} cores of `{cpu_name()}`; seconds of training per epoch, best / "
    "median (validation not timed, as the peers time it):",
    "",
    "| model | tensor-fn | " + " | ".join(frameworks) + " | best peer / tensor-fn (medians) |",
    "|---|---|" + "---|" * len(frameworks) + "---|",
]
bad = []
for model in ("logistic", "mlp", "dA"):
    secs, costs = ours(model)
    cells, best = [], None
    for fw in frameworks:
        r = next(x for x in rows if x["model"] == model and x["framework"] == fw)
        t = statistics.median(r["epoch_s"])
        best = t if best is None else min(best, t)
        cells.append(cell(r["epoch_s"]))
        if model != "dA":
            c0 = r["epoch_cost"][0]
            if abs(c0 - costs[0]) > 1e-4 * abs(c0):
                bad.append(f"{model}: {fw} epoch-1 cost {c0} vs ours {costs[0]}")
    lines.append(f"| {model} | {cell(secs)} | " + " | ".join(cells)
                 + f" | {best / statistics.median(secs):.2f}x |")
lines += [
    "",
    "Epoch-1 costs of tensor-fn: " + ", ".join(f"{m} {ours(m)[1][0]:.6f}" for m in
                                              ("logistic", "mlp", "dA"))
    + " (logistic and mlp agree with every peer's to 1e-4, or the run fails; dA's masks differ).",
    "",
    f"Command: `bash scripts/bench-tutorials.sh ../shared/bench/tutorials {epochs}` (peers' "
    "setup: `bash ../shared/bench/setup.sh`).",
]
if bad:
    sys.exit("costs disagree, README.md not updated: " + "; ".join(bad))
text = "\n".join(lines)
print(text)
write_readme_section("tutorials-bench", text)
PY
