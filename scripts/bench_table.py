"""The benchmark table of scripts/bench.sh, from the files its run left in WORK.

    python3 scripts/bench_table.py WORK EPOCHS PEER...

WORK holds tensor-fn.log (our autoencoder's output), gemm.txt (our GEMM rates) and, per peer,
peer-PEER.json (the one result line its run.sh appended). Every implementation must report
EPOCHS epochs whose mean costs agree with ours to 1e-4 relative (all start from the same W);
otherwise this exits with status 1, naming what is wrong, and README.md is not touched. Then it
prints the table and writes it into README.md between the bench markers.
"""

import json
import math
import os
import re
import statistics
import sys

TOLERANCE = 1e-4


def fail(msg):
    print(f"scripts/bench.sh: {msg}", file=sys.stderr)
    sys.exit(1)


def ours(work, epochs):
    """(secs, costs) of each epoch, from the autoencoder's "epoch N: mean cost C, S s" lines."""
    text = open(os.path.join(work, "tensor-fn.log")).read()
    found = re.findall(r"^epoch (\d+): mean cost ([^,\s]+), ([^\s]+) s", text, re.M)
    if [int(e) for e, _, _ in found] != list(range(1, epochs + 1)):
        fail(f"tensor-fn printed epochs {[int(e) for e, _, _ in found]}, "
             f"not 1..{epochs}; its output:\n{text}")
    return [float(s) for _, _, s in found], [float(c) for _, c, _ in found]


def peer(work, name, epochs):
    """(framework, secs, costs) from the peer's JSON result line."""
    path = os.path.join(work, f"peer-{name}.json")
    if not os.path.exists(path):
        fail(f"peer {name} exited 0 but wrote no result to {path}")
    lines = [l for l in open(path) if l.strip()]
    if len(lines) != 1:
        fail(f"peer {name} wrote {len(lines)} result lines to {path}, expected 1")
    try:
        r = json.loads(lines[0])
        framework, secs, costs = r["framework"], r["epoch_seconds"], r["epoch_mean_cost"]
    except (ValueError, KeyError) as e:
        fail(f"peer {name}: unreadable result ({e!r}): {lines[0].strip()}")
    if len(secs) != epochs or len(costs) != epochs:
        fail(f"peer {name} reported {len(secs)} epoch times and {len(costs)} costs, "
             f"expected {epochs}")
    return framework, [float(s) for s in secs], [float(c) for c in costs]


def disagreements(rows):
    """Per implementation whose costs differ from ours (rows[0]) beyond TOLERANCE, a line."""
    _, _, want = rows[0]
    out = []
    for name, _, got in rows[1:]:
        bad = [
            f"epoch {i + 1}: {g:.6f} vs {w:.6f}"
            for i, (g, w) in enumerate(zip(got, want))
            if not (math.isfinite(g) and abs(g - w) <= TOLERANCE * abs(w))
        ]
        if bad:
            out.append(f"{name}: " + "; ".join(bad))
    return out


def cpu_name():
    return next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                 if l.startswith("model name")), "?")


def write_readme_section(name, text):
    """Replaces what README.md holds between the `<!-- NAME:start -->` and `<!-- NAME:end -->`
    markers with `text`."""
    readme = open("README.md").read()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start in readme and end in readme:
        head, rest = readme.split(start, 1)
        _, tail = rest.split(end, 1)
        open("README.md", "w").write(head + start + "\n" + text + "\n" + end + tail)
        print("README.md updated")


def table(rows, epochs, gemm_lines):
    ours_min = min(rows[0][1])
    cpu = cpu_name()
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
        lines.append(f"| {name} | {min(s):.3f} | {statistics.median(s):.3f} | {ratio} "
                     f"| {c[0]:.6f} | {c2} |")
    gemm = {}
    for l in gemm_lines:
        if l.startswith("gemm |"):
            _, name, shape, val = l.strip().split(" | ")
            gemm.setdefault((name, shape), []).append(float(val.split()[0]))
    if gemm:
        lines += ["", "Our SGEMM on the step's five shapes (best and median of 3 runs of 2000 "
                  "calls, all cores):", ""]
        lines += ["| GEMM | m x k x n | GFLOP/s best | median |", "|---|---|---|---|"]
        for (name, shape), vals in gemm.items():
            lines.append(f"| `{name}` | {shape} | {max(vals):.0f} "
                         f"| {statistics.median(vals):.0f} |")
    lines += ["", "Command: `bash scripts/bench.sh ../shared/bench` (peers' setup: "
              "`bash ../shared/bench/setup.sh`)."]
    return "\n".join(lines)


def main():
    work, epochs, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    secs, costs = ours(work, epochs)
    rows = [("tensor-fn (this repo), CPU", secs, costs)]
    rows += [peer(work, name, epochs) for name in names]
    bad = disagreements(rows)
    if bad:
        fail(f"per-epoch mean costs disagree with tensor-fn's (more than {TOLERANCE:g} "
             "relative; everyone starts from the same W):\n  " + "\n  ".join(bad))
    gemm_path = os.path.join(work, "gemm.txt")
    gemm_lines = open(gemm_path).readlines() if os.path.exists(gemm_path) else []
    text = table(rows, epochs, gemm_lines)
    print(text)
    write_readme_section("bench", text)


if __name__ == "__main__":
    main()
