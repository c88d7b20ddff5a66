#!/usr/bin/env bash
# A stock KVM on a machine without VT-x/AMD-V: QEMU's TCG with `-cpu max`
# emulates AMD SVM with nested paging, so an L1 guest running the Debian
# kernel of hvtrace's own guest image loads that same package's kvm-amd and
# has a /dev/kvm from the stock, upstream kvm_amd. This script runs one
# command line inside such an L1 and brings back its exit status, its
# stdout and stderr (streamed as they are written) and its files.
#
#   scripts/stock-kvm.sh [OPTIONS] -- CMD ARGS...
#   scripts/stock-kvm.sh -- target/release/hvtrace record --backend kvm -o /tmp/t -- /bin/syscalls 200
#
# L1 runs this host's own userspace: the host's / is shared read-only over
# virtio-9p and the command runs chrooted into it, in the current folder,
# so the host's hvtrace, its libraries and the guest images are all there
# as they are here. Written files land on the host through read-write
# shares of the current folder, hvtrace's cache folder and the temporary
# folder (more with --rw). L1's initramfs (busybox, the kernel package's
# own kvm, kvm-amd, virtio and 9p modules, and a small /init) is built once
# into the cache, keyed by the content of its inputs.
#
# Exit status: the command's; 125 when the harness or L1 failed (no QEMU
# 10, no SVM in TCG, a module that does not load, L1 timeout, interrupted),
# with the reason and the tail of L1's console on stderr. No process is left
# behind: QEMU is killed on every way out.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/stock-kvm.sh [OPTIONS] -- CMD ARGS...

Runs CMD inside an L1 guest (QEMU TCG, -cpu max: nested SVM) whose stock
kvm_amd gives it a /dev/kvm, with this host's filesystem shared into it.

options:
  --kernel-line 6.1|6.12  L1's kernel: the guest image's Debian package of that line (default 6.1)
  --smp N                 L1 vCPUs (default 2; more than the host's cores only slows TCG down)
  --memory MIB            L1 memory (default 4096)
  --timeout SECS          whole L1 run, boot to power-off (default 900)
  --rw DIR                one more host folder L1 may write (repeatable); always
                          writable: the current folder, the cache folder, $TMPDIR or /tmp
  --console FILE          keep L1's serial console log in FILE
  --tcg-thread single|multi
                          QEMU's TCG threading (default multi: one host thread per L1 vCPU)
  --net                   give L1 a NIC on QEMU's user-mode network: L1 is
                          10.0.2.15, and 10.0.2.2 reaches this host's loopback
                          (e.g. an lttng-relayd listening on 127.0.0.1)
  --hvtrace PATH          hvtrace binary used to build the guest image (default target/release/hvtrace)
  -h, --help              this text
EOF
}

die() { echo "stock-kvm: $*" >&2; exit 125; }

repo=$(cd "$(dirname "$0")/.." && pwd)
line=6.1
smp=2
memory=4096
timeout=900
console_keep=""
net=0
tcg_thread=multi
hvtrace="$repo/target/release/hvtrace"
rw=("$PWD")
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel-line) line=${2:?}; shift 2 ;;
        --smp) smp=${2:?}; shift 2 ;;
        --memory) memory=${2:?}; shift 2 ;;
        --timeout) timeout=${2:?}; shift 2 ;;
        --rw) rw+=("$(cd "${2:?}" && pwd)") || die "--rw $2: no such folder"; shift 2 ;;
        --console) console_keep=${2:?}; shift 2 ;;
        --net) net=1; shift ;;
        --tcg-thread) tcg_thread=${2:?}; shift 2 ;;
        --hvtrace) hvtrace=${2:?}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        *) usage >&2; die "unknown option '$1' (the command goes after --)" ;;
    esac
