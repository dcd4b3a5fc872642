#!/bin/bash
# End to end: QEMU as a vfio-user server exports an emulated NVMe
# controller (x-vfio-user-server); a second QEMU (TCG) boots the Debian
# kernel with vfio-user-pci on that socket, and the guest writes, drops its
# caches, reads back and checks a pattern, with MSI-X interrupts.
#
# usage: e2e-nvme.sh QEMU GUEST_DIR WORK_DIR [shared|unshared] [iommu]
#                    [virtio-blk|scsi]
#   shared      guest RAM is a memfd the server maps (default)
#   unshared    guest RAM has no fd: DMA travels as DMA_READ/DMA_WRITE
#   iommu       the guest has an intel-iommu (caching-mode=on)
#   virtio-blk  the server exports virtio-blk-pci instead, and the guest's
#               virtio_blk driver drives it
#   scsi        the server exports a SCSI host adapter (MegaRAID SAS 2108,
#               megasas-gen2) with the disk on its bus; the guest's
#               megaraid_sas and sd drivers drive it
# Exits 0 when the guest reports PASS.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -uo pipefail

qemu=$(realpath "$1")
guest=$(realpath "$2")
work=$(realpath -m "$3")
memory=${4:-shared}
iommu=''
device=nvme
for opt in "${@:5}"; do
    case $opt in
    iommu) iommu=iommu ;;
    virtio-blk|scsi) device=$opt ;;
    *) echo "e2e: unknown option $opt"; exit 2 ;;
    esac
done
timeout=${VFIO_USER_E2E_TIMEOUT:-240}

rm -rf "$work"
mkdir -p "$work"
sock=$work/nvme.sock
truncate -s 64M "$work/disk.img"

source "$(dirname "$(realpath "$0")")/disk-server.sh"
server=''
trap 'if [ -n "$server" ]; then kill $server 2>/dev/null; wait $server 2>/dev/null; fi' EXIT
if [ "$device" = virtio-blk ]; then
    start_disk_server "$qemu" "$sock" "$work/disk.img" "$work/server.log" \
        "$VIRTIO_BLK_SERVER_DEVICE" || exit 1
elif [ "$device" = scsi ]; then
    start_disk_server "$qemu" "$sock" "$work/disk.img" "$work/server.log" \
        "$SCSI_SERVER_DEVICE" "${SCSI_SERVER_ARGS[@]}" || exit 1
else
    start_nvme_server "$qemu" "$sock" "$work/disk.img" "$work/server.log" \
        "" || exit 1
fi

machine=q35
args=()
append="console=ttyS0 panic=-1"
[ "$device" = virtio-blk ] && append+=" e2e.disk=vda"
[ "$device" = scsi ] && append+=" e2e.disk=sda"
if [ "$memory" = shared ]; then
    machine+=",memory-backend=mem0"
    args+=(-object memory-backend-memfd,id=mem0,size=512M,share=on)
fi
if [ "$iommu" = iommu ]; then
    machine+=",kernel-irqchip=split"
    args+=(-device intel-iommu,caching-mode=on,intremap=on
           -trace "enable=vfio_user_dma_*map,file=$work/dma.trace")
    # Every page the guest maps becomes one DMA_MAP, and libvfio-user (the
    # server inside x-vfio-user-server) holds at most 16 DMA regions.  Keep
    # the guest within that: unmap at once (strict), few requests in
    # flight, two pages per request.
    append+=" intel_iommu=on iommu=strict nvme.io_queue_depth=4"
    append+=" e2e.max_sectors_kb=8"
fi

timeout -k 5 "$timeout" "$qemu" -M "$machine" -accel tcg -m 512M -smp 1 \
    -nodefaults -display none -no-reboot -serial stdio \
    -kernel "$guest/vmlinuz" -initrd "$guest/initramfs.gz" \
    -append "$append" "${args[@]}" \
    -device vfio-user-pci,socket="$sock",id=nvme-vfu ${VFIO_USER_E2E_QEMU_ARGS:-} \
    >"$work/guest.log" 2>&1
rc=$?

grep -E '^VFIO-USER-E2E|^e2e:|nvme|virtio|megaraid|sd 0' "$work/guest.log" | tail -n 12
if [ $rc -ne 0 ]; then
    echo "e2e: guest QEMU exited with $rc (124: timed out after ${timeout}s)"
    tail -n 20 "$work/guest.log"
fi
grep -q '^VFIO-USER-E2E: PASS' "$work/guest.log" || exit 1

if [ "$iommu" = iommu ]; then
    if grep -q 'cannot reach IOVA' "$work/guest.log"; then
        echo "e2e: the server refused mappings"
        exit 1
    fi
    # The guest's I/O must have gone through vIOMMU translations: mappings
    # of RAM (with its fd) whose IOVA is not the guest-physical address
    # behind it.  (Mappings without an fd, firmware's, carry offset 0.)
    awk '/vfio_user_dma_map/ {
             for (i = 1; i < NF; i++) v[$i] = $(i + 1)
             live[v["iova"]] = 1
             if (v["fd"] >= 0 && v["iova"] != v["offset"]) translated++
         }
         /vfio_user_dma_unmap/ {
             for (i = 1; i < NF; i++) v[$i] = $(i + 1)
             delete live[v["iova"]]
         }
         { n = length(live); if (n > peak) peak = n }
         END {
             printf "e2e: %d translated DMA_MAPs, at most %d mappings live\n",
                    translated, peak
             exit translated > 0 ? 0 : 1
         }' "$work/dma.trace"
fi
