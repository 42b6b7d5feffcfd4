#!/usr/bin/env bash
# Times the seed's autoencoder in tensor-fn and in the peers, on this machine, in one run,
# and writes the table into README.md (between the bench markers).
#
#   bash scripts/bench.sh PEERS_DIR [EPOCHS]
#
# PEERS_DIR holds the peer implementations (run.sh, write_init.py, setup.sh; in this
# project's workspace that is ../shared/bench). Its setup.sh must have been run: it makes the
# virtualenv that run.sh uses (PEERS_VENV, default /tmp/tensor-fn-peers). Everyone starts from
# the same initial W (write_init.py), so the per-epoch costs must agree too: a peer that fails,
# or whose costs differ from ours by more than 1e-4 relative, fails the run (scripts/bench_table.py)
# and README.md is left as it was. BENCH_PEERS lists the peers (default: pytensor jax-scan
# jax-step). Then, if PEERS_DIR has the tutorial models (tutorials/run.sh), the same for them:
# scripts/bench-tutorials.sh (its own BENCH_PEERS: set BENCH_TUTORIAL_PEERS).
set -euo pipefail
cd "$(dirname "$0")/.."
peers="$(cd "${1:?usage: bash scripts/bench.sh PEERS_DIR [EPOCHS]}" && pwd)"
epochs="${2:-3}"
venv="${PEERS_VENV:-/tmp/tensor-fn-peers}"
[ -x "$venv/bin/python" ] || { echo "run $peers/setup.sh first (expects $venv)" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Runs a command with its output in $work/NAME.log; on failure, says so with the end of it.
logged() {
  local name="$1"; shift
  local rc=0
  "$@" >"$work/$name.log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "scripts/bench.sh: $name failed (exit $rc): $*" >&2
    echo "---- last 40 lines of its output ----" >&2
    tail -n 40 "$work/$name.log" >&2
    exit 1
  fi
}

cargo build --release --quiet --example autoencoder
logged write_init "$venv/bin/python" "$peers/write_init.py" "$work/W0.npy"

echo "== tensor-fn (cpu, $epochs epochs)"
logged tensor-fn cargo run --release --quiet --example autoencoder -- --epochs "$epochs" \
  --init "$work/W0.npy" --quiet --out "$work/out"
grep -E "^epoch|average" "$work/tensor-fn.log" || true
echo "== GEMM shapes of one step"
# Three runs: a single run of a 0.1 ms GEMM is at the mercy of whatever else the machine does.
for run in 1 2 3; do
  logged "gemm-$run" cargo test --release --quiet -p tensor-fn-runtime sgemm_shapes -- \
    --ignored --nocapture
  grep "^gemm |" "$work/gemm-$run.log" | tee -a "$work/gemm.txt" || true
done
[ -s "$work/gemm.txt" ] || { echo "scripts/bench.sh: sgemm_shapes printed no \"gemm |\" line" >&2; exit 1; }
for peer in ${BENCH_PEERS:-pytensor jax-scan jax-step}; do
  echo "== $peer"
  logged "peer-$peer" bash "$peers/run.sh" "$peer" --epochs "$epochs" --json "$work/peer-$peer.json"
  grep -E "^\s+epoch" "$work/peer-$peer.log" || true
done

python3 scripts/bench_table.py "$work" "$epochs" ${BENCH_PEERS:-pytensor jax-scan jax-step}

if [ -f "$peers/tutorials/run.sh" ]; then
  echo "== the tutorial models"
  if [ -n "${BENCH_TUTORIAL_PEERS:-}" ]; then
    BENCH_PEERS="$BENCH_TUTORIAL_PEERS" bash scripts/bench-tutorials.sh "$peers/tutorials" "$epochs"
  else
    env -u BENCH_PEERS bash scripts/bench-tutorials.sh "$peers/tutorials" "$epochs"
  fi
fi
