#!/bin/bash
# End to end, a server that dies and comes back (issue 8, part 3, test 2):
# QEMU's x-vfio-user-server exports an NVMe controller on a disk image; a
# second QEMU (TCG) boots the Debian kernel with vfio-user-pci on that
# socket, reconnect-ms=200.  The guest (harness/guest/init,
# e2e.mode=reconnect) writes pattern A and reads it back, says so and
# waits.  Then:
# - the server is killed (SIGKILL): QEMU must emit VFIO_USER_DISCONNECTED;
# - a new server starts on the same socket path and disk image: QEMU must
#   reconnect, replay the device's state to it (config space, DMA mappings,
#   interrupts) and emit VFIO_USER_RECONNECTED;
# - the host tells the guest (second serial port) to write pattern B.  The
#   new server's controller starts disabled, so the nvme driver must time
#   out that I/O and reset the controller; then B and A (written before
#   the crash) must read back, in the guest and in the disk image.
#
# usage: e2e-nvme-reconnect.sh QEMU GUEST_DIR WORK_DIR
# Exits 0 on success, 77 when this machine lacks something it needs.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

qemu=$(realpath "$1")
guest=$(realpath "$2")
work=$(realpath -m "$3")

reconnect_ms=200
# The nvme driver's timeouts, in seconds (30 and 60 by default): the write
# after the restart waits out the I/O timeout, then an abort command the
# admin one, before the driver resets the controller
io_timeout=2
admin_timeout=2
# Limits for each phase, in seconds, within run-tests.sh's 180 for the
# whole: the guest boots and writes pattern A (about 10 s here under TCG);
# QEMU notices the dead server (EOF on the socket: at once); QEMU
# reconnects (a retry every reconnect_ms); the guest recovers, writes and
# reads (I/O timeout, abort timeout, reset: about 5 s)
boot_s=90
disconnect_s=10
reconnect_s=15
recover_s=45

t_start=$(date +%s.%N)

# The host side watches QMP events with python (as bql-wait.sh does)
if ! command -v python3 >/dev/null; then
    echo "SKIP: python3 is missing (it watches QEMU's QMP events)"
    exit 77
fi

rm -rf "$work"
mkdir -p "$work"
sock=$work/nvme.sock
guest_log=$work/guest.log
events=$work/events.log
truncate -s 64M "$work/disk.img"
# Host to guest, on the guest's ttyS1: QEMU reads ctl.in, writes ctl.out
mkfifo "$work/ctl.in" "$work/ctl.out"
: >"$guest_log"
: >"$events"

source "$(dirname "$(realpath "$0")")/disk-server.sh"

server=''
server1=''
server2=''
qemu_pid=''
watcher=''
# Everything we started, by pid (never by name: pkill -f server would
# also hit a ninja that builds samples/server)
cleanup() {
    local pid

    for pid in "$qemu_pid" "$watcher" "$server1" "$server2"; do
        if [ -n "$pid" ]; then
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT

# A child that exited stays a zombie until waited for: kill -0 still works
alive() {
    local st

    st=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${st:0:1}" != Z ]
}

failed() {
    echo "e2e-reconnect: FAIL: $*"
    echo "--- guest console (tail)"
    tail -n 30 "$guest_log" | sed '$a\' || true
    echo "--- client QEMU's stderr (tail)"
    tail -n 15 "$work/qemu.log" || true
    echo "--- client trace, vfio_user_* (tail, but for region accesses)"
    grep -v -E 'REGION_(READ|WRITE) ' "$work/client.trace" 2>/dev/null |
        tail -n 25 || true
    echo "--- QMP events"
    cat "$events"
    for f in "$work"/server-*.log; do
        echo "--- $(basename "$f") (tail)"
        tail -n 10 "$f" || true
    done
    exit 1
}

now() {
    date +%s.%N
}

# seconds between two times, to the millisecond
secs() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'
}

