# Sourced by the e2e scripts: QEMU's x-vfio-user-server exporting an
# emulated disk controller (NVMe, or virtio-blk) on a raw disk image, the
# other end of the guest's vfio-user-pci.
#
# SPDX-License-Identifier: GPL-2.0-or-later

# start_disk_server QEMU SOCK DISK LOG DEVICE [QEMU_ARG]...
# Starts the server in the background, its pid in $server, and waits for
# it to create SOCK.  DISK is drive drv0; DEVICE is the exported device's
# -device option but for its id ("nvme,drive=drv0,serial=..."); a disk
# behind a host adapter comes as more QEMU_ARGs.  On failure prints why and the
# server's log, and returns 1.  The server must not find SOCK there
# already: libvfio-user bind()s it without removing a stale one first.
start_disk_server() {
    local qemu=$1 sock=$2 disk=$3 log=$4 device=$5 st

    shift 5
    "$qemu" -machine x-remote,vfio-user=on -nodefaults -display none \
        -drive id=drv0,file="$disk",format=raw,if=none,cache=none \
        -device "$device",id=dev0 \
        -object '{"qom-type":"x-vfio-user-server","id":"vfu0","device":"dev0","socket":{"type":"unix","path":"'"$sock"'"}}' \
        "$@" >"$log" 2>&1 &
    server=$!
    for _ in $(seq 100); do
        [ -S "$sock" ] && return 0
        # exited already (a zombie until waited for: kill -0 would work)
        st=$(ps -o stat= -p "$server" 2>/dev/null) && [ "${st:0:1}" != Z ] ||
            break
        sleep 0.1
    done
    echo "e2e: the server did not create $sock"
    cat "$log"
    return 1
}

# start_nvme_server QEMU SOCK DISK LOG NVME_PROPS [QEMU_ARG]...
# The same for an NVMe controller; NVME_PROPS (",prop=value...", or empty)
# go to the nvme device.
start_nvme_server() {
    local qemu=$1 sock=$2 disk=$3 log=$4 props=$5

    shift 5
    start_disk_server "$qemu" "$sock" "$disk" "$log" \
        "nvme,drive=drv0,serial=vfio-user-e2e$props" "$@"
}

# x-vfio-user-server exports a virtio device only with iommu_platform=on
# (and so disable-legacy=on): without it, virtio's DMA goes to the
# server's own memory instead of through the vfio-user DMA mappings, and
# the first request never completes.
VIRTIO_BLK_SERVER_DEVICE=virtio-blk-pci,drive=drv0,iommu_platform=on,disable-legacy=on

# A SCSI host adapter (MegaRAID SAS 2108, MSI-X) with the disk on its bus
SCSI_SERVER_DEVICE=megasas-gen2
SCSI_SERVER_ARGS=(-device scsi-hd,drive=drv0,bus=dev0.0)
