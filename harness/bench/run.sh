#!/bin/bash
# make bench: how fast is a device behind vfio-user-pci, next to the same
# device inside QEMU, measured side by side in one run on this machine.
#
# usage: run.sh QEMU_BIN GUEST_DIR RAW_SERVER OUT_DIR
#   QEMU_BIN    build/qemu-system-x86_64
#   GUEST_DIR   build/guest (vmlinuz, initramfs.gz of harness/build-guest.sh)
#   RAW_SERVER  the raw vfio-user test server
#               (build/qemu/build/tests/qtest/vfio-user-raw-server)
#   OUT_DIR     out/bench: logs, the guests it builds, bench.json
#
# 1. A Linux guest (TCG) reads a disk with O_DIRECT at QD1: 4 KiB reads
#    and 64 MiB sequentially, from nvme and virtio-blk-pci emulated in the
#    guest's QEMU (a) and the same device exported by another QEMU's
#    x-vfio-user-server, reached through vfio-user-pci (b).
# 2. A bare-metal guest (harness/guest/bench-guest) times single register
#    accesses: REGION_READ/REGION_WRITE (posted and not), the doorbell
#    fast paths (ioeventfd, shadow ioeventfd, ioregionfd) of the raw test
#    server, QEMU's edu device for reference, under TCG and, where usable,
#    KVM; against the floor, an AF_UNIX ping-pong of the same sizes
#    (harness/bench/unix-pingpong.c).  The server's stats tell which path
#    each row's accesses took.
# 3. MSI-X delivery, KVM irqfd against relayed by QEMU (KVM only).
# 4. Live migration between two QEMUs: total time and downtime of a VM
#    without the device (a) and with a raw test server's device (b) that
#    has 1 or 16 MiB of state, with and without DMA logging, STOP_COPY
#    or PRE_COPY (harness/bench/migrate.py).
#
# Prints the machine, then a table; writes OUT_DIR/bench.json.  A tool,
# not a test: nothing is asserted on times; exits 0 unless nothing could
# run at all (a missing QEMU).  Rows that cannot run say why.
#
# Environment:
#   BENCH_VFU_PROPS       extra vfio-user-pci properties for every
#                         vfio-user run, e.g. ",x-request-timeout-ms=9000"
#   BENCH_LINUX_COUNT     4 KiB reads per QD1 pass (4000)
#   BENCH_LINUX_REPS      passes of each read test per boot (3)
#   BENCH_MMIO_N          most accesses per bare-metal row (20000)
#   BENCH_MMIO_BUDGET_MS  time a bare-metal row aims at (1000), all passes
#   BENCH_MMIO_REPS       passes over the bare-metal rows (3); the table
#                         shows the median
#   BENCH_PINGPONG_N      AF_UNIX round trips per shape (20000)
#   BENCH_TEST_SERVER     libvfio-user test server for the MSI-X rows
#                         (default: vfio-user-test-server beside RAW_SERVER)
#   BENCH_SECTIONS        which sections to run (default "1 2 3 4")
#   BENCH_MIG_REPS        migrations per row of section 4 (3); the median
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -uo pipefail

if [ $# -ne 4 ]; then
    echo "usage: $0 QEMU_BIN GUEST_DIR RAW_SERVER OUT_DIR" >&2
    exit 2
fi
qemu=$(realpath -m "$1")
guest_dir=$(realpath -m "$2")
raw_server=$(realpath -m "$3")
out=$(realpath -m "$4")
here=$(dirname "$(realpath "$0")")
repo=$(realpath "$here/../..")
test_server=${BENCH_TEST_SERVER:-$(dirname "$raw_server")/vfio-user-test-server}
vfu_props=${BENCH_VFU_PROPS:-}
if [ -n "$vfu_props" ] && [ "${vfu_props:0:1}" != , ]; then
    vfu_props=,$vfu_props
fi
linux_count=${BENCH_LINUX_COUNT:-4000}
linux_reps=${BENCH_LINUX_REPS:-3}
mmio_n=${BENCH_MMIO_N:-20000}
mmio_budget=${BENCH_MMIO_BUDGET_MS:-1000}
mmio_reps=${BENCH_MMIO_REPS:-3}
pingpong_n=${BENCH_PINGPONG_N:-20000}
sections=${BENCH_SECTIONS:-1 2 3 4}
mig_reps=${BENCH_MIG_REPS:-3}

if [ ! -x "$qemu" ]; then
    echo "bench: no QEMU at $qemu (run make first)" >&2
    exit 1
fi

rm -rf "$out"
mkdir -p "$out"
rows_json=$out/rows.jsonl
table=$out/table.txt
: >"$rows_json"
: >"$table"

progress() {
    echo "bench: $*" >&2
}

# A server started for one guest run.  The runs happen in $(...)
# subshells: each stops its own server by pid, on the way out too.
srv_pid=
start_server() {
    "$@" &
    srv_pid=$!
    trap '[ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null' EXIT
}

stop_server() {
    if [ -n "$srv_pid" ]; then
        kill "$srv_pid" 2>/dev/null
        wait "$srv_pid" 2>/dev/null
        srv_pid=
    fi
}

json_str() {
    local s=$1

    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/ }
    s=${s//$'\r'/}
    printf '"%s"' "$s"
}

# A number, or null when empty
json_num() {
    if [ -n "$1" ]; then
        printf '%s' "$1"
    else
        printf 'null'
    fi
}

# x / y with 3 decimals, empty when either is missing or y is 0
ratio() {
    [ -n "$1" ] && [ -n "$2" ] || return 0
    awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 != 0) printf "%.3f", a / b }'
}