# wait_for FILE ERE SECONDS: until a line of FILE matches ERE; fails when
# the time is up or the client QEMU has exited
wait_for() {
    local file=$1 ere=$2 deadline

    deadline=$(($(date +%s) + $3))
    while ! grep -q -E "$ere" "$file"; do
        if ! alive "$qemu_pid"; then
            # a last look: it may have written the line and exited
            grep -q -E "$ere" "$file" && return 0
            failed "QEMU exited while waiting for '$ere' in $(basename "$file")"
        fi
        [ "$(date +%s)" -lt "$deadline" ] ||
            failed "no line like '$ere' in $(basename "$file") within $3 s"
        sleep 0.05
    done
}

# event_time NAME: the QMP timestamp of the first event NAME
event_time() {
    awk -v e="$1" '$2 == e { print $1; exit }' "$events"
}

# Both servers trace the config space writes and DMA mappings they get
# (the second one's, up to the reconnection, are the replay) and when the
# guest enables the controller, with timestamps.
server_trace=(-msg timestamp=on -trace "enable=vfu_cfg_write"
              -trace "enable=vfu_dma_*"
              -trace "enable=pci_nvme_mmio_start_success")
# dbcs=off: no shadow doorbells (Doorbell Buffer Config).  With them, the
# guest's first controller reset after the restart hangs the next I/O:
# Linux 6.1's nvme driver resubmits the requests it had in flight as soon
# as the I/O queues exist, before it sends Doorbell Buffer Config again;
# QEMU's nvme then sets the shadow doorbells but leaves the event indexes
# at 0, so the driver's later submissions skip the MMIO doorbell and the
# controller never sees them: another I/O timeout, another reset, with
# whatever is in flight then resubmitted too soon again, until the driver
# gives up.  The same happens with an nvme inside QEMU, no vfio-user at
# all, reset (from sysfs) with I/O in flight.
nvme_props=,dbcs=off
start_nvme_server "$qemu" "$sock" "$work/disk.img" "$work/server-1.log" \
    "$nvme_props" "${server_trace[@]}" -trace "file=$work/server-1.trace" ||
    failed "the first server did not start"
server1=$server

# Shared guest RAM: x-vfio-user-server ignores DMA regions without an fd.
# No x-no-mmap: the server offers no BAR to map (reconnect-ms refuses a
# device that has one mapped, see vfio-user.rst)
append="console=ttyS0 panic=-1 e2e.mode=reconnect"
append+=" nvme_core.io_timeout=$io_timeout nvme_core.admin_timeout=$admin_timeout"
"$qemu" -M q35,memory-backend=mem0 -accel tcg -m 512M -smp 1 \
    -object memory-backend-memfd,id=mem0,size=512M,share=on \
    -nodefaults -display none -no-reboot \
    -kernel "$guest/vmlinuz" -initrd "$guest/initramfs.gz" -append "$append" \
    -serial file:"$guest_log" \
    -chardev pipe,id=ctl,path="$work/ctl" -serial chardev:ctl \
    -qmp unix:"$work/qmp.sock",server=on,wait=off \
    -msg timestamp=on -trace "enable=vfio_user_*,file=$work/client.trace" \
    -device vfio-user-pci,socket="$sock",id=nvme-vfu,reconnect-ms=$reconnect_ms \
    2>"$work/qemu.log" &
qemu_pid=$!

# The QMP events, one a line: "SECONDS.MICROSECONDS NAME DATA", with
# QEMU's timestamps (wall clock, as date +%s.%N); "- CONNECTED" first
python3 - "$work/qmp.sock" "$events" <<'EOF' &
import json, socket, sys, time

qmp_path, out = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_UNIX)
for _ in range(300):
    try:
        sock.connect(qmp_path)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("qmp: cannot connect to " + qmp_path)
f = sock.makefile("rwb")
f.readline()                                    # the greeting
f.write(b'{"execute": "qmp_capabilities"}\n')
f.flush()
with open(out, "a") as log:
    for line in f:
        msg = json.loads(line)
        if "event" in msg:
            ts = msg["timestamp"]
            log.write(f'{ts["seconds"]}.{ts["microseconds"]:06d} '
                      f'{msg["event"]} {json.dumps(msg.get("data", {}))}\n')
        elif msg.get("return") == {}:
            log.write("- CONNECTED {}\n")
        log.flush()
