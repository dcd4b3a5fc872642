#!/bin/bash
# A device unplugged while a vCPU waits for its server in a config space
# access (issue 8: a guest's config access lets the BQL go, and nothing in
# unplug waits for it).  The bare-metal guest (harness/guest/bench-guest,
# mode=hammer hammer=config eject=1) reads the raw test server's config
# space for ever on the first vCPU; the server is stopped (SIGSTOP), and
# once that read has been stuck for a second the second vCPU ejects the
# device's slot through PIIX4's ACPI PCI hot-plug registers, as an ACPI
# guest does.  The server continues: the eject completes, and the read
# that waited meanwhile must end as on a removed device (QEMU must not
# crash taking it back); the device is gone from the QOM tree, QEMU keeps
# running, and quits when told.  (DEVICE_DELETED would come only once the
# device is finalized, after an RCU grace period, which this guest's
# vCPUs, looping without ever leaving TCG's execution loop, hold off.)
#
# usage: unplug-race.sh QEMU RAW_SERVER GUEST_ELF WORK_DIR
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

qemu=$(realpath "$1")
server_bin=$(realpath "$2")
elf=$(realpath "$3")
work=$(realpath -m "$4")
# Far beyond the test: nothing times out, every wait ends with a reply
timeout_ms=60000

rm -rf "$work"
mkdir -p "$work"
serial=$work/serial.log
server=''
qemu_pid=''
cleanup() {
    if [ -n "$qemu_pid" ]; then
        kill -KILL "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    if [ -n "$server" ]; then
        kill -CONT "$server" 2>/dev/null || true
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
}
trap cleanup EXIT

failed() {
    echo "unplug-race: FAIL: $*"
    echo "--- QEMU's stderr (tail)"
    tail -n 15 "$work/qemu.log" || true
    echo "--- serial (tail)"
    tail -n 8 "$serial" | sed '$a\' || true
    exit 1
}

"$server_bin" --log "$work/server-events.log" "$work/sock" \
    2>"$work/server.log" &
server=$!
for _ in $(seq 100); do
    [ -S "$work/sock" ] && break
    sleep 0.05
done

"$qemu" -M pc -accel tcg,thread=multi -smp 2 -m 128M -nodefaults \
    -display none -no-reboot -serial file:"$serial" \
    -qmp unix:"$work/qmp",server=on,wait=off \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$elf" \
    -append "mode=hammer n=500 hammer=config eject=1" \
    -device vfio-user-pci,id=vfu0,socket="$work/sock",x-request-timeout-ms=$timeout_ms \
    2>"$work/qemu.log" &
qemu_pid=$!

rc=0
python3 - "$work/qmp" "$serial" "$server" "$qemu_pid" <<'EOF' || rc=$?
import json, os, signal, socket, sys, time

qmp_path, serial, server, qemu = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sock = socket.socket(socket.AF_UNIX)
buf = b""


def alive():
    try:
        with open(f"/proc/{qemu}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def reply(deadline):
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


def command(name, wait=10, **args):
    msg = {"execute": name}
    if args:
        msg["arguments"] = args
    sock.sendall(json.dumps(msg).encode() + b"\n")
    return reply(time.monotonic() + wait)


def lines(what):
    with open(serial, errors="replace") as f:
        return [l.strip() for l in f if l.startswith(f"BENCH-GUEST: {what}")]


def wait_for(what, count, seconds):
    deadline = time.monotonic() + seconds
    while len(lines(what)) < count:
        if not alive():
            print(f"unplug-race: QEMU died waiting for '{what}'")
            return False
        if time.monotonic() > deadline:
            print(f"unplug-race: no '{what}' line within {seconds} s")
            return False
        time.sleep(0.1)
    return True


for _ in range(100):
    try:
        sock.connect(qmp_path)
        break
    except OSError:
        time.sleep(0.1)
reply(time.monotonic() + 10)
command("qmp_capabilities")
if not wait_for("hammer", 3, 60) or not wait_for("tick", 3, 10):
    sys.exit(1)

os.kill(server, signal.SIGSTOP)
if not wait_for("ejecting", 1, 15):
    sys.exit(1)
print("unplug-race: guest:", lines("ejecting")[0])
# The eject waits for the stopped server too, with the read: let it go on
time.sleep(1)
os.kill(server, signal.SIGCONT)
hammers = len(lines("hammer"))
if not wait_for("hammer", hammers + 2, 20):
    sys.exit(1)
time.sleep(0.5)
if not alive():
    print("unplug-race: QEMU died after the eject")
    sys.exit(1)
r = command("query-status")
ok = r is not None and r.get("return", {}).get("status") == "running"
peripheral = [p["name"] for p in
              command("qom-list", path="/machine/peripheral")["return"]]
print(f"unplug-race: QEMU after the eject: {r and r.get('return')}; "
      f"/machine/peripheral: {peripheral}; guest: {lines('hammer')[-1]}")
if not ok:
    sys.exit(1)
if "vfu0" in peripheral:
    print("unplug-race: the device is still there")
    sys.exit(1)
try:
    command("quit")
except EOFError:
    pass
EOF
[ $rc -eq 0 ] || failed "as said above"
for _ in $(seq 100); do
    kill -0 "$qemu_pid" 2>/dev/null || break
    st=$(ps -o stat= -p "$qemu_pid" 2>/dev/null) || break
    [ "${st:0:1}" = Z ] && break
    sleep 0.1
done
qrc=0
wait "$qemu_pid" || qrc=$?
qemu_pid=''
[ $qrc -eq 0 ] || failed "QEMU exited with status $qrc after quit"
echo "unplug-race: ok"