median() {
    tr ' ' '\n' | grep -v '^$' | sort -g |
        awk '{ v[NR] = $1 }
             END {
                 if (NR % 2) {
                     print v[(NR + 1) / 2]
                 } else if (NR) {
                     printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
                 }
             }'
}

section() {
    printf '\n== %s\n' "$1" >>"$table"
    printf '%-50s %-30s %-7s %-7s %-7s %s\n' row measured ratio target \
        status path >>"$table"
}

table_note() {
    printf '   %s\n' "$1" >>"$table"
}

# row SECTION NAME ACCEL TIMES_JSON SHOWN RATIO RATIO_OF TARGET PATH SKIP
#   TIMES_JSON  a JSON object of every time measured for the row
#   SHOWN       the times as the table shows them
#   TARGET      "<=X" or empty; the row reports met/missed, never fails
#   SKIP        why the row did not run, or empty
row() {
    local sec=$1 name=$2 accel=$3 times=$4 shown=$5 r=$6 rof=$7 target=$8
    local path=$9 skip=${10} status=- met=null limit

    if [ -n "$skip" ]; then
        status=skipped
        shown=-
        r=
        path="skipped: $skip"
    elif [ -n "$target" ]; then
        limit=${target#<=}
        if [ -z "$r" ]; then
            status=n/a
        elif awk -v r="$r" -v l="$limit" 'BEGIN { exit !(r <= l) }'; then
            status=met
            met=true
        else
            status=missed
            met=false
        fi
    fi
    printf '%-50s %-30s %-7s %-7s %-7s %s\n' "$name" "$shown" "${r:--}" \
        "${target:--}" "$status" "${path:--}" >>"$table"
    {
        printf '{"section":%s,"name":%s,"accel":%s,' "$(json_str "$sec")" \
            "$(json_str "$name")" "$(json_str "$accel")"
        printf '"times":%s,"ratio":%s,"ratio_of":%s,' "${times:-null}" \
            "$(json_num "$r")" "$(json_str "$rof")"
        printf '"target":%s,"target_met":%s,"path":%s,' \
            "$(json_str "$target")" "$met" \
            "$( [ -n "$skip" ] && echo null || json_str "$path")"
        printf '"skipped":%s,"skip_reason":%s}\n' \
            "$([ -n "$skip" ] && echo true || echo false)" \
            "$( [ -n "$skip" ] && json_str "$skip" || echo null)"
    } >>"$rows_json"
}

# Prefix each line with the host's time, so the guest's clock can be
# checked against it
stamp_lines() {
    local line

    while IFS= read -r line || [ -n "$line" ]; do
        printf '%s %s\n' "${EPOCHREALTIME:-$(date +%s.%N)}" "${line%$'\r'}"
    done
}

wait_socket() {
    local _

    for _ in $(seq 100); do
        [ -S "$1" ] && return 0
        sleep 0.05
    done
    return 1
}

# KEY=VALUE out of a line of the guests' output
field() {
    sed -n "s/.* $2=\\([^ ]*\\).*/\\1/p" <<<"$1"
}

# Why this machine cannot run KVM guests, or nothing
kvm_reason=
if [ ! -e /dev/kvm ]; then
    kvm_reason="/dev/kvm is missing"
elif [ ! -w /dev/kvm ]; then
    kvm_reason="/dev/kvm is not writable"
fi

# The machine and the QEMU, at the top
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
qemu_version=$("$qemu" --version 2>&1 | head -n 1)
vfu_help=$("$qemu" -device vfio-user-pci,help 2>&1)
has_prop() {
    grep -q "^ *$1=" <<<"$vfu_help"
}
echo "vfio-user-pci bench, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, kernel $(uname -r)"
echo "qemu:    $qemu_version ($qemu)"
echo "kvm:     ${kvm_reason:-usable (/dev/kvm is writable)}"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load:    $load_start (1, 5, 15 min) at the start; other work on the machine moves the numbers"
echo "extra vfio-user-pci properties (BENCH_VFU_PROPS): ${vfu_props:-none}"

# ---------------------------------------------------------------------
# 1. Linux guest, O_DIRECT reads
# ---------------------------------------------------------------------
linux_dir=$out/linux
linux_initrd=$linux_dir/initramfs-bench.gz

# Sets linux_skip when nothing can run
linux_setup() {
    local tmp kver

    linux_skip=
    if [ ! -f "$guest_dir/vmlinuz" ] || [ ! -f "$guest_dir/initramfs.gz" ]; then
        linux_skip="no test guest in $guest_dir (make guest)"
        return
    fi
    mkdir -p "$linux_dir"
    tmp=$(mktemp -d /tmp/bench-initrd.XXXXXX)
    # The kernel the test guest's modules are for
    (cd "$tmp" && zcat "$guest_dir/initramfs.gz" |
        cpio -id --quiet lib/modules/nvme.ko 2>/dev/null)
    kver=$(strings -a "$tmp/lib/modules/nvme.ko" 2>/dev/null |
           sed -n 's/^vermagic=\([^ ]*\).*/\1/p' | head -n 1)
    if [ -z "$kver" ]; then
        linux_skip="cannot tell the kernel version of $guest_dir/initramfs.gz"
        rm -rf "$tmp"
        return
    fi
    mkdir -p "$tmp/root/bench"
    install -m 0755 "$here/linux-init" "$tmp/root/bench/init"
    # The kernel unpacks concatenated archives in turn
    (cd "$tmp/root" && find . | cpio -o -H newc --quiet | gzip -1) \
        >"$tmp/bench.cpio.gz"
    cat "$guest_dir/initramfs.gz" "$tmp/bench.cpio.gz" >"$linux_initrd"
    echo "$kver" >"$linux_dir/kernel-version"
    rm -rf "$tmp"
}

# linux_run DEV: boots the guest once with both disks, (a) DEV in its own
# QEMU and (b) DEV in x-vfio-user-server through vfio-user-pci; leaves
# the log in $linux_dir/DEV/guest.log and prints why it failed, if it did
linux_run() {
    local dev=$1 work=$linux_dir/$1 props sock server rc
    local -a guest_args

    rm -rf "$work"
    mkdir -p "$work"
    truncate -s 128M "$work/disk-a.img" "$work/disk-b.img"
    case $dev in
    nvme) props="nvme,drive=drv0,id=dev0" ;;
    virtio) props="virtio-blk-pci,drive=drv0,id=dev0,iommu_platform=on,disable-legacy=on" ;;
    esac
    drive() {
        echo "id=drv0,file=$work/disk-$1.img,format=raw,if=none,cache=none"
    }

    sock=$work/dev.sock
    start_server "$qemu" -machine x-remote,vfio-user=on -nodefaults \
        -display none -drive "$(drive b)" -device "$props,serial=bench-b" \
        -object '{"qom-type":"x-vfio-user-server","id":"vfu0","device":"dev0","socket":{"type":"unix","path":"'"$sock"'"}}' \
        >"$work/server.log" 2>&1
    if ! wait_socket "$sock"; then
        echo "x-vfio-user-server did not create its socket:" \
            "$(tail -n 1 "$work/server.log")"
        stop_server
        return 1
    fi

    guest_args=(-M q35,memory-backend=mem0
                -object memory-backend-memfd,id=mem0,size=512M,share=on
                -accel tcg -m 512M -smp 1 -nodefaults -display none
                -no-reboot -serial stdio
                -kernel "$guest_dir/vmlinuz" -initrd "$linux_initrd"
                -append "console=ttyS0 panic=-1 quiet rdinit=/bench/init bench.dev=$dev bench.count=$linux_count bench.reps=$linux_reps bench.sides=a,b"
                -drive "$(drive a)" -device "$props,serial=bench-a,addr=0x3"
                -device "vfio-user-pci,socket=$sock,id=vfu0,addr=0x4$vfu_props")
    timeout -k 5 300 "$qemu" "${guest_args[@]}" 2>&1 | tr -d '\r' \
        >"$work/guest.log"
    rc=${PIPESTATUS[0]}
    stop_server
    rm -f "$work"/disk-*.img
    if grep -q '^BENCH-LINUX: error' "$work/guest.log"; then
        grep -m1 '^BENCH-LINUX: error' "$work/guest.log" |
            sed 's/^BENCH-LINUX: error /guest: /'
        return 1
    fi
    if ! grep -q '^BENCH-LINUX: done' "$work/guest.log"; then
        echo "guest QEMU exited with status $rc$([ "$rc" -eq 124 ] && echo ", timed out") before the end:" \
            "$(grep -v '^\[' "$work/guest.log" | tail -n 1)"
        return 1
    fi
    return 0
}

