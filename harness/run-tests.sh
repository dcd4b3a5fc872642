#!/bin/bash
# Run the vfio-user tests and print one summary line.
#
# usage: run-tests.sh [--asan ASAN_BUILD_DIR] QEMU_BUILD_DIR RESULTS_DIR
#                     [NAME COMMAND]...
#
# Each qtest case runs in a process of its own (a failed assertion aborts
# its process) and in a process group of its own, so that a failing case
# cannot leave server processes behind.  Each NAME COMMAND pair is one more
# test: COMMAND (a shell command) passes when it exits 0.  With --asan, the
# x86_64 qtest runs once more from ASAN_BUILD_DIR, a build of the same tree
# with ASan and UBSan (the Makefile's qemu-asan).
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -uo pipefail

asan_build=
if [ "${1:-}" = --asan ]; then
    asan_build=$(realpath "$2")
    shift 2
fi
build=$(realpath "$1")
results=$(realpath -m "$2")
shift 2
case_timeout=${VFIO_USER_TEST_TIMEOUT:-180}

passed=0
failed=0
skipped=0
failures=()

rm -rf "$results"
mkdir -p "$results"

# run NAME LOG CMD...: run CMD in its own process group, with a timeout
run() {
    local name=$1 log=$2
    shift 2
    setsid timeout -k 5 "$case_timeout" "$@" >"$log" 2>&1 </dev/null &
    local pid=$!
    wait $pid
    local rc=$?
    kill -KILL -- -$pid 2>/dev/null
    return $rc
}

record() {
    local name=$1 result=$2 log=$3
    case "$result" in
    pass) passed=$((passed + 1)); echo "PASS: $name" ;;
    skip) skipped=$((skipped + 1)); echo "SKIP: $name ($(sed -n 's/^ok .*# SKIP //p' "$log" | head -n 1))" ;;
    *)
        failed=$((failed + 1))
        failures+=("$name")
        echo "FAIL: $name (log: $log)"
        tail -n 15 "$log" | sed 's/^/    /'
        ;;
    esac
}

# The qtest runs once per target: most of it on x86_64; on aarch64 what
# x86 cannot do (8-byte accesses to I/O BARs).  On x86_64 it runs once
# more with glibc's malloc checking in QEMU, which aborts at the first
# heap corruption it sees instead of whenever the heap next breaks; and,
# with --asan, once more with everything (QEMU, the qtest, our servers)
# built with ASan and UBSan.
#
# The malloc checking is QEMU's only (a wrapper named like the binary,
# as the qtest tells the target from the name): the qtest forks a
# subprocess per hostile server, and its child then runs QEMU's RCU
# fork handler, which allocates; with libc_malloc_debug the allocator's
# lock may be held by another thread of the parent at the fork, and the
# child hangs (seen once in about 400 cases).
malloc_debug=$(ls /usr/lib/*/libc_malloc_debug.so.0 2>/dev/null | head -n 1)
ubsan_options=print_stacktrace=1:halt_on_error=1
test=tests/qtest/vfio-user-test
variants="x86_64 aarch64 x86_64:malloc-check ${asan_build:+x86_64:asan}"
for run_as in $variants; do
    arch=${run_as%%:*}
    variant=${run_as#"$arch"}
    # Relative paths: the qtest finds its servers from the build directory
    dir=$build
    [ "$variant" = :asan ] && dir=$asan_build
    cd "$dir"
    export VFIO_USER_SAMPLES=$dir/subprojects/libvfio-user/samples
    export QTEST_QEMU_BINARY=./qemu-system-$arch
    if [ ! -x "$test" ] || [ ! -x "$QTEST_QEMU_BINARY" ]; then
        record "$test ($run_as)" fail /dev/null
        continue
    fi
    env=()
    if [ "$variant" = :malloc-check ]; then
        if [ -z "$malloc_debug" ]; then
            record "$test (malloc-check: no libc_malloc_debug.so.0)" fail /dev/null
            continue
        fi
        wrapper_dir=$results/malloc-check-bin
        mkdir -p "$wrapper_dir"
        printf '#!/bin/sh\nLD_PRELOAD=%s GLIBC_TUNABLES=glibc.malloc.check=3 exec %s "$@"\n' \
            "$malloc_debug" "$dir/qemu-system-$arch" \
            >"$wrapper_dir/qemu-system-$arch"
        chmod +x "$wrapper_dir/qemu-system-$arch"
        env=(env QTEST_QEMU_BINARY="$wrapper_dir/qemu-system-$arch")
    fi
    for path in $("$test" -l | grep '^/'); do
        log=$results/$(echo "${path#/}$variant" | tr '/:' '__').log
        path_name=$path${variant:+ (${variant#:})}
        san_env=()
        if [ "$variant" = :asan ]; then
            # Every process of the case (QEMU, the qtest, servers) writes
            # its reports to a file of its own here (report.PID), whoever
            # holds its stderr and whether or not the test expected it to
            # die: any report fails the case.  UBSan cannot recover (built
            # so).  LeakSanitizer checks every process that exits (QEMU
            # does on the qtest's SIGTERM); nothing is suppressed.
            san=${log%.log}.sanitizer
            mkdir -p "$san"
            san_env=(env ASAN_OPTIONS="log_path=$san/report:detect_leaks=1"
                     UBSAN_OPTIONS="log_path=$san/report:$ubsan_options")
        fi
        run "$path_name" "$log" "${env[@]}" "${san_env[@]}" \
            "$test" --tap -p "$path"
        rc=$?
        if [ "$variant" = :asan ]; then
            # A file may hold only ASan's warning about swapcontext
            # (QEMU's coroutines): only a report fails the case
            reports=$(grep -l -e '^SUMMARY: ' -e 'runtime error:' \
                          -e 'ERROR: [A-Za-z]*Sanitizer' "$san"/* 2>/dev/null)
            if [ -n "$reports" ]; then
                # Whole reports, then what they found, where the summary
                # of a failure shows it
                cat $reports >>"$log"
                grep -h -e '^SUMMARY: ' -e 'runtime error:' $reports >>"$log"
                echo "sanitizer: $(echo "$reports" | wc -l) report(s)" \
                    "in $san" >>"$log"
                rc=1
            else
                rm -rf "$san"
            fi
        fi
        if [ $rc -eq 0 ] && grep -q '^ok .*# SKIP' "$log"; then
            record "$path_name" skip "$log"
        elif [ $rc -eq 0 ] && grep -q '^ok ' "$log" && ! grep -q '^not ok' "$log"; then
            record "$path_name" pass "$log"
        else
            [ $rc -eq 124 ] && echo "timed out after ${case_timeout}s" >>"$log"
            record "$path_name" fail "$log"
        fi
    done
done

cd "$build"
while [ $# -ge 2 ]; do
    name=$1
    log=$results/$(echo "$name" | tr -c 'a-zA-Z0-9\n' '_' | cut -c1-40).log
    run "$name" "$log" bash -c "$2"
    case $? in
    0) record "$name" pass "$log" ;;
    77) skipped=$((skipped + 1))
        echo "SKIP: $name ($(sed -n 's/^SKIP: //p' "$log" | head -n 1))" ;;
    *) record "$name" fail "$log" ;;
    esac
    shift 2
done

echo
if [ $failed -gt 0 ]; then
    echo "Failed: ${failures[*]}"
fi
echo "check: $passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