EOF
watcher=$!

wait_for "$events" '^- CONNECTED' 30
wait_for "$guest_log" '^(e2e: ready|VFIO-USER-E2E:)' $boot_s
grep -q '^e2e: ready' "$guest_log" ||
    failed "the guest failed before the server was killed"
sed -n 's/^e2e: ready: /e2e-reconnect: guest: /p' "$guest_log"

# The server dies
t_kill=$(now)
kill -KILL "$server1"
wait "$server1" 2>/dev/null || true
server1=''
wait_for "$events" ' VFIO_USER_DISCONNECTED ' $disconnect_s
t_disconnected=$(event_time VFIO_USER_DISCONNECTED)
echo "e2e-reconnect: killed the server; $(grep -m1 ' VFIO_USER_DISCONNECTED ' "$events" | cut -d' ' -f2-)"

# A new one on the same socket and disk.  The dead one left its socket
# file behind, and libvfio-user does not bind over it: remove it, as a
# supervisor restarting the server would
rm -f "$sock"
t_restart=$(now)
start_nvme_server "$qemu" "$sock" "$work/disk.img" "$work/server-2.log" \
    "$nvme_props" "${server_trace[@]}" -trace "file=$work/server-2.trace" ||
    failed "the server could not be started again"
server2=$server
# when it bound its socket, i.e. could first be connected to
t_listening=$(stat -c %.9Y "$sock")
wait_for "$events" ' VFIO_USER_RECONNECTED ' $reconnect_s
t_reconnected=$(event_time VFIO_USER_RECONNECTED)
echo "e2e-reconnect: restarted the server; $(grep -m1 ' VFIO_USER_RECONNECTED ' "$events" | cut -d' ' -f2-)"
# Until the guest goes on, nothing but the replay reaches the new server
cp "$work/server-2.trace" "$work/replay.trace"

# The guest goes on: write B, through its driver's timeout and reset
t_go=$(now)
# (bounded: without QEMU to read the fifo, opening it would block for ever)
timeout 10 sh -c 'echo go >"$1"' sh "$work/ctl.in" ||
    failed "cannot write to the guest's ttyS1"
wait_for "$guest_log" '^VFIO-USER-E2E:' $recover_s
t_result=$(now)

echo "e2e-reconnect: what the guest's nvme driver said:"
sed -n 's/^e2e: dmesg: /    /p' "$guest_log"
grep -E '^e2e: (host says|pattern B)' "$guest_log" | sed 's/^e2e: /e2e-reconnect: guest: /'
result=$(grep -m1 '^VFIO-USER-E2E:' "$guest_log")
echo "e2e-reconnect: guest: $result"

# The guest powers off after its result: QEMU must exit, with status 0
for _ in $(seq 100); do
    alive "$qemu_pid" || break
    sleep 0.1
done
alive "$qemu_pid" && failed "QEMU did not exit within 10 s of the guest's poweroff"
qrc=0
wait "$qemu_pid" || qrc=$?
qemu_pid=''
[ $qrc -eq 0 ] || failed "QEMU exited with status $qrc"
wait "$watcher" || true
watcher=''

# The checks, each saying what it found
status=0
# check ok|fail TEXT...
check() {
    local verdict=$1

    shift
    if [ "$verdict" = ok ]; then
        echo "e2e-reconnect: ok: $*"
    else
        echo "e2e-reconnect: FAIL: $*"
        status=1
    fi
}

case $result in
*PASS*) check ok "the guest wrote and read back B after the restart, and A" ;;
*) check fail "the guest says: $result" ;;
esac

# The nvme driver must have reset the controller: the new server's is
# disabled, no write completes on it otherwise
resets=$(grep '^e2e: dmesg: ' "$guest_log" | grep -c -i 'reset') || true
if [ "$resets" -gt 0 ]; then
    check ok "the guest's nvme driver reset the controller (dmesg lines: $resets)"
