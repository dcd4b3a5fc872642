#!/bin/bash
# Install what building and testing the vfio-user patch set needs on a
# Debian 12 host: QEMU 10.0's build dependencies (meson >= 1.5 from
# bookworm-backports) and a deb-src entry for the suite that carries the
# QEMU 10.0.x source package.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

stamp=${1:?usage: install-deps.sh STAMPFILE}

if [ "$(id -u)" != 0 ]; then
    echo "install-deps: must run as root (apt-get install)" >&2
    exit 1
fi

# Reuse the mirror the machine is already configured with rather than
# naming one here.
mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
    mirror=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
fi
if [ -z "$mirror" ]; then
    echo "install-deps: cannot find the Debian mirror in the apt configuration" >&2
    exit 1
fi

list=/etc/apt/sources.list.d/vfio-user-build.sources
want=$(cat <<SRC
Types: deb-src
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
)
if [ ! -f "$list" ] || [ "$(cat "$list")" != "$want" ]; then
    printf '%s\n' "$want" > "$list"
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# clang: the fuzzer and the sanitizer build; llvm: its llvm-symbolizer,
# without which sanitizer reports have no file:line
apt-get install -y -q --no-install-recommends \
    build-essential ccache git rsync dpkg-dev quilt ca-certificates \
    ninja-build pkgconf flex bison python3-venv python3-setuptools \
    libglib2.0-dev libfdt-dev libpixman-1-dev zlib1g-dev libslirp-dev \
    libjson-c-dev libcmocka-dev \
    seabios qemu-system-data ipxe-qemu \
    perl cpio binutils bc \
    clang libclang-rt-14-dev llvm
apt-get install -y -q --no-install-recommends -t bookworm-backports \
    meson python3-pycotap
# libvirt for harness/libvirt.sh: bookworm's own (9.0).  The backports one
# would also pull backports' systemd and Debian's QEMU; the test runs ours.
apt-get install -y -q --no-install-recommends \
    libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients

touch "$stamp"
