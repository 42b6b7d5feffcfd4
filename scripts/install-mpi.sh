#!/usr/bin/env bash
# Makes sure Open MPI (mpirun and libmpi.so.40) is installed: the data-parallel tests run
# `mpirun -np 2`. Installs Debian's packages when it is missing (as root, or through sudo).
#   bash scripts/install-mpi.sh
set -euo pipefail
if command -v mpirun >/dev/null && ldconfig -p | grep -q 'libmpi\.so\.40'; then
    exit 0
fi
sudo=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || {
        echo "scripts/install-mpi.sh: Open MPI is missing and this user cannot install it:" \
            "install Debian's openmpi-bin (or run as root)" >&2
        exit 1
    }
    sudo=(sudo)
fi
install() { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openmpi-bin >/dev/null; }
# Package lists may be missing or stale on a fresh machine: refresh them once if needed.
install || { "${sudo[@]}" apt-get update -q >/dev/null && install; }
mpirun --version | head -1
