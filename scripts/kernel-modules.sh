#!/usr/bin/env bash
# Takes kernel modules out of a Debian kernel package with everything they
# depend on, uncompressed, ready for busybox's insmod in an initramfs.
#
#   scripts/kernel-modules.sh DEB OUTDIR MODULE...
#
# Writes OUTDIR/NAME.ko for each module needed (names with '_', as the
# kernel knows them) and OUTDIR/order: one name a line, each after the
# modules it depends on. Dependencies come from each module's own .modinfo
# `depends=` field (what depmod writes into modules.dep); a name with no
# module file is built into the kernel and is skipped. Used by
# scripts/stock-kvm.sh (L1's initramfs) and by hvtrace's disk boot.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: kernel-modules.sh DEB OUTDIR MODULE..." >&2; exit 2; }
deb=$1 out=$2
shift 2
work=$(mktemp -d "${TMPDIR:-/tmp}/kernel-modules.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/x" "$out"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/x" --wildcards './lib/modules/*.ko*'
declare -A path=()
while IFS= read -r f; do
    n=$(basename "$f"); n=${n%%.ko*}
    path[$n]=$f
    path[${n//-/_}]=$f
done < <(find "$work/x" -name '*.ko*')
order=()
declare -A seen=()
visit() {
    local m=${1//-/_} f deps d
    [ -n "${seen[$m]:-}" ] && return
    seen[$m]=1
    f=${path[$m]:-}
    # Not a module file: built into this kernel.
    [ -n "$f" ] || return 0
    case "$f" in
        *.xz) xz -dc "$f" >"$work/$m.ko" ;;
        *.zst) zstd -qdc "$f" >"$work/$m.ko" ;;
        *) cp "$f" "$work/$m.ko" ;;
    esac
    deps=$(tr '\0' '\n' <"$work/$m.ko" | sed -n 's/^depends=//p' | head -n1)
    for d in ${deps//,/ }; do visit "$d"; done
    mv "$work/$m.ko" "$out/$m.ko"
    order+=("$m")
}
for m in "$@"; do visit "$m"; done
printf '%s\n' "${order[@]}" >"$out/order"
