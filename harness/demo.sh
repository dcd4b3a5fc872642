#!/bin/bash
# make demo: a device that lives in another process, used by a real guest.
#
# One QEMU exports an emulated NVMe controller as a vfio-user server; a
# second QEMU boots a Linux guest with -device vfio-user-pci on that socket;
# the guest writes 4 MiB, drops its caches, reads them back and compares.
#
# usage: demo.sh QEMU GUEST_DIR WORK_DIR
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -uo pipefail

qemu=$1
guest=$2
work=$3
mkdir -p "$(dirname "$work")"

cat <<TEXT
vfio-user-pci demo
==================
Server:  $qemu -machine x-remote,vfio-user=on \\
             -device nvme,... -object x-vfio-user-server,socket=$work/nvme.sock
Guest:   $qemu -M q35 -accel tcg (shared memfd RAM) -kernel <Debian kernel> \\
             -device vfio-user-pci,socket=$work/nvme.sock
The guest loads Debian's nvme driver, writes a random 4 MiB pattern to
/dev/nvme0n1, drops its page cache, reads it back and compares checksums.

TEXT
start=$(date +%s.%N)
harness_dir=$(dirname "$(realpath "$0")")
"$harness_dir/e2e-nvme.sh" "$qemu" "$guest" "$work" shared >"$work.log" 2>&1
rc=$?
end=$(date +%s.%N)
echo
echo "What the guest saw (from its console, $work/guest.log):"
grep -E 'nvme|MSI|VFIO-USER-E2E|^e2e:' "$work/guest.log" | sed 's/^/  /'
printf '\nDone in %.1f s: %s.  Both QEMUs have exited.\n' \
    "$(echo "$end - $start" | bc)" "$([ $rc -eq 0 ] && echo PASS || echo FAIL)"
exit $rc