# Seconds of each pass of TEST on SIDE in LOG, space-separated
linux_times() {
    grep "^BENCH-LINUX: result side=$2 test=$3 " "$1" |
        sed -n 's/.* ns=\([0-9]*\).*/\1/p' |
        awk '{ printf "%s%.6f", (NR > 1 ? " " : ""), $1 / 1e9 }'
}

# Interrupts per request over the 4 KiB passes of SIDE in LOG
linux_irqs_per_io() {
    grep "^BENCH-LINUX: result side=$2 test=qd1_4k " "$1" |
        awk -v c="$linux_count" '{ for (i = 1; i <= NF; i++)
                                       if ($i ~ /^irqs=/) n += substr($i, 6) }
                                 END { if (NR) printf "%.2f", n / (NR * c) }'
}

# The interrupt mode the guest found for SIDE in LOG
linux_irq_mode() {
    sed -n "s/^BENCH-LINUX: device side=$2 .* irq_mode=\\([a-z]*\\).*/\\1/p" \
        "$1" | head -n 1
}

json_list() {
    printf '[%s]' "$(sed 's/ /,/g' <<<"$1")"
}

linux_section() {
    local dev why clock a b ma mb r test label target path skip log
    local sec="1. Linux guest, TCG, -smp 1 -m 512M (memfd), O_DIRECT reads (busybox dd, QD1), median of $linux_reps"
    local -A fail=()

    section "$sec"
    linux_setup
    if [ -z "$linux_skip" ]; then
        for dev in nvme virtio; do
            progress "linux: $dev, in-process and through vfio-user-pci"
            if ! why=$(linux_run "$dev"); then
                fail[$dev]=$why
                progress "linux: $dev: $why"
            fi
        done
        clock=$(sed -n 's/^BENCH-LINUX: clock //p' "$linux_dir"/*/guest.log |
                sort -u | tr '\n' ' ')
        case $clock in
        "timer_list ") clock="/proc/timer_list 'now at' (ktime, ns)" ;;
        "adjtimex ") clock="adjtimex (gettimeofday, us)" ;;
        "uptime ") clock="/proc/uptime (10 ms steps)" ;;
        esac
        table_note "guest clock: ${clock:-none seen}; kernel $(cat "$linux_dir/kernel-version"), busybox dd iflag=direct"
        table_note "one boot per device kind with two disks, read in turn: (a) the device in the guest's QEMU (addr 3),"
        table_note "(b) the same device in x-vfio-user-server, through vfio-user-pci$vfu_props (addr 4); 128 MiB sparse raw images, cache=none"
    fi

    for dev in nvme virtio; do
        log=$linux_dir/$dev/guest.log
        for test in qd1_4k seq_64m; do
            if [ "$test" = qd1_4k ]; then
                label="$linux_count x 4 KiB"
                [ "$dev" = nvme ] && target="<=1.3" || target=
            else
                label="64 MiB in 1 MiB"
                [ "$dev" = nvme ] && target="<=1.1" || target=
            fi
            [ "$dev" = nvme ] && label="nvme $label" ||
                label="virtio-blk $label"
            skip=$linux_skip
            if [ -z "$skip" ] && [ -n "${fail[$dev]:-}" ]; then
                skip="the guest did not run: ${fail[$dev]}"
            fi
            if [ -n "$skip" ]; then
                row "$sec" "$label" tcg null "" "" "" "$target" "" "$skip"
                continue
            fi
            a=$(linux_times "$log" a "$test")
            b=$(linux_times "$log" b "$test")
            ma=$(median <<<"$a")
            mb=$(median <<<"$b")
            r=$(ratio "$mb" "$ma")
            path="(a) $dev in the guest's QEMU; (b) $dev via vfio-user-pci"
            if [ "$test" = qd1_4k ]; then
                path+="; irq/IO (a) $(linux_irqs_per_io "$log" a)"
                path+=" $(linux_irq_mode "$log" a)"
                path+=", (b) $(linux_irqs_per_io "$log" b)"
                path+=" $(linux_irq_mode "$log" b)"
            fi
            row "$sec" "$label" tcg \
                "{\"in_process_s\":$(json_list "$a"),\"vfio_user_s\":$(json_list "$b"),\"median_in_process_s\":$(json_num "$ma"),\"median_vfio_user_s\":$(json_num "$mb")}" \
                "$(printf '(a) %.3f s  (b) %.3f s' "${ma:-0}" "${mb:-0}")" \
                "$r" "(b)/(a)" "$target" "$path" ""
        done
    done
}

# ---------------------------------------------------------------------
# 2. and 3. Bare-metal guest
# ---------------------------------------------------------------------
bare_dir=$out/bare
bare_elf=$bare_dir/bench-guest.elf
raw_iofds=(--iofd 0,ioeventfd,offset=0x100,size=4
           --iofd 0,shadow,offset=0x108,size=4
           --iofd 0,ioregionfd,offset=0x200,size=0x10
           --iofd 0,ioregionfd,offset=0x300,size=0x10,posted=1)

# The Makefile builds it into GUEST_DIR (make guest)
build_bare_guest() {
    mkdir -p "$bare_dir"
    if [ ! -f "$guest_dir/bench-guest.elf" ]; then
        echo "$guest_dir/bench-guest.elf is missing: run make guest" \
            >"$bare_dir/gcc.log"
        return 1
    fi
    cp "$guest_dir/bench-guest.elf" "$bare_elf"
}

# bare_run NAME ACCEL MODE SERVER PROPS [QEMU ARGS...]
#   SERVER: raw, test or none.  Log in $bare_dir/NAME.log (each line
#   stamped with the host's time), QEMU's stderr in NAME.err.  Prints
#   why it failed, if it did; returns 2 when KVM turned out unusable.
bare_run() {
    local name=$1 accel=$2 mode=$3 server=$4 props=$5 sock
    local log=$bare_dir/$1.log
    local -a args=()

    shift 5
    sock=$bare_dir/$name.sock
    rm -f "$sock"
    case $server in
    raw)
        start_server "$raw_server" "${raw_iofds[@]}" "$sock" \
            >"$bare_dir/$name.server.log" 2>&1
        ;;
    test)
        start_server "$test_server" "$sock" >"$bare_dir/$name.server.log" 2>&1
        ;;
    esac
    if [ -n "$srv_pid" ]; then
        if ! wait_socket "$sock"; then
            echo "the $server server did not create its socket:" \
                "$(tail -n 1 "$bare_dir/$name.server.log")"
            stop_server
            return 1
        fi
        args+=(-device "vfio-user-pci,socket=$sock,id=vfu0$vfu_props$props")
    fi
    timeout -k 5 120 "$qemu" -M pc -accel "$accel" -m 128M -nodefaults \
        -display none -no-reboot -serial stdio \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -kernel "$bare_elf" \
        -append "mode=$mode n=$mmio_n budget_ms=$mmio_budget reps=$mmio_reps" \
        "${args[@]}" "$@" 2>"$bare_dir/$name.err" | stamp_lines >"$log"
    local rc=${PIPESTATUS[0]}
    stop_server
    rm -f "$sock"
    if [ "$accel" = kvm ] &&
       grep -qi 'kvm' "$bare_dir/$name.err" &&
       grep -qi 'could not access\|failed to initialize\|not supported\|no such file' \
           "$bare_dir/$name.err"; then
        echo "QEMU: $(grep -m1 -i kvm "$bare_dir/$name.err")"
        return 2
    fi
    # isa-debug-exit: the guest's 0 comes out as status 1
    if [ "$rc" -ne 1 ] || ! grep -q 'BENCH-GUEST: done ok' "$log"; then
        echo "QEMU exited with status $rc$([ "$rc" -eq 124 ] && echo ", timed out"):" \
            "$( (grep -h 'BENCH-GUEST: error' "$log"; cat "$bare_dir/$name.err") |
                sed 's/^[0-9.]* //' | head -n 1)"
        return 1
    fi
    return 0
}

# Every pass of row NAME in a bare run's log (bare_lines RUN NAME)
bare_lines() {
    grep " BENCH-GUEST: row name=$2 " "$bare_dir/$1.log" 2>/dev/null
}

bare_line() {
    bare_lines "$1" "$2" | head -n 1
}

# KEY of every pass of a row, space-separated ("null" where missing)
bare_values() {
    local l v

    bare_lines "$1" "$2" | while IFS= read -r l; do
        v=$(field "$l" "$3")
        echo "${v:-null}"
    done | paste -sd ' ' -
}

# The counts of all passes of a row, summed, as one line for bare_path
# (the guest prints 32-bit differences unsigned)
bare_sum() {
    bare_lines "$1" "$2" |
        awk '{ for (i = 1; i <= NF; i++) {
                   if (split($i, kv, "=") != 2 || kv[2] !~ /^[0-9]+$/) {
                       continue
                   }
                   v = kv[2]
                   if (v >= 2147483648) {
                       v -= 4294967296
                   }
                   sum[kv[1]] += v
               }
             }
             END {
                 printf "sum"
                 for (k in sum) {
                     printf " %s=%.0f", k, sum[k]
                 }
                 printf "\n"
             }'
}

# Which path a row's accesses took, from the raw server's stats
# bare_path LINE EXPECTED ACCEL
#   EXPECTED: the counter the fast path moves (rr, rw, e0..e3)
bare_path() {
    local line=$1 want=$2 accel=$3 n counts='' k v others=0
    local -A c=()
    local -A names=([rr]=REGION_READ [rw]=REGION_WRITE [e0]="ioeventfd"
                    [e1]="shadow ioeventfd" [e2]="ioregionfd(0x200)"
                    [e3]="ioregionfd(0x300,posted)")

    n=$(field "$line" n)
    c[rr]=$(field "$line" region_reads)
    c[rw]=$(field "$line" region_writes)
    for k in e0 e1 e2 e3; do
        c[$k]=$(field "$line" "$k")
    done
    for k in rr rw e0 e1 e2 e3; do
        v=${c[$k]}
        if [ "$v" -ne 0 ] || [ "$k" = "$want" ]; then
            counts+="${counts:+, }${names[$k]} +$v"
        fi
    done
    for k in rr rw e0 e1 e2 e3; do
        [ "$k" != "$want" ] && others=$((others + ${c[$k]#-}))
    done
    if [ "${c[$want]}" -eq "$n" ] && [ "$others" -eq 0 ]; then
        case $want in
        e0|e1)
            if [ "$accel" = kvm ]; then
                echo "${names[$want]} by KVM, QEMU not involved ($counts)"
            else
                echo "${names[$want]}, signalled by QEMU under TCG ($counts)"
            fi
            ;;
        e2|e3)
            echo "${names[$want]}, served by QEMU on the fd ($counts)" ;;
        *)
            echo "${names[$want]} ($counts)" ;;
        esac
    elif [ "${c[$want]}" -gt 0 ] && [ "$others" -eq 0 ]; then
        echo "${names[$want]}, the server counted ${c[$want]} for $n accesses ($counts)"
    elif [ "$want" != rw ] && [ "${c[rw]}" -eq "$n" ]; then
        echo "REGION_WRITE: no fast path ($counts)"
    elif [ "$want" != rr ] && [ "${c[rr]}" -eq "$n" ]; then
        echo "REGION_READ: no fast path ($counts)"
    elif [ "$others" -eq 0 ] && [ "${c[$want]}" -eq 0 ]; then
        echo "unknown: the server's stats did not move ($counts)"
    else
        echo "unclear ($counts)"
    fi
}

# The median over the passes of a row of its ns per access, or empty
bare_per() {
    bare_values "$1" "$2" per_ns | median
}

bare_times() {
    [ -n "$(bare_line "$1" "$2")" ] || { echo null; return; }
    printf '{"median_per_access_ns":%s,"per_access_ns":%s,"n":%s,' \
        "$(bare_per "$1" "$2")" "$(json_list "$(bare_values "$1" "$2" per_ns)")" \
        "$(json_list "$(bare_values "$1" "$2" n)")"
    printf '"total_ns":%s,"pm_timer_total_ns":%s}' \
        "$(json_list "$(bare_values "$1" "$2" ns)")" \
        "$(json_list "$(bare_values "$1" "$2" pm_ns)")"
}

# A note on the guest's clock: calibration, host check, TSC vs PM timer
bare_clock_note() {
    local log=$bare_dir/$1.log t0 t1 gns khz by worst

    khz=$(field "$(grep -m1 'BENCH-GUEST: clock ' "$log")" tsc_khz)
    by=$(field "$(grep -m1 'BENCH-GUEST: pm_timer ' "$log")" set_by)
    t0=$(awk '/BENCH-GUEST: clockcheck begin/ { print $1; exit }' "$log")
    t1=$(awk '/BENCH-GUEST: clockcheck end/ { print $1; exit }' "$log")
    gns=$(field "$(grep -m1 'BENCH-GUEST: clockcheck end' "$log")" guest_ns)
    worst=$(grep 'BENCH-GUEST: row ' "$log" |
            awk '{ ns = pm = ""
                   for (i = 1; i <= NF; i++) {
                       if ($i ~ /^ns=/) ns = substr($i, 4)
                       if ($i ~ /^pm_ns=/) pm = substr($i, 7)
                   }
                   if (pm != "" && ns > 1e8) {
                       d = (ns - pm) / pm * 100; if (d < 0) d = -d
                       if (d > w) w = d
                   }
               }
               END { printf "%.2f", w }')
    table_note "$2: guest clock TSC ($khz kHz) calibrated on the ACPI PM timer (I/O base set by $by); $(awk -v g="$gns" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f ms by the guest = %.1f ms by the host", g / 1e6, (b - a) * 1000 }'); passes over 100 ms by TSC and by PM timer differ by <= $worst%"
}

# Section 2 under one accelerator
bare_section() {
    local accel=$1 sec="2. Per access, bare-metal guest, $1, -M pc" why rc
    local posted_run=default-$accel nonposted_run=nonposted-$accel
    local raw_skip='' np_skip='' edu_skip='' have_np=

    section "$sec"
    if [ -n "$bare_skip" ]; then
        raw_skip=$bare_skip
        edu_skip=$bare_skip
    elif [ "$accel" = kvm ] && [ -n "$kvm_reason" ]; then
        raw_skip=$kvm_reason
        edu_skip=$kvm_reason
    fi
    if [ -z "$raw_skip" ] && [ ! -x "$raw_server" ]; then
        raw_skip="no raw test server at $raw_server"
    fi
    if ! has_prop x-no-posted-writes; then
        np_skip="vfio-user-pci has no x-no-posted-writes property: its writes cannot be switched between posted and not"
    fi

    if [ -z "$raw_skip" ]; then
        progress "bare-metal, $accel: raw server, client defaults"
        why=$(bare_run "$posted_run" "$accel" mmio raw "" -device edu)
        rc=$?
        if [ $rc -eq 2 ]; then
            raw_skip="KVM is unusable: $why"
            edu_skip=$raw_skip
            kvm_reason=$raw_skip
        elif [ $rc -ne 0 ]; then
            raw_skip="the guest run failed: $why"
        else
            bare_clock_note "$posted_run" "$accel"
        fi
    fi
    if [ -z "$raw_skip" ] && [ -z "$np_skip" ]; then
        progress "bare-metal, $accel: raw server, x-no-posted-writes=on"
        if ! why=$(bare_run "$nonposted_run" "$accel" mmio raw \
                   ",x-no-posted-writes=on"); then
            np_skip="the x-no-posted-writes=on run failed: $why"
        else
            have_np=1
        fi
    fi
    # Without the raw server, still the reference rows
    local edu_run=$posted_run
    if [ -n "$raw_skip" ] && [ -z "$edu_skip" ]; then
        edu_run=edu-$accel
        progress "bare-metal, $accel: edu only"
        why=$(bare_run "$edu_run" "$accel" mmio none "" -device edu)
        rc=$?
        if [ $rc -eq 2 ]; then
            edu_skip="KVM is unusable: $why"
            kvm_reason=$edu_skip
        elif [ $rc -ne 0 ]; then
            edu_skip="the guest run failed: $why"
        else
            bare_clock_note "$edu_run" "$accel"
        fi
    fi

    local rd wr_p wr_np ioev
    rd=$(bare_per "$posted_run" region_read)
    wr_p=$(bare_per "$posted_run" region_write)
    wr_np=
    [ -n "$have_np" ] && wr_np=$(bare_per "$nonposted_run" region_write)
    ioev=$(bare_per "$posted_run" ioeventfd)

    # shown NAME RUN: "12.3 us/access (n=20000)"
    shown() {
        local l

        l=$(bare_line "$2" "$1")
        awk -v p="$(bare_per "$2" "$1")" -v n="$(field "$l" n)" \
            -v r="$(bare_lines "$2" "$1" | wc -l)" \
            'BEGIN { if (p >= 10000) printf "%.1f us/access", p / 1000
                     else printf "%.1f ns/access", p
                     printf " (n=%d x%d)", n, r }'
    }
    raw_row() {
        local name=$1 label=$2 want=$3 r=$4 rof=$5 target=$6 run=${7:-$posted_run}
        local skip=$raw_skip l

        if [ -z "$skip" ]; then
            l=$(bare_line "$run" "$name")
            if [ -z "$l" ]; then
                skip="the guest printed no row $name"
            fi
        fi
        if [ -n "$skip" ]; then
            row "$sec" "$label" "$accel" null "" "" "$rof" "$target" "" "$skip"
            return
        fi
        row "$sec" "$label" "$accel" "$(bare_times "$run" "$name")" \
            "$(shown "$name" "$run")" "$r" "$rof" "$target" \
            "$(bare_path "$(bare_sum "$run" "$name")" "$want" "$accel")" ""
    }

    raw_row region_read "REGION_READ 4 B, BAR0 0x10" rr \
        "$(ratio "$rd" "$floor_read")" "REGION_READ / AF_UNIX floor" "<=1.3"
    if [ -n "$np_skip" ]; then
        raw_row region_write "REGION_WRITE 4 B, client default" rw "" "" ""
        row "$sec" "REGION_WRITE 4 B, x-no-posted-writes=on" "$accel" null \
            "" "" "posted / non-posted" "<=0.3" "" "$np_skip"
    else
        raw_row region_write "REGION_WRITE 4 B, posted (default)" rw \
            "$(ratio "$wr_p" "$wr_np")" "posted / non-posted" "<=0.3"
        raw_row region_write "REGION_WRITE 4 B, x-no-posted-writes=on" rw \
            "" "" "" "$nonposted_run"
    fi
    local base=${wr_np:-$wr_p} base_name="REGION_WRITE (non-posted)"
    [ -z "$wr_np" ] && base_name="REGION_WRITE (client default)"
    raw_row ioeventfd "doorbell ioeventfd, BAR0 0x100" e0 \
        "$(ratio "$ioev" "$base")" "ioeventfd / $base_name" "<=0.2"
    raw_row shadow_ioeventfd "doorbell shadow ioeventfd, BAR0 0x108" e1 \
        "$(ratio "$(bare_per "$posted_run" shadow_ioeventfd)" "$base")" \
        "shadow / $base_name" ""
    raw_row ioregionfd_write "ioregionfd write (posted entry), 0x300" e3 \
        "$(ratio "$(bare_per "$posted_run" ioregionfd_write)" "$base")" \
        "ioregionfd write / $base_name" ""
    raw_row ioregionfd_read "ioregionfd read, BAR0 0x200" e2 \
        "$(ratio "$(bare_per "$posted_run" ioregionfd_read)" "$rd")" \
        "ioregionfd read / REGION_READ" ""
    if [ -z "$raw_skip" ]; then
        table_note "the raw server's io fd entries at the end of the run: $(
            grep ' BENCH-GUEST: entry ' "$bare_dir/$posted_run.log" |
            awk '{ for (i = 1; i <= NF; i++) {
                       if ($i ~ /^k=/) k = substr($i, 3)
                       if ($i ~ /^count=/) c = substr($i, 7)
                       if ($i ~ /^closed=/) d = substr($i, 8)
                   }
                   printf "%s#%s count %s closed %s", (NR > 1 ? "; " : ""), k, c, d
               }')"
    fi

    local nm
    for nm in edu_read edu_write; do
        local label="edu ${nm#edu_} 4 B, BAR0 0x04 (in QEMU)" skip=$edu_skip
        if [ -z "$skip" ] && [ -z "$(bare_line "$edu_run" "$nm")" ]; then
            skip="the guest printed no row $nm"
        fi
        if [ -n "$skip" ]; then
            row "$sec" "$label" "$accel" null "" "" "" "" "" "$skip"
            continue
        fi
        row "$sec" "$label" "$accel" "$(bare_times "$edu_run" "$nm")" \
            "$(shown "$nm" "$edu_run")" "" "" "" \
            "MMIO dispatch inside QEMU: the reference" ""
    done
}

# The floor: AF_UNIX request/reply of a REGION_READ's and REGION_WRITE's
# sizes
floor_read=
floor_section() {
    local sec="2. The floor: AF_UNIX ping-pong between two processes, host"
    local bin=$bare_dir/unix-pingpong line name label

    section "$sec"
    mkdir -p "$bare_dir"
    if ! gcc -O2 -Wall -o "$bin" "$here/unix-pingpong.c" \
            >"$bare_dir/pingpong-gcc.log" 2>&1; then
        for label in "REGION_READ sizes (32 B / 36 B)" \
                     "REGION_WRITE sizes (36 B / 32 B)"; do
            row "$sec" "AF_UNIX round trip, $label" host null "" "" "" "" "" \
                "unix-pingpong.c did not build: $(head -n 1 "$bare_dir/pingpong-gcc.log")"
        done
        return
    fi
    progress "floor: AF_UNIX ping-pong"
    "$bin" "$pingpong_n" >"$bare_dir/pingpong.log" 2>&1
    for name in region_read region_write; do
        line=$(grep "^pingpong name=$name " "$bare_dir/pingpong.log")
        [ "$name" = region_read ] &&
            label="AF_UNIX round trip, REGION_READ sizes (32 B / 36 B)" ||
            label="AF_UNIX round trip, REGION_WRITE sizes (36 B / 32 B)"
        if [ -z "$line" ]; then
            row "$sec" "$label" host null "" "" "" "" "" \
                "unix-pingpong failed: $(tail -n 1 "$bare_dir/pingpong.log")"
            continue
        fi
        [ "$name" = region_read ] && floor_read=$(field "$line" per_ns)
        row "$sec" "$label" host \
            "{\"per_round_trip_ns\":$(field "$line" per_ns),\"n\":$(field "$line" n)}" \
            "$(field "$line" per_ns) ns/round trip" "" "" "" \
            "socketpair(AF_UNIX, SOCK_STREAM), two processes" ""
    done
}

msix_section() {
    local sec="3. MSI-X delivery, KVM, -M pc, libvfio-user test server"
    local skip='' why rc run props qemu_irqs guest_irqs r rof
    local -A per=() trig=() labels=() fail=() path=()

    section "$sec"
    if [ -n "$bare_skip" ]; then
        skip=$bare_skip
    elif [ -n "$kvm_reason" ]; then
        skip=$kvm_reason
    elif [ ! -x "$test_server" ]; then
        skip="no test server at $test_server"
    fi
    labels[irqfd]="MSI-X round, KVM irqfd"
    labels[relayed]="MSI-X round, relayed by QEMU (x-no-kvm-msix=on)"
    for run in irqfd relayed; do
        [ -n "$skip" ] && break
        [ "$run" = irqfd ] && props= || props=",x-no-kvm-msix=on"
        progress "msix, kvm: $run"
        why=$(bare_run "msix-$run" kvm msix test "$props" \
              -trace "enable=vfio_msi_interrupt")
        rc=$?
        if [ $rc -eq 2 ]; then
            skip="KVM is unusable: $why"
        elif [ $rc -ne 0 ]; then
            fail[$run]="the guest run failed: $why"
        else
            per[$run]=$(bare_per "msix-$run" msix_round)
            trig[$run]=$(bare_per "msix-$run" msix_trigger_write)
            qemu_irqs=$(grep -c vfio_msi_interrupt "$bare_dir/msix-$run.err")
            guest_irqs=$(field "$(grep -m1 'BENCH-GUEST: interrupts ' \
                                  "$bare_dir/msix-$run.log")" count)
            if [ "$qemu_irqs" -eq 0 ]; then
                path[$run]="by KVM irqfd: QEMU's vfio_msi_interrupt ran 0 times for the guest's $guest_irqs interrupts"
            else
                path[$run]="through QEMU: vfio_msi_interrupt ran $qemu_irqs times for the guest's $guest_irqs interrupts"
            fi
        fi
    done
    for run in irqfd relayed; do
        if [ -n "$skip" ] || [ -n "${fail[$run]:-}" ]; then
            row "$sec" "${labels[$run]}" kvm null "" "" "" "" "" \
                "${skip:-${fail[$run]:-}}"
            continue
        fi
        r=
        rof=
        if [ "$run" = irqfd ]; then
            r=$(ratio "${per[irqfd]}" "${per[relayed]:-}")
            rof="irqfd round / relayed round"
        fi
        row "$sec" "${labels[$run]}" kvm \
            "{\"round\":$(bare_times "msix-$run" msix_round),\"trigger_write\":$(bare_times "msix-$run" msix_trigger_write)}" \
            "$(awk -v r="${per[$run]}" -v w="${trig[$run]}" \
               'BEGIN { printf "%.1f us/irq, %.0f/s (write %.1f us)",
                        r / 1000, 1e9 / r, w / 1000 }')" \
            "$r" "$rof" "" "${path[$run]}" ""
    done
    if [ -z "$skip" ] && [ -n "${per[irqfd]:-}" ] && [ -n "${per[relayed]:-}" ]; then
        table_note "a round: the guest writes the test server's command register (REGION_WRITE), then waits for the MSI-X; the trigger write alone is timed on a scratch register"
        table_note "irqfd / relayed, less the trigger write: $(ratio "$(awk -v a="${per[irqfd]}" -v b="${trig[irqfd]}" 'BEGIN { print a - b }')" "$(awk -v a="${per[relayed]}" -v b="${trig[relayed]}" 'BEGIN { print a - b }')")"
    fi
}

# 4. Live migration between two QEMUs on this machine
migration_section() {
    local sec="4. Live migration, TCG, -M pc 128 MiB, raw server (harness/bench/migrate.py)"
    local dir=$out/migration key args props label n out_json total down
    local base_total='' base_down='' rep
    local -a cases=(
        "none|||VM without the device (a)"
        "stop1|--migration stop-copy --dma-logging --mig-extra-kib 1024 --mig-seed 3||1 MiB state, STOP_COPY, DMA logging (b)"
        "stop16|--migration stop-copy --dma-logging --mig-extra-kib 16384 --mig-seed 3||16 MiB state, STOP_COPY, DMA logging (b)"
        "pre16|--migration pre-copy --dma-logging --mig-extra-kib 16384 --mig-seed 3||16 MiB state, PRE_COPY, DMA logging (b)"
        "nolog1|--migration stop-copy --mig-extra-kib 1024 --mig-seed 3|,enable-migration=on|1 MiB state, no DMA logging: all RAM dirty (b)"
    )
    local c

    section "$sec"
    mkdir -p "$dir"
    for c in "${cases[@]}"; do
        IFS="|" read -r key args props label <<<"$c"
        local totals='' downs='' err=''
        for rep in $(seq "$mig_reps"); do
            progress "migration: $label, pass $rep"
            if [ "$key" = none ]; then
                out_json=$(python3 "$here/migrate.py" "$qemu" "$dir/$key" 2>>"$dir/$key.log")
            else
                out_json=$(python3 "$here/migrate.py" "$qemu" "$dir/$key" \
                           "$raw_server" "$args" "$props" 2>>"$dir/$key.log")
            fi
            echo "$out_json" >>"$dir/$key.log"
            total=$(echo "$out_json" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["total_ms"] if d.get("status") == "completed" else "")' 2>/dev/null)
            down=$(echo "$out_json" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["downtime_ms"] if d.get("status") == "completed" else "")' 2>/dev/null)
            if [ -z "$total" ]; then
                err="the migration did not complete: $(tail -n 1 "$dir/$key.log")"
                break
            fi
            totals="$totals $total"
            downs="$downs $down"
        done
        if [ -n "$err" ]; then
            row "$sec" "migration, $label" tcg null "" "" "" "" "" "$err"
            continue
        fi
        total=$(echo "$totals" | median)
        down=$(echo "$downs" | median)
        if [ "$key" = none ]; then
            base_total=$total
            base_down=$down
        fi
        row "$sec" "migration, $label" tcg \
            "{\"total_ms\":[$(echo $totals | tr ' ' ',')],\"downtime_ms\":[$(echo $downs | tr ' ' ',')]}" \
            "$total ms total / $down ms down" \
            "$( [ "$key" = none ] || ratio "$total" "$base_total")" \
            "$( [ "$key" = none ] || echo "total time, b / a")" "" \
            "median of $mig_reps; downtime limit 300 ms (QEMU's default)" ""
    done
    table_note "the client guesses 64 KiB for the device state left when the VM stops: vfio-user has no message for its size"
}

for s in $sections; do
    case $s in
    1)
        linux_section
        ;;
    2)
        bare_skip=
        if ! build_bare_guest; then
            bare_skip="the bench guest did not build: $(head -n 1 "$bare_dir/gcc.log")"
        fi
        floor_section
        bare_section tcg
        bare_section kvm
        ;;
    3)
        if [ -z "${bare_skip+set}" ]; then
            bare_skip=
            build_bare_guest ||
                bare_skip="the bench guest did not build: $(head -n 1 "$bare_dir/gcc.log")"
        fi
        msix_section
        ;;
    4)
        migration_section
        ;;
    esac
done

cat "$table"

{
    printf '{"date":%s,' "$(json_str "$(date -u '+%Y-%m-%dT%H:%M:%SZ')")"
    printf '"machine":{"nproc":%s,"cpu_model":%s,"kernel":%s},' "$(nproc)" \
        "$(json_str "$cpu_model")" "$(json_str "$(uname -r)")"
    printf '"qemu":%s,"qemu_version":%s,' "$(json_str "$qemu")" \
        "$(json_str "$qemu_version")"
    printf '"load_average":{"start":%s,"end":%s},' \
        "$(json_str "$load_start")" "$(json_str "$(cut -d' ' -f1-3 /proc/loadavg)")"
    printf '"kvm":%s,"vfu_props":%s,' \
        "$( [ -n "$kvm_reason" ] && json_str "unusable: $kvm_reason" || json_str usable)" \
        "$(json_str "$vfu_props")"
    printf '"rows":[\n'
    sed '$!s/$/,/' "$rows_json"
    printf ']}\n'
} >"$out/bench.json"
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "bench: $(wc -l <"$rows_json") rows, $(grep -c '"skipped":true' "$rows_json") skipped; $out/bench.json"
exit 0
