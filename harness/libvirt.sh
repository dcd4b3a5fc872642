#!/bin/bash
# vfio-user-pci under libvirt, as the docs tell users to run it (issue 9,
# part 1).  The domain XML is taken from docs/system/devices/vfio-user.rst
# itself; only its paths, its name and (without KVM) its type are replaced,
# each of which must be found exactly once, so the document cannot drift
# from what runs here.  With QEMU's x-vfio-user-server exporting NVMe:
# - the documented domain boots the test guest (harness/guest/init), which
#   writes, reads back and checks a pattern with MSI-X; QEMU runs as the
#   user libvirt gives it, and reaches the socket as the docs say;
# - the same domain, destroyed while the guest runs, leaves no QEMU
#   process, no domain state in libvirt and no fd in libvirtd behind;
# - a domain whose server is missing fails to start, libvirt reports
#   QEMU's error naming the socket, and nothing is left running;
# - so does one whose socket QEMU's user may not write to (the docs' first
#   requirement): "Permission denied".
# libvirtd and virtlogd are started here when they are not running (no
# systemd needed), and stopped again at the end.
#
# usage: libvirt.sh QEMU GUEST_DIR WORK_DIR DOC
# Exits 0 on success, 77 when this machine cannot run libvirt.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

qemu=$(realpath "$1")
guest=$(realpath "$2")
work=$(realpath -m "$3")
doc=$(realpath "$4")
uri=qemu:///system
boot_s=240

for tool in virsh libvirtd virtlogd python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "SKIP: $tool is missing (make deps installs libvirt)"
        exit 77
    fi
done
if [ "$(id -u)" != 0 ]; then
    echo "SKIP: libvirt's system instance needs root"
    exit 77
fi

rm -rf "$work"
mkdir -p "$work/run"
# QEMU runs as libvirt's user: it must reach what it opens by path
chmod 755 "$work" "$work/run"
truncate -s 64M "$work/disk.img"
cp "$guest/vmlinuz" "$guest/initramfs.gz" "$work/"

source "$(dirname "$(realpath "$0")")/disk-server.sh"

