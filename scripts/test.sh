#!/usr/bin/env bash
# The project's test command: everything CI checks, on a fresh machine, with no GPU.
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
# ptxas validates every PTX kernel we emit (no GPU needed); fetched from PyPI once into .tools.
PTXAS="$(bash scripts/fetch-ptxas.sh)"
export PTXAS
# Unit tests of every crate, integration tests (seed values, gradient checks, compile-fail
# cases, MNIST loaders), doc tests; examples are built too.
cargo test --workspace
# The seed's introduction runs end to end and prints what Theano printed.
cargo run --quiet --example theano_intro >/dev/null
echo "scripts/test.sh: all checks passed"
