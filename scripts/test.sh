#!/usr/bin/env bash
# The whole test suite, as CI runs it: host packages, formatting, lints,
# then every crate's tests and the end-to-end tests on real kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
echo "== cargo fmt --check (${SECONDS} s in)"
cargo fmt --all --check
echo "== cargo clippy (${SECONDS} s in)"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== cargo build (release: the TCG plugin runs inside QEMU; ${SECONDS} s in)"
cargo build --workspace --release
echo "== cargo test (${SECONDS} s in)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --release --no-fail-fast -- --test-threads "${HVTRACE_TEST_THREADS:-2}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# The slowest test binaries (the suite must stay well under CI's budget),
# then one closing line with the totals of every test binary.
awk '/^ *Running / { bin = $2 } /^test result:/ { sub(/s$/, "", $NF); printf "%8.1f s  %s\n", $NF, bin }' \
    "$log" | sort -rn | head -n 12 | sed 's/^/slowest: /'
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' \
    FS='[ ;]+' "$log"
echo "test.sh: ${SECONDS} s in all"
exit "$status"