else
    check fail "no controller reset in the guest's dmesg"
fi

# What the guest wrote is on the disk image itself
a=$(echo "$result" | sed -n 's/.* A \([0-9a-f]*\) .*/\1/p')
b=$(echo "$result" | sed -n 's/.* B \([0-9a-f]*\) .*/\1/p')
disk_a=$(dd if="$work/disk.img" bs=64k count=64 2>/dev/null | md5sum | cut -d' ' -f1)
disk_b=$(dd if="$work/disk.img" bs=64k skip=128 count=64 2>/dev/null | md5sum | cut -d' ' -f1)
if [ -n "$a" ] && [ "$a" = "$disk_a" ] && [ "$b" = "$disk_b" ]; then
    check ok "the disk image holds A $disk_a and B $disk_b"
else
    check fail "the disk image holds A $disk_a and B $disk_b, the guest wrote A '$a' B '$b'"
fi

# One outage, one event each way
n_disc=$(grep -c ' VFIO_USER_DISCONNECTED ' "$events") || true
n_rec=$(grep -c ' VFIO_USER_RECONNECTED ' "$events") || true
if [ "$n_disc" -eq 1 ] && [ "$n_rec" -eq 1 ]; then
    check ok "one VFIO_USER_DISCONNECTED, one VFIO_USER_RECONNECTED"
else
    check fail "$n_disc VFIO_USER_DISCONNECTED, $n_rec VFIO_USER_RECONNECTED events"
fi

# The replay reached the new server before the guest did anything: DMA
# mappings, and config writes of BAR0 (0x10) and the command register (0x4)
n_dma=$(grep -c 'vfu_dma_register' "$work/replay.trace") || true
if [ "$n_dma" -gt 0 ] &&
   grep -q -E 'vfu_cfg_write.* 0x10 <- ' "$work/replay.trace" &&
   grep -q -E 'vfu_cfg_write.* 0x4 <- ' "$work/replay.trace"; then
    check ok "the new server got $n_dma DMA mappings and the config space" \
        "($(grep -c vfu_cfg_write "$work/replay.trace") writes) before the guest went on"
else
    check fail "the replay did not reach the new server: $n_dma DMA mappings;" \
        "config writes: $(grep vfu_cfg_write "$work/replay.trace" | tr '\n' ';')"
fi

# The guest saw the controller again: its driver enabled the new server's
t_enabled=$(sed -n 's/^[0-9]*@\([0-9.]*\):pci_nvme_mmio_start_success.*/\1/p' \
    "$work/server-2.trace" | head -n 1)
if [ -n "$t_enabled" ]; then
    check ok "the guest's driver enabled the new server's controller" \
        "$(secs "$t_go" "$t_enabled") s after it went on"
else
    check fail "the guest's driver never enabled the new server's controller"
fi

# The new server goes when its client has: by itself, else told to
for _ in $(seq 50); do
    alive "$server2" || break
    sleep 0.1
done
if alive "$server2"; then
    echo "e2e-reconnect: the new server still runs after QEMU exited: stopping it"
    kill "$server2"
fi
wait "$server2" 2>/dev/null || true
server2=''

grep -E 'vfio-user' "$work/qemu.log" | sed 's/^/e2e-reconnect: QEMU said: /' || true
echo "e2e-reconnect: time to detect (kill to DISCONNECTED event): $(secs "$t_kill" "$t_disconnected") s"
echo "e2e-reconnect: time to reconnect (new server's socket bound to RECONNECTED event): $(secs "$t_listening" "$t_reconnected") s;" \
    "from its start: $(secs "$t_restart" "$t_reconnected") s"
echo "e2e-reconnect: outage (kill to RECONNECTED): $(secs "$t_kill" "$t_reconnected") s"
echo "e2e-reconnect: guest recovery (told to go on to its result line): $(secs "$t_go" "$t_result") s"
echo "e2e-reconnect: total run time: $(secs "$t_start" "$(now)") s"
if [ $status -ne 0 ]; then
    failed "see above"
fi
echo "e2e-reconnect: PASS"
