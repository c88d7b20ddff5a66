#!/usr/bin/env bash
# Installs the host packages hvtrace needs on Debian/Ubuntu: QEMU >= 10 (from
# bookworm-backports on Debian 12), babeltrace2 and its Python bindings (the
# reference trace reader), busybox-static and cpio (guest images), gdb (the
# peer in benchmarks), gcc and libc6-dev (tests/add.rs builds a dynamically
# linked program for --add), mmdebstrap and e2fsprogs (the Debian disk image
# of `image build --rootfs debian`), lttng-tools (the lttng-relayd that
# tests/relayd.rs streams to), and the LTTng project's analyses
# (lttnganalyses from PyPI, on Debian's babeltrace 1.x and its Python
# bindings) in a virtualenv in the cache folder. Idempotent; says what it
# changes.
set -euo pipefail

need_root() { if [ "$(id -u)" -ne 0 ]; then echo "sudo"; fi; }
SUDO=$(need_root)

qemu_major() {
    command -v qemu-system-x86_64 >/dev/null || { echo 0; return; }
    qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n1
}

pkgs=(babeltrace2 python3-bt2 busybox-static cpio gdb xz-utils zstd dpkg-dev chromium gcc libc6-dev
    babeltrace python3-babeltrace python3-venv mmdebstrap e2fsprogs lttng-tools)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done

if [ "$(qemu_major)" -lt 10 ]; then
    . /etc/os-release
    if [ "${VERSION_CODENAME:-}" = bookworm ]; then
        # QEMU 10 lives in bookworm-backports. Reuse the mirror this host already
        # uses for bookworm rather than naming one.
        if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            uri=$(grep -rhs '^URIs:' /etc/apt/sources.list.d/*.sources | grep -v security | head -n1 | awk '{print $2}')
            [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | grep -v security | head -n1 | awk '{print $2}')
            [ -n "$uri" ] || { echo "install-deps: cannot find this host's Debian mirror in apt's sources" >&2; exit 1; }
            echo "install-deps: adding the bookworm-backports suite ($uri) to apt's sources for QEMU 10"
            printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" \
                | $SUDO tee /etc/apt/sources.list.d/hvtrace-backports.sources >/dev/null
        fi
        qemu_target=(-t bookworm-backports qemu-system-x86)
    else
        qemu_target=(qemu-system-x86)
    fi
    need_qemu=1
else
    need_qemu=0
fi

if [ ${#missing[@]} -gt 0 ] || [ "$need_qemu" = 1 ]; then
    echo "install-deps: apt-get update"
    $SUDO apt-get update -qq
fi
if [ "$need_qemu" = 1 ]; then
    echo "install-deps: installing ${qemu_target[*]}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${qemu_target[@]}" >/dev/null
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ "$(qemu_major)" -lt 10 ]; then
    echo "install-deps: qemu-system-x86_64 is older than 10.0; the TCG engine needs QEMU's 10.0 plugin API" >&2
    exit 1
fi

# lttng-analyses (tests/lttng_analyses.rs runs it on hvtrace's traces). It
# runs on the babeltrace 1.x Python bindings, which Debian builds for its own
# /usr/bin/python3: the virtualenv uses that interpreter and sees its
# packages. lttnganalyses 0.6.1 (the newest on PyPI, 2017) subclasses
# `collections.Mapping`, which Python 3.10 removed; a .pth line in the
# virtualenv puts the alias back (collections.abc.Mapping is the same class)
# so that lttng-analyses itself runs unchanged.
LTTNG_ANALYSES_VERSION=0.6.1
cache=${HVTRACE_CACHE:-$(cd "$(dirname "$0")/.." && pwd)/.cache}
venv=$cache/lttng-analyses
have=$("$venv/bin/pip" show lttnganalyses 2>/dev/null | sed -n 's/^Version: //p' || true)
if [ "$have" != "$LTTNG_ANALYSES_VERSION" ]; then
    echo "install-deps: installing lttnganalyses $LTTNG_ANALYSES_VERSION from PyPI into $venv"
    mkdir -p "$cache"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "lttnganalyses==$LTTNG_ANALYSES_VERSION"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
compat=$site/hvtrace-collections-mapping.pth
if [ ! -f "$compat" ]; then
    echo "install-deps: adding collections.Mapping for lttnganalyses on Python >= 3.10 ($compat)"
    echo 'import collections, collections.abc; collections.Mapping = collections.abc.Mapping' >"$compat"
fi
"$venv/bin/lttng-syscallstats-mi" --mi-version >/dev/null || {
    echo "install-deps: lttng-analyses in $venv does not run" >&2
    exit 1
}

echo "install-deps: ok ($(qemu-system-x86_64 --version | head -n1); lttng-analyses $LTTNG_ANALYSES_VERSION in $venv)"
