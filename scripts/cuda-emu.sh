#!/usr/bin/env bash
# Builds the emulated NVIDIA driver (runtime/cuda-emu: the CUDA driver API on tensor-fn's PTX
# interpreter), installs it as DIR/lib64/libcuda.so.1 and prints DIR (absolute).
#   bash scripts/cuda-emu.sh DIR
#
# With DIR/lib64 on LD_LIBRARY_PATH, a `cuda` build of tensor-fn finds this library before any
# real driver and sees one GPU, `cuda:0` ("tensor-fn CUDA emulator (PTX interpreter)"), whose
# kernels run on the CPU. Nothing else ever loads it: without that LD_LIBRARY_PATH a GPU
# machine's binaries load NVIDIA's driver as always.
#
# Building needs a libcuda for cust_raw's build script to link against: the stub of
# scripts/cuda-stub.sh, made here if CUDA_LIBRARY_PATH is not set. The crate is its own
# workspace, built into target/cuda-emu (or $CARGO_TARGET_DIR/cuda-emu).
set -euo pipefail

dir="${1:?usage: bash scripts/cuda-emu.sh DIR}"
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$dir/lib64"
dir="$(cd "$dir" && pwd)"

if [ -z "${CUDA_LIBRARY_PATH:-}" ]; then
    CUDA_LIBRARY_PATH="$(bash "$root/scripts/cuda-stub.sh" "$root/.tools/cuda-stub")"
fi
target="${CARGO_TARGET_DIR:-$root/target}/cuda-emu"
CUDA_LIBRARY_PATH="$CUDA_LIBRARY_PATH" cargo build --quiet --release --locked \
    --manifest-path "$root/runtime/cuda-emu/Cargo.toml" --target-dir "$target" >&2
built="$target/release/libtensor_fn_cuda_emu.so"

# The library must stand on its own: no NEEDED libcuda (it is the driver).
if readelf -d "$built" 2>/dev/null | grep -q 'NEEDED.*libcuda'; then
    echo "cuda-emu.sh: $built links libcuda itself" >&2
    exit 1
fi
lib="$dir/lib64/libcuda.so.1"
if ! cmp -s "$built" "$lib" 2>/dev/null; then
    # Copy, then move into place, so a test never loads a half-written library.
    cp "$built" "$lib.tmp.$$"
    mv "$lib.tmp.$$" "$lib"
fi
echo "$dir"
