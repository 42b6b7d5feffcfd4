#!/usr/bin/env bash
# Puts NVIDIA's `ptxas` into DIR (default: .tools at the workspace root) and prints its path.
#   bash scripts/fetch-ptxas.sh [DIR]
# ptxas checks PTX syntax, types and register use without a GPU; the PTX validity tests run every
# kernel we emit through it. It comes from the PyPI wheel nvidia-cuda-nvcc 13.0.88 (37 MB), whose
# ptxas accepts PTX up to ISA 9.0, the newest our header may use (CUDA 13.0 drivers).
# Idempotent: an existing DIR/ptxas is kept.
set -euo pipefail

dir="${1:-$(cd "$(dirname "$0")/.." && pwd)/.tools}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
if [ -x "$dir/ptxas" ]; then
    echo "$dir/ptxas"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps -d "$tmp" nvidia-cuda-nvcc==13.0.88 >&2
wheel="$(ls "$tmp"/nvidia_cuda_nvcc-*.whl)"
# A wheel is a zip; take the one member we need instead of installing the package.
if command -v unzip >/dev/null 2>&1; then
    unzip -q -j -o "$wheel" nvidia/cu13/bin/ptxas -d "$tmp/bin"
else
    python3 - "$wheel" "$tmp/bin" <<'PY'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(wheel) as z, open(os.path.join(out, "ptxas"), "wb") as f:
    f.write(z.read("nvidia/cu13/bin/ptxas"))
PY
fi
chmod +x "$tmp/bin/ptxas"
# Move into place last so an interrupted run never leaves a half-written ptxas behind.
mv "$tmp/bin/ptxas" "$dir/ptxas"
echo "$dir/ptxas"
