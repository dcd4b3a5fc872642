#!/bin/bash
# Under KVM, a bare-metal guest (harness/guest/bench-guest) rings the
# doorbells the raw test server offers through GET_REGION_IO_FDS and
# counts, from the server's statistics, which path every access took:
# - an ioeventfd write must be signalled by KVM itself: the server counts
#   every one on the eventfd and no REGION_WRITE (had QEMU seen the write,
#   it would have become one: under KVM QEMU never signals an ioeventfd
#   that KVM registered);
# - shadow ioeventfd and ioregionfd accesses reach their fds, and plain
#   register accesses the socket.
#
# usage: kvm-iofds.sh QEMU RAW_SERVER GUEST_ELF WORK_DIR [ACCEL]
#   ACCEL is kvm (default); tcg runs the same checks without KVM.
# Exits 0 on success, 77 (skip) when this machine cannot run KVM guests.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -uo pipefail

qemu=$(realpath "$1")
server_bin=$(realpath "$2")
elf=$(realpath "$3")
work=$(realpath -m "$4")
accel=${5:-kvm}

if [ "$accel" = kvm ] && [ ! -w /dev/kvm ]; then
    echo "SKIP: /dev/kvm is missing or not writable"
    exit 77
fi

rm -rf "$work"
mkdir -p "$work"
"$server_bin" --log "$work/server-events.log" \
    --iofd 0,ioeventfd,offset=0x100,size=4 \
    --iofd 0,shadow,offset=0x108,size=4 \
    --iofd 0,ioregionfd,offset=0x200,size=0x10 \
    --iofd 0,ioregionfd,offset=0x300,size=0x10,posted=1 \
    "$work/sock" 2>"$work/server.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 100); do
    [ -S "$work/sock" ] && break
    sleep 0.05
done

log=$work/guest.log
timeout -k 5 120 "$qemu" -M pc -accel "$accel" -m 128M -nodefaults \
    -display none -no-reboot -serial stdio \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$elf" \
    -append "mode=mmio n=2000 budget_ms=600 reps=1" \
    -device vfio-user-pci,socket="$work/sock" >"$log" 2>&1
rc=$?
if grep -q "failed to initialize kvm\|Could not access KVM" "$log"; then
    echo "SKIP: KVM is unusable here: $(grep -m1 -i kvm "$log")"
    exit 77
fi
# isa-debug-exit: the guest's 0 comes out as status 1
if [ $rc -ne 1 ] || ! grep -q '^BENCH-GUEST: done ok' "$log"; then
    echo "kvm-iofds: the guest did not finish (QEMU status $rc)"
    tail -n 20 "$log"
    exit 1
fi

# check ROW COUNTER: ROW's n accesses all moved COUNTER, and nothing else
status=0
check() {
    local line n k v want=$2 wrong=''

    line=$(grep -m1 "^BENCH-GUEST: row name=$1 " "$log")
    n=$(echo "$line" | sed -n 's/.* n=\([0-9]*\) .*/\1/p')
    for k in region_reads region_writes e0 e1 e2 e3; do
        v=$(echo "$line" | sed -n "s/.* $k=\\([0-9]*\\).*/\\1/p")
        if { [ "$k" = "$want" ] && [ "$v" != "$n" ]; } ||
           { [ "$k" != "$want" ] && [ "$v" != 0 ]; }; then
            wrong+=" $k=$v"
        fi
    done
    if [ -z "$n" ] || [ "$n" -eq 0 ] || [ -n "$wrong" ]; then
        echo "kvm-iofds: $1: $n accesses should all move $want:$wrong"
        status=1
    else
        echo "kvm-iofds: $accel: $1: $n accesses, all through $want"
    fi
}
check region_read region_reads
check region_write region_writes
check ioeventfd e0
check shadow_ioeventfd e1
check ioregionfd_read e2
check ioregionfd_write e3
exit $status
