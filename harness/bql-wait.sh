#!/bin/bash
# A vCPU that waits for a vfio-user server must not stop the rest of QEMU
# (issue 8, part 1).  A bare-metal guest on two vCPUs
# (harness/guest/bench-guest, mode=hammer) writes and reads a register of
# the raw test server for ever on the first vCPU (in BAR0, or with TARGET
# config in config space, which goes through hw/vfio's config code); the second never touches
# the device and prints a tick every 50 ms.  With TARGET ioregionfd, the
# server asks for the register through an ioregionfd (GET_REGION_IO_FDS),
# whose wait is iofd.c's rather than the socket's: QEMU's trace of the
# messages it sends must then show no BAR accesses on the socket.  With
# TARGET msix, the guest also masks and unmasks an MSI-X vector before
# each pair: hw/vfio's SET_IRQS from the vCPU must not wait for the server
# with the BQL held either.  TARGET msix-enable turns MSI-X off and on
# again instead, so that hw/vfio also tears the vectors down and wires
# INTx in their place (and reads the interrupt pin first).  Once both run, the server is
# stopped (SIGSTOP) for 30 s, so that the guest's access in flight waits
# the whole time.  Meanwhile:
# - QMP query-status, sent every 100 ms, must answer each time within
#   100 ms: the monitor runs in the main loop, under the BQL, so a wait
#   that holds the BQL stalls it;
# - the second vCPU's ticks must keep coming (at least 20): it needs the
#   BQL only for the serial port.
# Then the server continues, 5 s before the request would time out: QEMU
# must still run, the access complete with the right value and the guest
# go on, and QEMU quit when told.
#
# usage: bql-wait.sh QEMU RAW_SERVER GUEST_ELF WORK_DIR [ACCEL [TARGET]]
#   ACCEL is tcg (default) or kvm; TARGET bar (default), config,
#   ioregionfd, msix or msix-enable.
# Exits 0 on success, 77 (skip) when ACCEL is kvm and KVM is unusable.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

qemu=$(realpath "$1")
server_bin=$(realpath "$2")
elf=$(realpath "$3")
work=$(realpath -m "$4")
accel=${5:-tcg}
target=${6:-bar}
label=$accel/$target

# The probe window, and what each probe and the ticks must achieve
window_s=30
probe_ms=100
min_ticks=20
# A request outlives the window by 5 s: one wait covers all of it, and the
# server is back before the wait would end in a timeout and a disconnect
timeout_ms=$((window_s * 1000 + 5000))

if [ "$accel" = kvm ] && [ ! -w /dev/kvm ]; then
    echo "SKIP: /dev/kvm is missing or not writable"
    exit 77
fi
server_opts=()
trace_opts=()
case $target in
# The other vCPU also reads the device's MSI-X table at each tick
bar)
    hammer_opt=' probe=msix'
    server_opts=(--msix 1)
    ;;
config) hammer_opt=' hammer=config' ;;
ioregionfd)
    hammer_opt=' probe=msix'
    # The scratch register the guest hammers (BAR0 0x10)
    server_opts=(--iofd 0,ioregionfd,offset=0x10,size=8 --msix 1)
    trace_opts=(-d trace:vfio_user_send -D "$work/trace.log")
    ;;
msix|msix-enable)
    hammer_opt=" hammer=$target"
    # Stopped on a SET_IRQS, not wherever the guest happens to be
    server_opts=(--msix 1 --stop-on-set-irqs)
    trace_opts=(-d trace:vfio_user_send -D "$work/trace.log")
    ;;
*) echo "bql-wait: TARGET is bar, config, ioregionfd, msix or" \
       "msix-enable, not $target"
   exit 2 ;;
esac
case $accel in
# Both vCPUs must run at once: one thread each
tcg) accel_opt=tcg,thread=multi ;;
*) accel_opt=$accel ;;
esac

rm -rf "$work"
mkdir -p "$work"
serial=$work/serial.log
server=''
qemu_pid=''
# Everything we started, by pid; a stopped server would not see SIGTERM
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

# A child that exited stays a zombie until waited for: kill -0 still works
alive() {
    local st

    st=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${st:0:1}" != Z ]
}

# count WHAT: the guest's WHAT lines so far (0 before QEMU made the file)
count() {
    local n

    n=$(grep -c "^BENCH-GUEST: $1 " "$serial" 2>/dev/null) || true
    echo "${n:-0}"
}

failed() {
    echo "bql-wait: $label: $*"
    echo "--- QEMU's stderr (tail)"
    tail -n 20 "$work/qemu.log" || true
    echo "--- serial (tail)"
    # the guest may have been cut off mid-line
    tail -n 10 "$serial" | sed '$a\' || true
    exit 1
}

"$server_bin" "${server_opts[@]}" --log "$work/server-events.log" \
    "$work/sock" \
    2>"$work/server.log" &
server=$!
for _ in $(seq 100); do
    [ -S "$work/sock" ] && break
    sleep 0.05
done

