#!/bin/bash
# Live migration of a running VM whose guest drives a vfio-user device
# (issue 11): the bare-metal guest (harness/guest/bench-guest,
# mode=migrate) keeps writing and reading registers of the raw test
# server (--migration stop-copy --dma-logging --msix 1) and has it raise
# MSI-X vector 0 once per round, waiting for each interrupt.  Two QEMUs,
# each with a server of its own; the VM migrates from the first to the
# second while the guest runs.  Then:
# - the migration completed, the destination runs and the source is
#   paused (postmigrate);
# - the destination's server was loaded with the device's state
#   (RESUMING, then STOP to RUNNING: its log);
# - on the destination the guest goes on: rounds keep coming, every read
#   gives what was written (on the source, and the register written once
#   before migrating), and each round's interrupt arrives, as the
#   destination wired them (under KVM, irqfds; under TCG, QEMU relays).
#   An interrupt raised as the VM stopped may be lost on the way (the
#   guest asks again after 1 s): at most three such re-asks in all.
#
# usage: migrate-guest.sh QEMU RAW_SERVER GUEST_ELF WORK_DIR [ACCEL]
#   ACCEL is tcg (default) or kvm.
# Exits 0 on success, 77 (skip) when ACCEL is kvm and KVM is unusable.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

qemu=$(realpath "$1")
server_bin=$(realpath "$2")
elf=$(realpath "$3")
work=$(realpath -m "$4")
accel=${5:-tcg}

if [ "$accel" = kvm ] && [ ! -w /dev/kvm ]; then
    echo "SKIP: /dev/kvm is missing or not writable"
    exit 77
fi

rm -rf "$work"
mkdir -p "$work"
pids=()
cleanup() {
    local p

    for p in "${pids[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

failed() {
    local side

    echo "migrate-guest: $accel: $*"
    for side in src dst; do
        echo "--- $side: QEMU's stderr (tail)"
        tail -n 10 "$work/$side.qemu.log" 2>/dev/null || true
        echo "--- $side: server log (tail)"
        tail -n 10 "$work/$side.server.log" 2>/dev/null || true
        echo "--- $side: serial (tail)"
        tail -n 5 "$work/$side.serial" 2>/dev/null | sed '$a\' || true
    done
    exit 1
}

for side in src dst; do
    "$server_bin" --migration stop-copy --dma-logging --msix 1 \
        --log "$work/$side.server.log" "$work/$side.sock" \
        2>"$work/$side.server.err" &
    pids+=($!)
done
for side in src dst; do
    for _ in $(seq 100); do
        [ -S "$work/$side.sock" ] && break
        sleep 0.05
    done
    [ -S "$work/$side.sock" ] || failed "the $side server did not start"
done

for side in src dst; do
    incoming=()
    if [ $side = dst ]; then
        incoming=(-incoming defer)
    fi
    "$qemu" -M pc -accel "$accel" -m 128M -nodefaults -display none \
        -no-reboot -serial file:"$work/$side.serial" \
        -qmp unix:"$work/$side.qmp",server=on,wait=off \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$elf" \
        -append "mode=migrate n=50" \
        -device vfio-user-pci,socket="$work/$side.sock",id=vu0 \
        "${incoming[@]}" 2>"$work/$side.qemu.log" &
    pids+=($!)
done

rc=0
python3 - "$work" "$accel" "$(dirname "$(realpath "$0")")" <<'EOF' || rc=$?
import re, sys, time

work, accel = sys.argv[1], sys.argv[2]
sys.path.insert(0, sys.argv[3])
from qmp_client import QMP  # noqa: E402

# One lost at the switch-over, or a host that stalled the VM past the
# guest's patience (1 s), is no fault; more is
MAX_REFIRES = 3


def rounds(side):
    """The guest's migrate lines on SIDE's serial port, as dicts"""
    try:
        with open(f"{work}/{side}.serial", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    out = []
    # The guest writes a byte at a time: a last line may be half there
    for line in text[:text.rfind("\n") + 1].splitlines():
        if line.startswith("BENCH-GUEST: migrate "):
            out.append({k: int(v) for k, v in
                        re.findall(r"(\w+)=(\d+)", line)})
    return out


def wait_rounds(side, count, after, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [r for r in rounds(side) if r["rounds"] > after]
        if len(got) >= count:
            return got
        time.sleep(0.1)
    return [r for r in rounds(side) if r["rounds"] > after]


def fail(why):
    print(f"migrate-guest: {accel}: {why}")
    sys.exit(1)


src, dst = QMP(f"{work}/src.qmp"), QMP(f"{work}/dst.qmp")
before = wait_rounds("src", 3, 0, 120)
if len(before) < 3:
    fail(f"the guest did not get going on the source: {before}")
last = before[-1]
if last["bad"]:
    fail(f"the guest saw trouble before migrating: {last}")

r = dst.cmd("migrate-incoming", uri=f"unix:{work}/mig.sock")
if "error" in r:
    fail(f"migrate-incoming: {r}")
t0 = time.monotonic()
r = src.cmd("migrate", uri=f"unix:{work}/mig.sock")
if "error" in r:
    fail(f"migrate: {r}")
status = None
while time.monotonic() - t0 < 120:
    status = src.cmd("query-migrate")["return"]
    if status.get("status") in ("completed", "failed", "cancelled"):
        break
    time.sleep(0.05)
if status.get("status") != "completed":
    fail(f"migration did not complete: {status}")
print(f"migrate-guest: {accel}: migrated in {status.get('total-time')} ms, "
      f"downtime {status.get('downtime')} ms")

# Both QEMUs change their run state a moment after "completed"
for side, q, want in (("source", src, "postmigrate"),
                      ("destination", dst, "running")):
    deadline = time.monotonic() + 10
    while True:
        got = q.cmd("query-status")["return"]["status"]
        if got == want:
            break
        if time.monotonic() > deadline:
            fail(f"the {side} is {got}, not {want}")
        time.sleep(0.05)

# Where the source stopped, the destination goes on
src_last = rounds("src")[-1]
after = wait_rounds("dst", 5, src_last["rounds"], 60)
if len(after) < 5:
    fail(f"the guest did not go on on the destination: {after}")
first, end = after[0], after[-1]
print(f"migrate-guest: {accel}: source stopped after round "
      f"{src_last['rounds']}; the destination ran rounds "
      f"{first['rounds']}..{end['rounds']}, bad {end['bad']}, "
      f"{end['irqs']} interrupts, {end['refires']} asked again")
if end["bad"]:
    fail("reads on the destination gave what was not written")
# Each round waits for its interrupt: without them no round would end;
# with some lost, the guest would ask again over and over
if end["refires"] > MAX_REFIRES:
    fail(f"{end['refires']} interrupts had to be asked for again")

for side, q in (("src", src), ("dst", dst)):
    q.cmd("quit")
EOF
[ $rc -eq 0 ] || failed "failed as said above"

# The destination's server took the state the source's gave
grep -q "migration: .* -> 4" "$work/dst.server.log" ||
    failed "the destination's server was never RESUMING"
awk '/migration: .* -> 4/ { resumed = 1 }
     resumed && /migration: 1 -> 2/ { ran = 1 }
     END { exit !ran }' "$work/dst.server.log" ||
    failed "the destination's server never ran after RESUMING"
grep -q "migration: .* -> 3" "$work/src.server.log" ||
    failed "the source's server was never in STOP_COPY"
echo "migrate-guest: $accel: ok"
