#!/usr/bin/env bash
# Cold symbol recovery from a bzImage: hvtrace (guest-symbols) against
# vmlinux-to-elf 1.4.0 (PyPI), on the same file, alternating, in one run.
# Prints wall time and peak RSS of each (median of N runs) and the ratios.
#
#   guest-symbols/benches/bench-symbols.sh [BZIMAGE] [RUNS]
#
# BZIMAGE defaults to the default 6.1 image (`hvtrace image build`).
# HVTRACE=path/to/hvtrace selects the binary (default: target/release/hvtrace,
# built if missing); if it has no `symbols` subcommand yet, the library's
# `probe` example (same code path, no cache) is measured instead.
# vmlinux-to-elf is installed into a venv under $V2E_VENV (default
# ${TMPDIR:-/tmp}/hvtrace-v2e-venv) on first use.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${2:-3}
target=${CARGO_TARGET_DIR:-$root/target}
hvtrace=${HVTRACE:-$target/release/hvtrace}

[ -x /usr/bin/time ] || { echo "bench-symbols: needs GNU time (/usr/bin/time)" >&2; exit 1; }

if [ ! -x "$hvtrace" ]; then
    (cd "$root" && cargo build --release --bin hvtrace >&2)
fi
image=${1:-}
if [ -z "$image" ]; then
    image="$("$hvtrace" image build --kernel-line 6.1 | tail -n1)/vmlinuz"
fi

if "$hvtrace" symbols --help 2>/dev/null | grep -q -- --no-cache; then
    ours=("$hvtrace" symbols --no-cache "$image")
else
    (cd "$root" && cargo build --release -q -p guest-symbols --example probe >&2)
    ours=("$target/release/examples/probe" "$image" - --map)
    echo "bench-symbols: hvtrace has no symbols subcommand yet; measuring the probe example" >&2
fi

venv=${V2E_VENV:-${TMPDIR:-/tmp}/hvtrace-v2e-venv}
if [ ! -x "$venv/bin/vmlinux-to-elf" ]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q "vmlinux-to-elf==1.4.0" >&2
fi
theirs=("$venv/bin/vmlinux-to-elf" "$image")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# measure NAME OUTFILE CMD... -> appends "secs kib" to $work/NAME
measure() {
    local name=$1 out=$2; shift 2
    /usr/bin/time -f '%e %M' -o "$work/$name.t" "$@" >"$out" 2>"$work/$name.err" || {
        echo "bench-symbols: $name failed:" >&2; cat "$work/$name.err" >&2; exit 1; }
    cat "$work/$name.t" >>"$work/$name"
}

for i in $(seq "$runs"); do
    measure hvtrace "$work/ours.map" "${ours[@]}"
    rm -f "$work/theirs.elf"
    measure v2e /dev/null "${theirs[@]}" "$work/theirs.elf"
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ours_t=$(awk '{print $1}' "$work/hvtrace" | median)
ours_m=$(awk '{print $2}' "$work/hvtrace" | median)
theirs_t=$(awk '{print $1}' "$work/v2e" | median)
theirs_m=$(awk '{print $2}' "$work/v2e" | median)

# Agreement: pairs of vmlinux-to-elf's symbol table found in ours.
agree=""
if command -v nm >/dev/null; then
    nm "$work/theirs.elf" 2>/dev/null | awk 'NF==3 {print $1, $3}' | sort -u >"$work/theirs.pairs"
    awk '{print $1, $3}' "$work/ours.map" | sort -u >"$work/ours.pairs"
    common=$(comm -12 "$work/ours.pairs" "$work/theirs.pairs" | wc -l)
    agree="symbols: hvtrace $(wc -l <"$work/ours.map"), vmlinux-to-elf $(wc -l <"$work/theirs.pairs") (addr,name) pairs, $common in common"
fi

echo "image: $image ($runs runs each, medians)"
printf 'hvtrace symbols (cold): %6.2f s  %8d KiB peak RSS\n' "$ours_t" "$ours_m"
printf 'vmlinux-to-elf 1.4.0:   %6.2f s  %8d KiB peak RSS\n' "$theirs_t" "$theirs_m"
awk -v a="$theirs_t" -v b="$ours_t" -v c="$ours_m" -v d="$theirs_m" \
    'BEGIN { printf "speedup: %.1fx faster; peak memory: %.2f of vmlinux-to-elf'"'"'s (%.1fx less)\n", a/b, c/d, d/c }'
[ -z "$agree" ] || echo "$agree"
