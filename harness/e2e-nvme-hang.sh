#!/bin/bash
# End to end, a server that hangs under a real driver (issue 8, part 1, as
# the issue found it): QEMU's x-vfio-user-server exports an NVMe
# controller; a second QEMU (TCG) boots the Debian kernel with
# vfio-user-pci on that socket.  The guest (harness/guest/init,
# e2e.mode=hang) writes and reads the disk for ever, with a tick a second
# from another process.  Once its I/O runs, the server is stopped
# (SIGSTOP) for 30 s, so that the guest's access in flight waits, then
# times out (x-request-timeout-ms), and the nvme driver's own timeouts
# and controller reset (config space, MSI-X, BARs) meet a disconnected
# device.  Meanwhile:
# - QMP query-status, every 100 ms, must answer each time within 100 ms;
# - QEMU must report the server's loss once (VFIO_USER_DISCONNECTED);
# - the guest must keep running: its ticks come again after the timeout.
# Then QEMU must quit when told.
#
# usage: e2e-nvme-hang.sh QEMU GUEST_DIR WORK_DIR
# Exits 0 on success, 77 when this machine lacks something it needs.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

qemu=$(realpath "$1")
guest=$(realpath "$2")
work=$(realpath -m "$3")

window_s=30
probe_ms=100
# Well inside the window: the window sees the wait and what comes after
timeout_ms=10000
boot_s=120

if ! command -v python3 >/dev/null; then
    echo "SKIP: python3 is missing (it probes QEMU's monitor)"
    exit 77
fi

rm -rf "$work"
mkdir -p "$work"
sock=$work/nvme.sock
guest_log=$work/guest.log
truncate -s 64M "$work/disk.img"
: >"$guest_log"

source "$(dirname "$(realpath "$0")")/disk-server.sh"

server=''
qemu_pid=''
# Everything we started, by pid; a stopped server would not see SIGKILL's
# siblings, so it is continued first
cleanup() {
    if [ -n "$qemu_pid" ]; then
        kill -KILL "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    if [ -n "$server" ]; then
        kill -CONT "$server" 2>/dev/null || true
        kill -KILL "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
}
trap cleanup EXIT

alive() {
    local st

    st=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${st:0:1}" != Z ]
}

failed() {
    echo "e2e-hang: FAIL: $*"
    echo "--- guest console (tail)"
    tail -n 20 "$guest_log" | sed '$a\' || true
    echo "--- QEMU's stderr (tail)"
    tail -n 15 "$work/qemu.log" || true
    exit 1
}

start_nvme_server "$qemu" "$sock" "$work/disk.img" "$work/server.log" "" ||
    failed "the server did not start"

# The nvme driver's timeouts (30 and 60 s by default) made short, so that
# its controller reset comes inside the window
append="console=ttyS0 panic=-1 e2e.mode=hang"
append+=" nvme_core.io_timeout=2 nvme_core.admin_timeout=2"
"$qemu" -M q35,memory-backend=mem0 -accel tcg -m 512M -smp 1 \
    -object memory-backend-memfd,id=mem0,size=512M,share=on \
    -nodefaults -display none -no-reboot \
    -kernel "$guest/vmlinuz" -initrd "$guest/initramfs.gz" -append "$append" \
    -serial file:"$guest_log" \
    -qmp unix:"$work/qmp.sock",server=on,wait=off \
    -device vfio-user-pci,socket="$sock",id=nvme-vfu,x-request-timeout-ms=$timeout_ms \
    2>"$work/qemu.log" &
qemu_pid=$!

deadline=$(($(date +%s) + boot_s))
while [ "$(grep -c '^e2e: io ' "$guest_log")" -lt 3 ]; do
    alive "$qemu_pid" || failed "QEMU exited before the guest's I/O ran"
    grep -q '^VFIO-USER-E2E:' "$guest_log" &&
        failed "the guest gave up: $(grep -m1 '^VFIO-USER-E2E:' "$guest_log")"
    [ "$(date +%s)" -lt "$deadline" ] ||
        failed "the guest's I/O loop did not run within $boot_s s"
    sleep 0.2
done

rc=0
python3 - "$work/qmp.sock" "$guest_log" "$server" "$window_s" "$probe_ms" \
    "$timeout_ms" <<'EOF' || rc=$?
import json, os, re, signal, socket, statistics, sys, time

qmp_path, guest_log, server = sys.argv[1], sys.argv[2], int(sys.argv[3])
window_s, probe_ms, timeout_ms = map(int, sys.argv[4:7])
REPLY_CAP_S = window_s + 30
sock = socket.socket(socket.AF_UNIX)
buf = b""
events = []


