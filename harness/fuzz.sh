#!/bin/bash
# Build and run the libFuzzer target of tests/fuzz/vfio-user/ (the checks
# of hw/vfio-user/check.c) with Debian's clang, ASan and UBSan.
#
# usage: fuzz.sh REPO QEMU_BUILD_DIR WORK_DIR SECONDS
#
# check.c and the target are compiled with clang and the flags meson gave
# check.c; they link against the libqemuutil.a of the QEMU build (Error,
# the JSON parser), as QEMU's own test programs do.  The run starts from
# the seed corpus in tests/fuzz/vfio-user/corpus (copied: what the run
# finds stays in WORK_DIR) and fails on any crash, sanitizer report,
# broken assertion or leak, leaving the input that did it in WORK_DIR.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

repo=$(realpath "$1")
build=$(realpath "$2")
work=$(realpath -m "$3")
seconds=$4

if ! command -v clang >/dev/null; then
    echo "SKIP: clang is not installed"
    exit 77
fi
mkdir -p "$work/obj" "$work/corpus"

# The flags meson compiles check.c with, minus what only gcc knows
flags=$(python3 - "$build" <<'PY'
import json, shlex, sys
build = sys.argv[1]
for entry in json.load(open(build + '/compile_commands.json')):
    if entry['file'].endswith('hw/vfio-user/check.c'):
        args = shlex.split(entry['command'])
        break
else:
    sys.exit('check.c is not in compile_commands.json')
drop_next = {'-o', '-MQ', '-MF', '-c'}
gcc_only = ('-fzero-call-used-regs', '-Wold-style-declaration',
            '-Wimplicit-fallthrough=', '-ftrivial-auto-var-init',
            '-Werror', '-MD', '-O', '-g', '-fstack-protector',
            '-Wmissing-format-attribute', '-Wshadow=local')
out, skip = [], False
for a in args[2:]:
    if skip:
        skip = False
        continue
    if a in drop_next:
        skip = True
        continue
    if a.endswith('.c') or a.startswith(gcc_only):
        continue
    out.append(a)
print(' '.join(shlex.quote(a) for a in out))
PY
)
# How meson links QEMU's own test programs against libqemuutil.a
libs=$(sed -n '/^build tests\/qtest\/vfio-user-test:/{n;p}' \
       "$build/build.ninja" | sed 's/^ *LINK_ARGS = //')

sanitize="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
cd "$build"
eval clang -g -O1 $sanitize $flags -c "$repo/hw/vfio-user/check.c" \
    -o "$work/obj/check.o"
eval clang -g -O1 $sanitize $flags -c \
    "$repo/tests/fuzz/vfio-user/fuzz-check.c" -o "$work/obj/fuzz-check.o"
eval clang -g $sanitize "$work/obj/check.o" "$work/obj/fuzz-check.o" \
    $libs -o "$work/vfio-user-fuzz"

cp "$repo"/tests/fuzz/vfio-user/corpus/* "$work/corpus/"
cd "$work"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
./vfio-user-fuzz -max_total_time="$seconds" -max_len=4096 \
    -print_final_stats=1 corpus >fuzz.log 2>&1 || status=$?
grep -E '^#[0-9]+ +(INITED|DONE)' fuzz.log || true
if [ "$status" -ne 0 ]; then
    echo "fuzz: the target failed (status $status); see $work/fuzz.log"
    tail -n 40 fuzz.log
    exit 1
fi
echo "fuzz: $(sed -n 's/^stat::number_of_executed_units: *//p' fuzz.log) inputs in ${seconds} s, no failure"
