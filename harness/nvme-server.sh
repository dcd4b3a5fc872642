# Sourced by e2e-nvme.sh and e2e-nvme-reconnect.sh: QEMU's
# x-vfio-user-server exporting an emulated NVMe controller on a raw disk
# image, the other end of the guest's vfio-user-pci.
#
# SPDX-License-Identifier: GPL-2.0-or-later

# start_nvme_server QEMU SOCK DISK LOG NVME_PROPS [QEMU_ARG]...
# Starts the server in the background, its pid in $server, and waits for
# it to create SOCK.  NVME_PROPS (",prop=value...", or empty) go to the
# nvme device.  On failure prints why and the server's log, and
# returns 1.  The server must not find SOCK there already: libvfio-user
# bind()s it without removing a stale one first.
start_nvme_server() {
    local qemu=$1 sock=$2 disk=$3 log=$4 props=$5 st

    shift 5
    "$qemu" -machine x-remote,vfio-user=on -nodefaults -display none \
        -drive id=drv0,file="$disk",format=raw,if=none,cache=none \
        -device nvme,drive=drv0,serial=vfio-user-e2e,id=nvme0"$props" \
        -object '{"qom-type":"x-vfio-user-server","id":"vfu0","device":"nvme0","socket":{"type":"unix","path":"'"$sock"'"}}' \
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
