#!/usr/bin/env bash
# From a fresh Debian/Ubuntu machine to a trace: installs the host packages,
# builds hvtrace, fetches and builds the default guest image, and traces a
# syscall-heavy workload into ./hvtrace-trace (then prints a summary read
# back with babeltrace2). Extra arguments replace the default workload.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || {
    echo "quickstart: no Rust toolchain; install one with rustup (Rust >= 1.85)" >&2
    exit 1
}
bash scripts/install-deps.sh
cargo build --workspace --release
out=${HVTRACE_OUT:-hvtrace-trace}
if [ $# -eq 0 ]; then set -- /bin/syscalls 200; fi
./target/release/hvtrace record --backend auto --force -o "$out" -- "$@"
echo "quickstart: trace in $out/kernel; first events:"
babeltrace2 "$out/kernel" | head -n 20