# n=500: a hammer line every 500 write/read pairs, some every second
"$qemu" -M pc -accel "$accel_opt" -smp 2 -m 128M -nodefaults \
    -display none -no-reboot -serial file:"$serial" \
    -qmp unix:"$work/qmp",server=on,wait=off \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$elf" \
    -append "mode=hammer n=500$hammer_opt" \
    -device vfio-user-pci,socket="$work/sock",x-request-timeout-ms=$timeout_ms \
    "${trace_opts[@]}" 2>"$work/qemu.log" &
qemu_pid=$!

# Both vCPUs at work: hammer lines and ticks (a slow TCG start included)
for _ in $(seq 600); do
    if ! alive "$qemu_pid"; then
        if [ "$accel" = kvm ] &&
           grep -q "failed to initialize kvm\|Could not access KVM" \
               "$work/qemu.log"; then
            echo "SKIP: KVM is unusable here:" \
                "$(grep -m1 -i kvm "$work/qemu.log")"
            exit 77
        fi
        failed "QEMU exited before the guest ran"
    fi
    if [ "$(count hammer)" -ge 3 ] && [ "$(count tick)" -ge 3 ]; then
        break
    fi
    sleep 0.1
done
if [ "$(count hammer)" -lt 3 ] || [ "$(count tick)" -lt 3 ]; then
    failed "the guest's hammer loop and ticks did not start within 60 s"
fi

# The probes, from python: it stops the server itself, once connected to
# QMP, so that the window starts where the server stops
rc=0
python3 - "$work/qmp" "$serial" "$server" "$window_s" "$probe_ms" \
    "$min_ticks" "$label" "$target" <<'EOF' || rc=$?
import json, os, re, signal, socket, statistics, sys, time

qmp_path, serial, server = sys.argv[1], sys.argv[2], int(sys.argv[3])
window_s, probe_ms, min_ticks = map(int, sys.argv[4:7])
accel, target = sys.argv[7], sys.argv[8]
# However long the BQL is held, a reply is waited for at most this long
REPLY_CAP_S = window_s + 30
# The guest's accesses resume within this long once the server continues
RESUME_S = 5

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
    """Send NAME, return (its reply or None, seconds it took)"""
    t0 = time.monotonic()
    sock.sendall(json.dumps({"execute": name}).encode() + b"\n")
    return reply(t0 + REPLY_CAP_S), time.monotonic() - t0


def serial_lines(start):
    """Whole lines of the serial log from offset start, and where they end"""
    with open(serial, "rb") as s:
        s.seek(start)
        data = s.read()
    data = data[:data.rfind(b"\n") + 1]
    return data.decode(errors="replace").splitlines(), start + len(data)