started=()
server=''
servers=()
domains=()
cleanup() {
    local d pid

    for d in "${domains[@]}"; do
        virsh -c "$uri" destroy "$d" >/dev/null 2>&1 || true
    done
    for pid in "${servers[@]}" $server; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for pid in "${started[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

failed() {
    echo "libvirt: FAIL: $*"
    for f in "$work"/*.console; do
        [ -f "$f" ] || continue
        echo "--- $(basename "$f") (tail)"
        tail -n 15 "$f" | sed '$a\'
    done
    for f in /var/log/libvirt/qemu/vfio-user-test-*.log; do
        [ -f "$f" ] || continue
        echo "--- $f (tail)"
        tail -n 10 "$f"
    done
    exit 1
}

# The daemons, unless already running (pid files in their default place)
start_daemon() {
    local name=$1 pid

    if pgrep -x "$name" >/dev/null; then
        echo "libvirt: $name already runs"
        return
    fi
    "$name" -d || failed "cannot start $name"
    for _ in $(seq 50); do
        pid=$(pgrep -x "$name") && break
        sleep 0.1
    done
    [ -n "$pid" ] || failed "$name did not stay up"
    started+=("$pid")
    echo "libvirt: started $name (pid $pid)"
}
start_daemon virtlogd
start_daemon libvirtd
for _ in $(seq 100); do
    virsh -c "$uri" list >/dev/null 2>&1 && break
    sleep 0.1
done
virsh -c "$uri" list >/dev/null || failed "libvirtd does not answer on $uri"
echo "libvirt: $(libvirtd --version)"

# The documented domain: the literal block that holds "<domain"
python3 - "$doc" >"$work/doc-domain.xml" <<'EOF'
import sys

lines = open(sys.argv[1]).read().splitlines()
start = next(i for i, l in enumerate(lines) if l.startswith("  <domain "))
end = next(i for i in range(start, len(lines)) if lines[i] == "  </domain>")
print("\n".join(l[2:] for l in lines[start:end + 1]))
EOF

# A stock Debian kernel does not boot under this host's KVM (facts.md),
# and some machines have none: the guest runs under TCG
# domain_xml NAME SOCKET CONSOLE [GUEST_ARGS]
domain_xml() {
    local name=$1 sock=$2 console=$3 args=${4:-}

    python3 - "$work/doc-domain.xml" "$name" "$sock" "$console" "$qemu" \
        "$work/vmlinuz" "$work/initramfs.gz" "$args" <<'EOF'
import sys

doc, name, sock, console, qemu, kernel, initrd, args = sys.argv[1:]
xml = open(doc).read()
for old, new in [
        ("<domain type='kvm'", "<domain type='qemu'"),
        ("<name>vfio-user-guest</name>", f"<name>{name}</name>"),
        ("/var/lib/libvirt/boot/vmlinuz", kernel),
        ("/var/lib/libvirt/boot/initrd.img", initrd),
        ("<cmdline>console=ttyS0</cmdline>",
         f"<cmdline>console=ttyS0 panic=-1{args}</cmdline>"),
        ("/usr/bin/qemu-system-x86_64", qemu),
        ("/var/log/libvirt/qemu/vfio-user-guest.console", console),
        ("/run/vfio-user/nvme.sock", sock)]:
    if xml.count(old) != 1:
        sys.exit(f"libvirt: the documented domain has {xml.count(old)} "
                 f"of {old!r}, not one: docs and test disagree")
    xml = xml.replace(old, new)
print(xml)
EOF
}

# qemu_pid NAME: the pid of the domain's QEMU, from libvirt's pid file
qemu_pid() {
    cat "/run/libvirt/qemu/$1.pid" 2>/dev/null
}

# wait_gone NAME SECONDS: until libvirt no longer lists the domain
wait_gone() {
    local deadline=$(($(date +%s) + $2))

    while virsh -c "$uri" domid "$1" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] ||
            failed "domain $1 still runs after $2 s"
        sleep 0.5
    done
}

fd_count() {
    ls "/proc/$1/fd" | wc -l
}

# A server for one domain: x-vfio-user-server exits when its client goes
# (the x-remote machine's auto-shutdown), and leaves its socket behind
server_start() {
    rm -f "$work/run/nvme.sock"
    start_nvme_server "$qemu" "$work/run/nvme.sock" "$work/disk.img" \
        "$work/server-$1.log" "" || failed "the server did not start"
    servers+=("$server")
    # As the docs say: the socket to QEMU's group, which may write to it
    chgrp kvm "$work/run/nvme.sock"
    chmod g+rw "$work/run/nvme.sock"
}

# server_gone SECONDS: whether the server exited (its client went) in time
server_gone() {
    local st

    for _ in $(seq $(($1 * 10))); do
        st=$(ps -o stat= -p "$server" 2>/dev/null) && [ "${st:0:1}" != Z ] ||
            { wait "$server" 2>/dev/null || true; server=''; return 0; }
        sleep 0.1
    done
    return 1
}

# A server whose client never came: it does not go by itself
server_stop() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=''
}

libvirtd_pid=$(pgrep -x libvirtd)
libvirtd_fds=$(fd_count "$libvirtd_pid")

# 1. The documented domain, to the guest's verdict
server_start io
name=vfio-user-test-$$-io
domains+=("$name")
domain_xml "$name" "$work/run/nvme.sock" "$work/io.console" >"$work/io.xml" ||
    failed "cannot make the domain from the docs"
virsh -c "$uri" create "$work/io.xml" >"$work/io.virsh" 2>&1 ||
    failed "virsh create: $(cat "$work/io.virsh")"
pid=$(qemu_pid "$name")
user=$(ps -o user= -p "$pid" 2>/dev/null || echo '?')
echo "libvirt: $name runs: QEMU pid $pid as user $user"
wait_gone "$name" "$boot_s"
result=$(grep -m1 '^VFIO-USER-E2E:' "$work/io.console" || true)
echo "libvirt: guest: ${result:-no result}"
case $result in
*PASS*) ;;
*) failed "the guest under libvirt did not pass" ;;
esac
[ "$user" = libvirt-qemu ] ||
    failed "QEMU ran as '$user', not libvirt-qemu: the socket check proved nothing"
server_gone 10 || failed "the server still runs 10 s after its client's end"

# 2. The same, destroyed while the guest drives the device
server_start destroy
name=vfio-user-test-$$-destroy
domains+=("$name")
# The guest's I/O loop (e2e.mode=hang) never ends by itself
domain_xml "$name" "$work/run/nvme.sock" "$work/destroy.console" \
    " e2e.mode=hang" >"$work/destroy.xml"
virsh -c "$uri" create "$work/destroy.xml" >"$work/destroy.virsh" 2>&1 ||
    failed "virsh create: $(cat "$work/destroy.virsh")"
pid=$(qemu_pid "$name")
deadline=$(($(date +%s) + boot_s))
until grep -q '^e2e: io 3 ' "$work/destroy.console" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] ||
        failed "the guest's I/O did not run within $boot_s s"
    sleep 0.2
done
virsh -c "$uri" destroy "$name" >/dev/null || failed "virsh destroy failed"
left=''
kill -0 "$pid" 2>/dev/null && left+=" QEMU (pid $pid) still runs;"
[ -e "/run/libvirt/qemu/$name.pid" ] && left+=" its pid file is there;"
ls -d /var/lib/libvirt/qemu/domain-*"$name" >/dev/null 2>&1 &&
    left+=" its state directory is there;"
now_fds=$(fd_count "$libvirtd_pid")
[ "$now_fds" -le "$libvirtd_fds" ] ||
    left+=" libvirtd holds $now_fds fds, $libvirtd_fds before;"
server_gone 10 || left+=" the server still has its client;"
[ -z "$left" ] || failed "after virsh destroy:$left"
echo "libvirt: destroyed $name while its guest ran: no QEMU, no state," \
    "libvirtd at $now_fds fds ($libvirtd_fds before), the server saw" \
    "its client go"

# must_fail CASE SOCKET PATTERN WHAT: a domain on SOCKET must not start;
# libvirt's error (left in $msg) must match the glob PATTERN, and nothing
# of the domain may be left running
must_fail() {
    local case=$1 sock=$2 pattern=$3 what=$4 name

    name=vfio-user-test-$$-$case
    domains+=("$name")
    domain_xml "$name" "$sock" "$work/$case.console" >"$work/$case.xml"
    if virsh -c "$uri" create "$work/$case.xml" >"$work/$case.virsh" 2>&1
    then
        failed "$case: the domain started"
    fi
    msg=$(tr '\n' ' ' <"$work/$case.virsh")
    [[ $msg == $pattern ]] || failed "$case: libvirt's error is not $what: $msg"
    if virsh -c "$uri" domid "$name" >/dev/null 2>&1 ||
       pgrep -f "guest=$name," >/dev/null; then
        failed "something of $name is left running"
    fi
}

# 3. No server on the socket: QEMU's error, through libvirt
must_fail missing "$work/run/missing.sock" "*$work/run/missing.sock*" \
    "one naming the socket"
echo "libvirt: without a server: $msg"

# 4. A socket as the server made it (root's, 0755): QEMU may not connect
server_start denied
chmod g-w,o-w "$work/run/nvme.sock"
chgrp root "$work/run/nvme.sock"
must_fail denied "$work/run/nvme.sock" \
    "*$work/run/nvme.sock*Permission denied*" \
    "QEMU's permission error on the socket"
echo "libvirt: a socket only root may write to: ${msg##*vfio-user }"
server_stop

# 5. Hot-plug by the docs' recipe: its root port XML and QMP commands
python3 - "$doc" "$work/hotplug" <<'PYEOF' || failed "no hot-plug recipe in the docs"
import json, sys

lines = open(sys.argv[1]).read().splitlines()
start = next(i for i, l in enumerate(lines)
             if l.strip().startswith("<controller type='pci' "
                                     "model='pcie-root-port'"))
end = next(i for i in range(start, len(lines))
           if lines[i].strip() == "</controller>")
open(sys.argv[2] + ".controller", "w").write(
    "\n".join(lines[start:end + 1]) + "\n")
cmds = [l.split("'")[1] for l in lines
        if l.startswith("  virsh qemu-monitor-command DOMAIN ")]
names = [json.loads(c)["execute"] for c in cmds]
if names != ["getfd", "device_add", "device_del"]:
    sys.exit(f"the docs' hot-plug commands are {names}")
# The <qemu:commandline> that turns ACPI hot-plug off: native PCIe
knob = next(i for i, l in enumerate(lines)
            if "acpi-pci-hotplug-with-bridge-support=off" in l)
start = max(i for i in range(knob) if lines[i].strip() == "<qemu:commandline>")
end = next(i for i in range(knob, len(lines))
           if lines[i].strip() == "</qemu:commandline>")
open(sys.argv[2] + ".native", "w").write(
    "\n".join(lines[start:end + 1]) + "\n")
for name, cmd in zip(names, cmds):
    open(f"{sys.argv[2]}.{name}", "w").write(cmd)
PYEOF
server_start hotplug
# Only the test reaches the socket now: QEMU gets a connected fd
chgrp root "$work/run/nvme.sock"
chmod 600 "$work/run/nvme.sock"
name=vfio-user-test-$$-hotplug
domains+=("$name")
domain_xml "$name" "$work/run/nvme.sock" "$work/hotplug.console" \
    " e2e.mode=hotplug" >"$work/hotplug-doc.xml"
# The documented domain without its cold-plugged device, with the port
# and native PCIe hot-plug
python3 - "$work/hotplug-doc.xml" "$work/hotplug.controller" \
    "$work/hotplug.native" >"$work/hotplug.xml" <<'PYEOF'
import re, sys

xml = open(sys.argv[1]).read()
xml, n = re.subn(r"\s*<qemu:commandline>.*</qemu:commandline>", "", xml,
                 flags=re.S)
if n != 1:
    sys.exit("no <qemu:commandline> in the documented domain")
xml = xml.replace("  </devices>", open(sys.argv[2]).read() + "  </devices>",
                  1)
xml = xml.replace("</domain>", open(sys.argv[3]).read() + "</domain>", 1)
print(xml)
PYEOF
virsh -c "$uri" create "$work/hotplug.xml" >"$work/hotplug.virsh" 2>&1 ||
    failed "virsh create: $(cat "$work/hotplug.virsh")"

# wait_console FILE ERE SECONDS WHAT: until the guest prints ERE
wait_console() {
    local deadline=$(($(date +%s) + $3))

    until grep -q -E "$2" "$1" 2>/dev/null; do
        if grep -q '^VFIO-USER-E2E: FAIL' "$1" 2>/dev/null; then
            failed "$4: $(grep -m1 '^VFIO-USER-E2E:' "$1")"
        fi
        [ "$(date +%s)" -lt "$deadline" ] || failed "$4 within $3 s"
        sleep 0.2
    done
}
wait_console "$work/hotplug.console" '^e2e: hotplug ready' "$boot_s" \
    "the guest did not get ready for hot-plug"
# Connect, hand the fd over with getfd, device_add: as a management layer
python3 - "$work/run/nvme.sock" "$name" "$uri" "$work/hotplug" <<'PYEOF' ||
import json, socket, subprocess, sys

path, name, uri, cmds = sys.argv[1:]
sock = socket.socket(socket.AF_UNIX)
sock.connect(path)
fd = sock.fileno()


def qmp(cmd, *extra, **kw):
    out = subprocess.run(["virsh", "-c", uri, "qemu-monitor-command", name,
                          *extra, open(f"{cmds}.{cmd}").read()],
                         capture_output=True, text=True, **kw)
    print(f"libvirt: {cmd}: {out.stdout.strip() or out.stderr.strip()}")
    if out.returncode or "error" in json.loads(out.stdout or "{}"):
        sys.exit(f"{cmd} failed")


qmp("getfd", "--pass-fds", str(fd), pass_fds=(fd,))
sock.close()                            # QEMU holds its own copy now
qmp("device_add")
PYEOF
    failed "the hot-plug commands failed"
wait_console "$work/hotplug.console" '^e2e: hotplug io:' 120 \
    "the guest did no I/O on the hot-plugged controller"
sed -n 's/^e2e: hotplug /libvirt: guest: hotplug /p' "$work/hotplug.console"
grep -q '^e2e: hotplug came: .*pciehp' "$work/hotplug.console" ||
    failed "the guest did not hear of the controller through pciehp"
out=$(virsh -c "$uri" qemu-monitor-command "$name" \
      "$(cat "$work/hotplug.device_del")" 2>&1) || failed "device_del: $out"
echo "libvirt: device_del: $out"
wait_console "$work/hotplug.console" '^e2e: hotplug went' 120 \
    "the guest did not see the controller go"
wait_gone "$name" 30
result=$(grep -m1 '^VFIO-USER-E2E:' "$work/hotplug.console" || true)
echo "libvirt: guest: ${result:-no result}"
case $result in
*PASS*) ;;
*) failed "the hot-plug guest did not pass" ;;
esac
server_gone 10 || failed "the server still has its client after device_del"
echo "libvirt: ok"