def reply(deadline):
    """The next reply, None by the deadline; events on the way are kept"""
    global buf
    while True:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                raise EOFError
            buf += data
        line, buf = buf.split(b"\n", 1)
        msg = json.loads(line)
        if "event" not in msg:
            return msg
        events.append((time.monotonic(), msg["event"], msg.get("data", {})))


def command(name):
    t0 = time.monotonic()
    sock.sendall(json.dumps({"execute": name}).encode() + b"\n")
    return reply(t0 + REPLY_CAP_S), time.monotonic() - t0


def guest_lines(what):
    with open(guest_log, errors="replace") as f:
        return [l for l in f if l.startswith(f"e2e: {what} ")]


def main():
    sock.connect(qmp_path)
    reply(time.monotonic() + 10)
    if command("qmp_capabilities")[0] is None:
        print("e2e-hang: QMP does not answer")
        return 1

    ios_before = len(guest_lines("io"))
    os.kill(server, signal.SIGSTOP)
    t_start = time.monotonic()
    lat = []
    stalled = False
    while time.monotonic() - t_start < window_s:
        r, dt = command("query-status")
        lat.append(dt)
        if r is None:
            stalled = True
            break
        time.sleep(max(probe_ms / 1000 - dt, 0))
    window = time.monotonic() - t_start
    ticks_window = len(guest_lines("tick"))
    ms = [d * 1000 for d in lat]
    slow = [d for d in ms if d > probe_ms]
    print(f"e2e-hang: server stopped {window:.1f} s: {len(lat)} probes, "
          f"max {max(ms):.1f} ms, median {statistics.median(ms):.1f} ms, "
          f"{len(slow)} over {probe_ms} ms")
    ok = True
    if stalled:
        print(f"e2e-hang: QMP did not answer within {REPLY_CAP_S} s")
        ok = False
    if slow:
        print(f"e2e-hang: {len(slow)} of {len(lat)} query-status took over "
              f"{probe_ms} ms, the longest: " +
              ", ".join(f"{d:.0f}" for d in sorted(slow)[-5:]) + " ms")
        ok = False

    lost = [(t, d) for t, n, d in events if n == "VFIO_USER_DISCONNECTED"]
    for t, d in lost:
        print(f"e2e-hang: {t - t_start:.1f} s into the window: "
              f"VFIO_USER_DISCONNECTED {json.dumps(d)}")
    if len(lost) != 1:
        print(f"e2e-hang: {len(lost)} VFIO_USER_DISCONNECTED events, not 1")
        ok = False
    elif not re.search(f"within {timeout_ms} ms", lost[0][1].get("reason", "")):
        print("e2e-hang: the event's reason does not name the timeout")
        ok = False

    # The guest runs on: ticks after the disconnection, and its driver's
    # view of a controller that reads all-ones
    time.sleep(3)
    ticks = guest_lines("tick")
    print(f"e2e-hang: guest: {len(guest_lines('io')) - ios_before} I/O "
          f"rounds and {len(ticks) - ticks_window} ticks after the window, "
          f"{len(ticks)} ticks in all")
    if len(ticks) <= ticks_window:
        print("e2e-hang: the guest stopped ticking")
        ok = False

    os.kill(server, signal.SIGCONT)
    r, dt = command("query-status")
    if r is None or r.get("return", {}).get("status") != "running":
        print(f"e2e-hang: query-status after the window: {r}")
        ok = False
    try:
        if command("quit")[0] is None:
            print("e2e-hang: quit got no answer")
            ok = False
    except EOFError:
        pass
    return 0 if ok else 1


try:
    sys.exit(main())
except EOFError:
    print("e2e-hang: QEMU closed the QMP connection: did it exit?")
    sys.exit(1)
EOF
[ $rc -eq 0 ] || failed "as said above"
for _ in $(seq 100); do
    alive "$qemu_pid" || break
    sleep 0.1
done
alive "$qemu_pid" && failed "QEMU did not exit within 10 s of quit"
qrc=0
wait "$qemu_pid" || qrc=$?
qemu_pid=''
[ $qrc -eq 0 ] || failed "QEMU exited with status $qrc after quit"
echo "e2e-hang: QEMU's report of the loss:"
grep -i "vfio-user\|nvme-vfu" "$work/qemu.log" | head -n 5 | sed 's/^/    /'
echo "e2e-hang: ok"
