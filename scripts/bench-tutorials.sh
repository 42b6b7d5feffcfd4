#!/usr/bin/env bash
# Times the deeplearning.net tutorial models (logistic, mlp, dA) in tensor-fn and in the peers,
# on this machine, in one run, and prints a markdown table of seconds per epoch.
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
import csv, json, os, sys
work, epochs = sys.argv[1], int(sys.argv[2])
rows = [json.loads(l) for l in open(os.path.join(work, "peers.jsonl"))]
def ours(model):
    d = os.path.join(work, model, "corruption_30" if model == "dA" else "")
    with open(os.path.join(d, "epochs.csv")) as f:
        r = list(csv.DictReader(f))
    return [float(x["train_seconds"]) for x in r], [float(x["cost"]) for x in r]
print(f"| model | tensor-fn | " + " | ".join(sorted({r['framework'] for r in rows})) + " | best peer / tensor-fn |")
frameworks = sorted({r["framework"] for r in rows})
print("|---|---|" + "---|" * len(frameworks) + "---|")
bad = []
for model in ("logistic", "mlp", "dA"):
    secs, costs = ours(model)
    mine = sum(secs) / len(secs)
    cells, best = [], None
    for fw in frameworks:
        r = next(x for x in rows if x["model"] == model and x["framework"] == fw)
        t = sum(r["epoch_s"]) / len(r["epoch_s"])
        best = t if best is None else min(best, t)
        cells.append(f"{t:.3f}")
        if model != "dA":
            c0 = r["epoch_cost"][0]
            if abs(c0 - costs[0]) > 1e-4 * abs(c0):
                bad.append(f"{model}: {fw} epoch-1 cost {c0} vs ours {costs[0]}")
    print(f"| {model} | {mine:.3f} | " + " | ".join(cells) + f" | {best / mine:.2f}x |")
print(f"\nseconds per epoch of training, mean of {epochs} epochs; epoch-1 costs (ours): "
      + ", ".join(f"{m} {ours(m)[1][0]:.6f}" for m in ("logistic", "mlp", "dA")))
if bad:
    sys.exit("costs disagree: " + "; ".join(bad))
PY
