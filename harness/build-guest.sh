#!/bin/bash
# Build the Linux test guest from Debian packages: the distribution kernel
# and an initramfs of busybox-static, the kernel's NVMe, virtio-blk and
# SCSI (megaraid_sas, sd) driver modules and an init that exercises the disk.
#
# usage: build-guest.sh REPO OUTDIR
# Leaves OUTDIR/vmlinuz and OUTDIR/initramfs.gz.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

repo=$(realpath "$1")
out=$(realpath -m "$2")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [ -z "$kpkg" ]; then
    echo "build-guest: cannot tell which kernel linux-image-amd64 is" >&2
    exit 1
fi
stamp="$kpkg $(sha256sum "$repo/harness/guest/init" "$0" | sha256sum | cut -c1-16)"
if [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi

cd "$work"
# apt's sandbox user cannot write here; download as root quietly
apt-get download -o APT::Sandbox::User=root "$kpkg" busybox-static >/dev/null
dpkg-deb -x "$kpkg"_*.deb kernel
dpkg-deb -x busybox-static_*.deb busybox
kver=$(ls kernel/lib/modules)
kmods=kernel/lib/modules/$kver/kernel

mkdir -p root/bin root/dev root/proc root/sys root/tmp root/lib/modules
cp busybox/bin/busybox root/bin/busybox
install -m 0755 "$repo/harness/guest/init" root/init

# The disk drivers and what they depend on, dependencies first
declare -A seen=()
order=()
add_module() {
    local name=$1 path dep
    [ -n "${seen[$name]:-}" ] && return
    seen[$name]=1
    path=$(find "$kmods" -name "$name.ko" -o -name "${name//-/_}.ko" | head -n 1)
    if [ -z "$path" ]; then
        echo "build-guest: module $name not found in $kpkg" >&2
        exit 1
    fi
    for dep in $(strings -a "$path" | sed -n 's/^depends=//p' | tr ',' ' '); do
        add_module "$dep"
    done
    cp "$path" root/lib/modules/"$name".ko
    order+=("$name")
}
# crc-t10dif and crc64-rocksoft look up a crypto implementation at load
add_module crct10dif_generic
add_module crc64_rocksoft_generic
add_module nvme
add_module virtio_pci
add_module virtio_blk
add_module megaraid_sas
add_module sd_mod
printf '%s\n' "${order[@]}" > root/lib/modules/order

mkdir -p "$out"
cp kernel/boot/vmlinuz-"$kver" "$out/vmlinuz"
(cd root && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initramfs.gz"
echo "$stamp" > "$out/stamp"
echo "build-guest: $kpkg, modules: ${order[*]}"