done
[ $# -gt 0 ] || { usage >&2; die "no command given after --"; }
case "$tcg_thread" in single|multi) ;; *) die "--tcg-thread takes single or multi" ;; esac
case "$smp$memory$timeout" in *[!0-9]*) die "--smp, --memory and --timeout take whole numbers" ;; esac
[ "$smp" -ge 1 ] && [ "$memory" -ge 512 ] && [ "$timeout" -ge 1 ] ||
    die "--smp must be >= 1, --memory >= 512, --timeout >= 1"

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found (run scripts/install-deps.sh)"
qemu_major=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n1)
[ "${qemu_major:-0}" -ge 10 ] || die "QEMU $qemu_major is too old: TCG's nested SVM needs QEMU >= 10 (scripts/install-deps.sh)"
[ -x "$hvtrace" ] || die "$hvtrace not found: build it first (cargo build --release)"
for t in cpio gzip xz sha256sum dpkg-deb; do command -v "$t" >/dev/null || die "$t not found (scripts/install-deps.sh)"; done

cache=${HVTRACE_CACHE:-$repo/.cache}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
tmp_root=${TMPDIR:-/tmp}
rw+=("$cache" "$(cd "$tmp_root" && pwd)")

# --- L1's kernel and initramfs -------------------------------------------
image=$("$hvtrace" image build --kernel-line "$line" | tail -n1) || die "hvtrace image build --kernel-line $line failed"
workloads=${HVTRACE_WORKLOADS_DIR:-$cache/workloads-target/x86_64-unknown-linux-gnu/release}
[ -x "$workloads/init" ] || die "no workload programs in $workloads (hvtrace image build makes them)"
[ -f "$image/vmlinuz" ] || die "no vmlinuz in $image"
pkg=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["kernel"]["package"], m["kernel"]["version"], m["kernel_release"])' "$image/manifest.json")
read -r kpkg kver krel <<<"$pkg"
deb=$(ls "$cache/debs/${kpkg}_"*.deb 2>/dev/null | head -n1)
[ -n "$deb" ] || die "the kernel package $kpkg ($kver) is not in $cache/debs"
busybox=$(ls "$cache"/extract/busybox-static_*/bin/busybox 2>/dev/null | head -n1)
[ -n "$busybox" ] || die "no busybox in $cache/extract (hvtrace image build extracts it)"

