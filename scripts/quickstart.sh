#!/usr/bin/env bash
# From a fresh Debian/Ubuntu machine to a trace: installs the host packages,
# builds hvtrace, fetches and builds the default guest image, and traces a
# syscall-heavy workload into ./hvtrace-trace, then shows what the run did:
# hvtrace's report (per-task time, syscalls and interrupts) and the traced
# command's own first syscalls, read back with babeltrace2. Extra arguments
# replace the default workload.
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
echo
echo "quickstart: what the run did (hvtrace report $out):"
./target/release/hvtrace report "$out"
# The command's own events: its process name is the program's file name,
# as the kernel keeps it (15 bytes at most).
comm=$(basename "$1" | cut -c1-15)
echo
echo "quickstart: the first syscalls of \`$comm\` (babeltrace2 $out/kernel, its events only):"
babeltrace2 "$out/kernel" | grep -F "procname = \"$comm\"" | grep -F ' syscall_' | head -n 16 || true
echo
echo "quickstart: the whole trace is in $out/kernel (babeltrace2, Trace Compass, lttng-analyses read it)"