def stopped(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def lines_of(lines, what):
    return [l for l in lines if l.startswith(f"BENCH-GUEST: {what} ")]


def main():
    sock.connect(qmp_path)
    reply(time.monotonic() + 10)                    # the greeting
    if command("qmp_capabilities")[0] is None:
        print("bql-wait: QMP does not answer")
        return 1

    # The window: the server stopped, a probe every probe_ms (at once
    # after a slow one, but no burst to catch up)
    pre, offset = serial_lines(0)
    if target in ("msix", "msix-enable"):
        # The server stops itself on the next SET_IRQS: the guest's
        # unmask is the request in flight
        os.kill(server, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not stopped(server):
            if time.monotonic() > deadline:
                print("bql-wait: the server did not stop on a SET_IRQS")
                return 1
            time.sleep(0.001)
    else:
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
    lines, offset = serial_lines(offset)
    os.kill(server, signal.SIGCONT)

    # The longest time, by the AP's TSC, between two of its ticks, from
    # the last one before the window to the first one after
    ticks = lines_of(lines, "tick")
    time.sleep(0.2)
    after = lines_of(serial_lines(offset)[0], "tick")
    tick_ms = [int(re.search(r" ms=(\d+)", t).group(1))
               for t in lines_of(pre, "tick")[-1:] + ticks + after[:1]]
    gap = max((b - a for a, b in zip(tick_ms, tick_ms[1:])), default=0)
    ms = [d * 1000 for d in lat]
    slow = [d for d in ms if d > probe_ms]
    print(f"bql-wait: {accel}: server stopped {window:.1f} s: "
          f"{len(lat)} probes, max {max(ms):.1f} ms, "
          f"median {statistics.median(ms):.1f} ms, "
          f"{len(slow)} over {probe_ms} ms; "
          f"{len(ticks)} ticks of the other vCPU "
          f"(longest gap {gap} ms of its TSC); "
          f"{len(lines_of(lines, 'hammer'))} hammer lines")
    ok = True
    if stalled:
        print(f"bql-wait: QMP did not answer within {REPLY_CAP_S} s")
        ok = False
    if slow:
        print(f"bql-wait: {len(slow)} of {len(lat)} query-status took over "
              f"{probe_ms} ms, the longest: " +
              ", ".join(f"{d:.0f}" for d in sorted(slow)[-5:]) + " ms")
        ok = False
    if len(ticks) < min_ticks:
        print(f"bql-wait: the other vCPU ticked {len(ticks)} times in the "
              f"window, fewer than {min_ticks}")
        ok = False
    # With probe=msix, the other vCPU read the device's MSI-X table at
    # each tick: the waiting access must not have kept it out
    probe_bad = [int(m.group(1)) for m in
                 (re.search(r" probe_bad=(\d+)", t) for t in ticks) if m]
    if probe_bad:
        print(f"bql-wait: the other vCPU's reads of the device's MSI-X "
              f"table that went wrong: {probe_bad[-1]} by the window's end")
        if probe_bad[-1]:
            ok = False

    # The server runs again, before the request timeout: QEMU must still
    # run, and the access that waited complete, with what was written
    r, dt = command("query-status")
    if r is None or r.get("return", {}).get("status") != "running":
        print(f"bql-wait: after the server continued, query-status: {r}")
        ok = False
    else:
        print(f"bql-wait: after the server continued: running "
              f"(query-status {dt * 1000:.1f} ms)")
    bad_before = re.search(r" bad=(\d+)", lines_of(pre, "hammer")[-1])
    t_cont = time.monotonic()
    hammers = []
    while not hammers and time.monotonic() - t_cont < RESUME_S:
        time.sleep(0.1)
        hammers = lines_of(serial_lines(offset)[0], "hammer")
    if not hammers:
        print(f"bql-wait: the guest's accesses did not resume within "
              f"{RESUME_S} s of the server continuing")
        ok = False
    else:
        line = hammers[0].removeprefix("BENCH-GUEST: hammer ")
        print(f"bql-wait: the guest's accesses resumed: {line}")
        if re.search(r" bad=(\d+)", hammers[0])[1] != bad_before[1]:
            print(f"bql-wait: reads gave what was not written, before the "
                  f"server stopped: {bad_before[1]}, after: {line}")
            ok = False
    for t, name, data in events:
        print(f"bql-wait: event {t - t_start:.1f} s into the window: "
              f"{name} {json.dumps(data)}")
    try:
        if command("quit")[0] is None:
            print("bql-wait: quit got no answer")
            ok = False
    except EOFError:
        pass                            # gone before its answer: fine
    return 0 if ok else 1


try:
    sys.exit(main())
except EOFError:
    print("bql-wait: QEMU closed the QMP connection: did it exit?")
    sys.exit(1)
EOF

if [ $rc -ne 0 ]; then
    failed "failed as said above"
fi
# memory.c's guard against re-entrant device I/O refused an access
if grep -q "Blocked re-entrant IO" "$work/qemu.log"; then
    failed "QEMU refused an access as re-entrant I/O:" \
        "$(grep -m1 "Blocked re-entrant IO" "$work/qemu.log")"
fi
# The guest's unmasks reached the server: one SET_IRQS (the vector's
# eventfd) and one unmask for every other pair
if [ "$target" = msix ] || [ "$target" = msix-enable ]; then
    pairs=$(grep "^BENCH-GUEST: hammer " "$serial" | tail -n1 |
            sed 's/.* pairs=\([0-9]*\).*/\1/')
    set_irqs=$(grep -c "SET_IRQS" "$work/trace.log") || true
    echo "bql-wait: $label: $pairs pairs, $set_irqs SET_IRQS"
    if [ "${pairs:-0}" -lt 1000 ] || [ "$set_irqs" -lt "$pairs" ]; then
        failed "the guest's unmasks did not reach the server"
    fi
fi
# Each time MSI-X went off, hw/vfio wired INTx's eventfd (index 0,
# ACTION_TRIGGER | DATA_EVENTFD) on the server
if [ "$target" = msix-enable ]; then
    intx=$(grep -c "set_irqs index 0 flags 0x24 start 0 count 1 fds 1" \
           "$work/server-events.log") || true
    echo "bql-wait: $label: INTx wired $intx times"
    if [ "$intx" -lt $((pairs / 2)) ]; then
        failed "MSI-X going off did not wire INTx on the server each time"
    fi
fi
# The guest's accesses took the ioregionfd: a handful of BAR accesses on
# the socket (the guest's set-up) against thousands of pairs
if [ "$target" = ioregionfd ]; then
    grep -q "iofds region 0 count 1 nfds 1" "$work/server-events.log" ||
        failed "the server did not hand out its ioregionfd"
    pairs=$(grep "^BENCH-GUEST: hammer " "$serial" | tail -n1 |
            sed 's/.* pairs=\([0-9]*\).*/\1/')
    on_socket=$(grep -c "REGION_\(READ\|WRITE\)" "$work/trace.log") || true
    echo "bql-wait: $label: $pairs pairs, $on_socket BAR accesses on the socket"
    if [ "${pairs:-0}" -lt 1000 ] || [ "$on_socket" -gt $((pairs / 100)) ]; then
        failed "the guest's accesses did not go through the ioregionfd"
    fi
fi
# quit answers before QEMU exits: give it a moment
for _ in $(seq 100); do
    alive "$qemu_pid" || break
    sleep 0.1
done
if alive "$qemu_pid"; then
    failed "QEMU did not exit within 10 s of quit"
fi
qrc=0
wait "$qemu_pid" || qrc=$?
qemu_pid=''
if [ $qrc -ne 0 ]; then
    failed "QEMU exited with status $qrc after quit"
fi
echo "bql-wait: $label: ok"