# The modules L1 needs, in load order (scripts/kernel-modules.sh: each
# module's dependencies from its own .modinfo `depends=` field).
wanted=(kvm-amd 9pnet_virtio 9p virtio_pci virtio_net)
key=$( { sha256sum "$deb" "$busybox" "$0" "$repo/scripts/kernel-modules.sh" | cut -d' ' -f1; echo "${wanted[*]}"; } | sha256sum | cut -c1-16)
l1dir="$cache/stock-kvm/$krel-$key"
if [ ! -f "$l1dir/initrd.img" ]; then
    echo "stock-kvm: building L1's initramfs from $kpkg $kver (once; cached in $l1dir)" >&2
    work=$(mktemp -d "$cache/stock-kvm-build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/root/bin" "$work/root/lib/modules" "$work/root/host"
    "$repo/scripts/kernel-modules.sh" "$deb" "$work/root/lib/modules" "${wanted[@]}" ||
        die "cannot take the modules out of $kpkg"
    [ -f "$work/root/lib/modules/kvm_amd.ko" ] || die "$kpkg has no kvm-amd module"
    cp "$busybox" "$work/root/bin/busybox"
    for a in sh mount umount insmod mkdir cat chroot poweroff sleep dmesg tail ip; do ln -s busybox "$work/root/bin/$a"; done
    cat >"$work/root/init" <<'EOF'
#!/bin/sh
# L1's /init: load the modules, mount the host, run the command, power off.
export PATH=/bin
mount -t proc proc /proc 2>/dev/null || { mkdir -p /proc; mount -t proc proc /proc; }
mkdir -p /sys /dev && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev
arg() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" /proc/cmdline; }
run=$(arg stockkvm.run)
fail() { echo "stock-kvm-l1: $*"; [ -n "$run" ] && [ -d "/host$run" ] && echo "$*" >"/host$run/l1-error"; poweroff -f; }
for m in $(cat /lib/modules/order); do
    insmod /lib/modules/$m.ko || fail "module $m failed to load: $(dmesg | tail -n 3 | tr '\n' ' ')"
done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro hostroot /host || fail "cannot mount the host's root over 9p"
i=0
for d in $(arg stockkvm.rw | tr ',' ' '); do
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 "rw$i" "/host$d" || fail "cannot mount $d read-write"
    i=$((i + 1))
done
ip link set lo up
if [ "$(arg stockkvm.net)" = 1 ]; then
    # QEMU's user-mode network: its gateway 10.0.2.2 is the host's loopback
    ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 ||
        fail "cannot bring up eth0 (--net): $(ip link 2>&1 | tr '\n' ' ')"
fi
[ -e /dev/kvm ] || fail "no /dev/kvm after loading kvm-amd (does this QEMU's TCG offer SVM?): $(dmesg | grep -i -m3 -e svm -e kvm | tr '\n' ' ')"
mount -t proc proc /host/proc && mount -t sysfs sys /host/sys && mount -t devtmpfs dev /host/dev ||
    fail "cannot mount proc, sys and dev in the host's root"
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts; mount -t tmpfs shm /host/dev/shm
mount -t tmpfs run /host/run 2>/dev/null
chroot /host /bin/sh "$run/cmd.sh" >"/host$run/stdout" 2>"/host$run/stderr"
echo $? >"/host$run/status"
sync
poweroff -f
EOF
    chmod +x "$work/root/init"
    mkdir -p "$work/root/proc" "$work/root/sys" "$work/root/dev"
    (cd "$work/root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) >"$work/initrd.img"
    mkdir -p "$l1dir"
    # L1 boots the ELF vmlinux inside the package's bzImage (QEMU's PVH
    # entry): under TCG the bzImage's own decompressor takes several
    # seconds of every L1 boot. L1 is the harness, not the traced guest:
    # its KASLR and decompressor are nothing a test looks at.
    "$hvtrace" symbols --extract-vmlinux "$work/vmlinux" "$image/vmlinuz" >/dev/null ||
        die "cannot extract the ELF vmlinux of $image/vmlinuz"
    mv "$work/vmlinux" "$l1dir/vmlinux"
    mv "$work/initrd.img" "$l1dir/initrd.img.tmp$$"
    mv "$l1dir/initrd.img.tmp$$" "$l1dir/initrd.img"
    rm -rf "$work"
    trap - EXIT
fi

# --- the run ---------------------------------------------------------------
run=$(mktemp -d "$(cd "$tmp_root" && pwd)/stock-kvm.XXXXXX")
{
    echo "cd $(printf '%q' "$PWD") || exit 125"
    echo "export PATH=$(printf '%q' "$PATH") HOME=$(printf '%q' "${HOME:-/root}") TMPDIR=$(printf '%q' "$tmp_root") HVTRACE_CACHE=$(printf '%q' "$cache") LANG=C.UTF-8"
    # The workload programs the host's image build just made: L1 reuses the
    # same image instead of running cargo under TCG.
    echo "export HVTRACE_WORKLOADS_DIR=$(printf '%q' "$workloads")"
    printf 'exec'
    printf ' %q' "$@"
    echo
} >"$run/cmd.sh"
: >"$run/stdout"
: >"$run/stderr"

# Only folders that exist, each once, and none below another share.
declare -A shared=()
shares=()
for d in "${rw[@]}"; do
    [ -d "$d" ] || continue
    [ -n "${shared[$d]:-}" ] && continue
    shared[$d]=1
    shares+=("$d")
done
qemu_args=(-nodefaults -display none -no-reboot
    -accel tcg,thread=$tcg_thread -cpu max -smp "$smp" -m "$memory"
    -kernel "$l1dir/vmlinux" -initrd "$l1dir/initrd.img"
    -serial "file:$run/console.log"
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on")
i=0
for d in "${shares[@]}"; do
    qemu_args+=(-virtfs "local,path=$d,mount_tag=rw$i,security_model=none")
    i=$((i + 1))
done
rwlist=$(IFS=,; echo "${shares[*]}")
case "$rwlist" in *' '*) die "a shared folder's path has a space: $rwlist" ;; esac
if [ "$net" = 1 ]; then
    qemu_args+=(-nic user,model=virtio-net-pci)
fi
qemu_args+=(-append "console=ttyS0 quiet panic=-1 mitigations=off stockkvm.run=$run stockkvm.rw=$rwlist stockkvm.net=$net")

echo "stock-kvm: L1 $krel (QEMU $qemu_major TCG, nested SVM, $smp vCPUs, $memory MiB): $*" >&2
qemu_pid=""
tails=()
# Runs from the EXIT trap, where set -e still holds: nothing here may fail,
# or the script's own status (125 and its reason) is lost to a 1.
cleanup() {
    set +e
    [ -n "$qemu_pid" ] && kill -KILL "$qemu_pid" 2>/dev/null
    for p in "${tails[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    [ -n "$console_keep" ] && [ -f "$run/console.log" ] && cp "$run/console.log" "$console_keep"
    rm -rf "$run"
}
interrupted() { echo "stock-kvm: interrupted" >&2; cleanup; trap - EXIT; exit 125; }
trap cleanup EXIT
trap interrupted INT TERM

# Boots L1 once for the command: streams its output, kills it at the
# timeout (exit 125), and sets qemu_status.
boot_l1() {
    : >"$run/stdout"
    : >"$run/stderr"
    qemu-system-x86_64 "${qemu_args[@]}" &
    qemu_pid=$!
    # The command's output, streamed as L1 writes it through 9p.
    tail -n +1 -f --pid="$qemu_pid" "$run/stdout" &
    tails+=($!)
    tail -n +1 -f --pid="$qemu_pid" "$run/stderr" >&2 &
    tails+=($!)

    start=$SECONDS
    while kill -0 "$qemu_pid" 2>/dev/null; do
        if [ $((SECONDS - start)) -ge "$timeout" ]; then
            # `|| true`: a killed QEMU's status (137) must not end this
            # script (set -e) before it says why.
            kill -KILL "$qemu_pid" 2>/dev/null || true
            wait "$qemu_pid" 2>/dev/null || true
            qemu_pid=""
            for p in "${tails[@]}"; do wait "$p" 2>/dev/null || true; done
            echo "stock-kvm: L1 did not finish within ${timeout}s; its console ends:" >&2
            tail -n 15 "$run/console.log" >&2
            exit 125
        fi
        sleep 0.2
    done
    wait "$qemu_pid" 2>/dev/null && qemu_status=0 || qemu_status=$?
    qemu_pid=""
    for p in "${tails[@]}"; do wait "$p" 2>/dev/null || true; done
    tails=()
}

boot_l1
# L1's own kernel (TCG emulating SVM, running kvm-amd) has been seen to
# crash under a nested guest once in many runs on a loaded host: a panic,
# or a reset after a soft lockup (QEMU ends by itself with -no-reboot).
# That is the harness failing, not the command, which then runs again,
# once, saying so. (A timeout is not retried: it already cost the budget.)
if [ ! -f "$run/status" ] && [ ! -f "$run/l1-error" ]; then
    echo "stock-kvm: L1's own kernel crashed or reset (QEMU status $qemu_status) before the command finished; its console ends:" >&2
    tail -n 15 "$run/console.log" >&2
    echo "stock-kvm: running the command again, once, in a fresh L1" >&2
    rm -f "$run/console.log"
    boot_l1
fi
if [ -f "$run/status" ]; then
    status=$(cat "$run/status")
    if [ "$status" != 0 ] && [ ! -s "$run/stderr" ]; then
        # Nothing said why: L1's own view (an OOM kill, a hung task...).
        echo "stock-kvm: the command exited with status $status after $((SECONDS - start)) s and wrote nothing on stderr; L1's console ends:" >&2
        tail -n 15 "$run/console.log" >&2
    fi
    exit "$status"
fi
if [ -f "$run/l1-error" ]; then
    echo "stock-kvm: $(cat "$run/l1-error")" >&2
else
    echo "stock-kvm: L1 ended (QEMU status $qemu_status) without the command's status; its console ends:" >&2
    tail -n 15 "$run/console.log" >&2
fi
exit 125
