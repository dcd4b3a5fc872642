#!/bin/bash
# Under KVM, a bare-metal guest has the test server raise MSI-X (or MSI)
# 1000 times and counts the interrupts.  The server's eventfd writes must
# reach the guest as KVM irqfds, without QEMU: QEMU's own MSI handler
# (trace vfio_msi_interrupt) must not run.  A second run with
# x-no-kvm-msix=on (x-no-kvm-msi=on), where QEMU relays every interrupt,
# shows the trace would have seen them.
#
# usage: kvm-msix.sh QEMU TEST_SERVER GUEST_ELF WORK_DIR [msix|msi]
#   GUEST_ELF is harness/guest/msix-guest built for that mode
# Exits 0 on success, 77 (skip) when this machine cannot run KVM guests.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -uo pipefail

qemu=$(realpath "$1")
server_bin=$(realpath "$2")
elf=$(realpath "$3")
work=$(realpath -m "$4")
mode=${5:-msix}
rounds=1000

if [ ! -w /dev/kvm ]; then
    echo "SKIP: /dev/kvm is missing or not writable"
    exit 77
fi

rm -rf "$work"
mkdir -p "$work"
"$server_bin" "$work/sock" 2>"$work/server.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 100); do
    [ -S "$work/sock" ] && break
    sleep 0.05
done

# run NAME EXTRA_DEVICE_PROPS: prints the guest's count of QEMU-relayed IRQs
run() {
    local log=$work/$1.log
    timeout -k 5 60 "$qemu" -M pc -accel kvm -m 128M -nodefaults \
        -display none -serial stdio \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$elf" \
        -device vfio-user-pci,socket="$work/sock"$2 \
        -trace vfio_msi_interrupt >"$log" 2>&1
    local rc=$?
    if grep -q "failed to initialize kvm\|Could not access KVM" "$log"; then
        echo "SKIP: KVM is unusable here: $(grep -m1 -i kvm "$log")"
        exit 77
    fi
    grep "^$mode-guest" "$log" >&2
    # isa-debug-exit: the guest's 0 comes out as status 1
    if [ $rc -ne 1 ] || ! grep -q "^$mode-guest: PASS" "$log"; then
        echo "kvm-msix: $1: the guest did not pass (QEMU status $rc)" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    grep -c 'vfio_msi_interrupt' "$log"
}

irqfd=$(run irqfd "")
relayed=$(run relayed ",x-no-kvm-$mode=on")
echo "kvm-msix: $mode, $rounds interrupts each; relayed by QEMU: $irqfd with irqfd, $relayed without"
[ "$irqfd" -eq 0 ] && [ "$relayed" -ge "$rounds" ]
