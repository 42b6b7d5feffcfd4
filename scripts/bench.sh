#!/usr/bin/env bash
# Times the seed's autoencoder in tensor-fn and in the peers, on this machine, in one run,
# and writes the table into README.md (between the bench markers).
#
#   bash scripts/bench.sh PEERS_DIR [EPOCHS]
#
# PEERS_DIR holds the peer implementations (run.sh, write_init.py, setup.sh; in this
# project's workspace that is ../shared/bench). Its setup.sh must have been run: it makes the
# virtualenv that run.sh uses (PEERS_VENV, default /tmp/tensor-fn-peers). Everyone starts from
# the same initial W (write_init.py), so the per-epoch costs must agree too.
set -euo pipefail
cd "$(dirname "$0")/.."
peers="$(cd "${1:?usage: bash scripts/bench.sh PEERS_DIR [EPOCHS]}" && pwd)"
epochs="${2:-3}"
venv="${PEERS_VENV:-/tmp/tensor-fn-peers}"
[ -x "$venv/bin/python" ] || { echo "run $peers/setup.sh first (expects $venv)"; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet --example autoencoder
"$venv/bin/python" "$peers/write_init.py" "$work/W0.npy" >/dev/null

echo "== tensor-fn (cpu, $epochs epochs)"
./target/release/examples/autoencoder --epochs "$epochs" --init "$work/W0.npy" --quiet \
  --out "$work/out" 2>&1 | tee "$work/ours.txt" | grep -E "^epoch|average"
echo "== GEMM shapes of one step"
# Three runs: a single run of a 0.1 ms GEMM is at the mercy of whatever else the machine does.
for run in 1 2 3; do
  cargo test --release --quiet -p tensor-fn-runtime sgemm_shapes -- --ignored --nocapture 2>/dev/null \
    | grep "^gemm |" | tee -a "$work/gemm.txt"
done
for peer in pytensor jax-scan jax-step; do
  echo "== $peer"
  bash "$peers/run.sh" "$peer" --epochs "$epochs" --json "$work/peers.jsonl" 2>&1 | grep -E "^\s+epoch" || true
done

python3 - "$work" "$epochs" <<'PY'
import json, re, statistics, sys, platform, os, subprocess
work, epochs = sys.argv[1], int(sys.argv[2])
rows = []
ours = open(f"{work}/ours.txt").read()
secs = [float(m.group(2)) for m in re.finditer(r"^epoch (\d+): mean cost [\d.]+, ([\d.]+) s", ours, re.M)]
costs = [float(m.group(1)) for m in re.finditer(r"^epoch \d+: mean cost ([\d.]+)", ours, re.M)]
rows.append(("tensor-fn (this repo), CPU", secs, costs))
for line in open(f"{work}/peers.jsonl"):
    r = json.loads(line)
    rows.append((r["framework"], r["epoch_seconds"], r["epoch_mean_cost"]))
ours_min = min(rows[0][1])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
lines = [
    f"Seed workload (50000 images, minibatch 20, 2500 steps per epoch), {epochs} epochs each, "
    f"same initial W, measured in one run on {os.cpu_count()} cores of `{cpu}`:",
    "",
    "| implementation | s/epoch min | median | vs tensor-fn | cost epoch 1 | cost epoch 2 |",
    "|---|---|---|---|---|---|",
]
for name, s, c in rows:
    ratio = "1.00x" if name.startswith("tensor-fn") else f"{min(s) / ours_min:.2f}x slower"
    c2 = f"{c[1]:.6f}" if len(c) > 1 else ""
    lines.append(f"| {name} | {min(s):.3f} | {statistics.median(s):.3f} | {ratio} | {c[0]:.6f} | {c2} |")
gemm = {}
for l in open(f"{work}/gemm.txt"):
    if l.startswith("gemm |"):
        _, name, shape, val = l.strip().split(" | ")
        gemm.setdefault((name, shape), []).append(float(val.split()[0]))
if gemm:
    lines += ["", "Our SGEMM on the step's five shapes (best and median of 3 runs of 2000 calls, all cores):", ""]
    lines += ["| GEMM | m x k x n | GFLOP/s best | median |", "|---|---|---|---|"]
    for (name, shape), vals in gemm.items():
        lines.append(f"| `{name}` | {shape} | {max(vals):.0f} | {statistics.median(vals):.0f} |")
lines += ["", "Command: `bash scripts/bench.sh ../shared/bench` (peers' setup: `bash ../shared/bench/setup.sh`)."]
table = "\n".join(lines)
print(table)
readme = open("README.md").read()
start, end = "<!-- bench:start -->", "<!-- bench:end -->"
if start in readme and end in readme:
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    open("README.md", "w").write(head + start + "\n" + table + "\n" + end + tail)
    print("README.md updated")
PY
