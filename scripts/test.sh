#!/usr/bin/env bash
# The whole test suite, as CI runs it: host packages, formatting, lints,
# then every crate's tests and the end-to-end tests on real kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== cargo build (release: the TCG plugin runs inside QEMU)"
cargo build --workspace --release
echo "== cargo test"
cargo test --workspace --release -- --test-threads "${HVTRACE_TEST_THREADS:-2}"
