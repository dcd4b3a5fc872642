#!/bin/bash
# Check the exported series: it applies with git am onto the pristine base,
# the result is what was built and tested (TREE), and QEMU's checkpatch.pl
# finds no errors and no warnings in it.
#
# usage: check-series.sh PRISTINE TREE SERIES_DIR
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

pristine=$(realpath "$1")
tree=$(realpath "$2")
series=$(realpath "$3")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0

git clone -q "$pristine" "$work/qemu"
cd "$work/qemu"
for p in "$series"/[0-9][0-9][0-9][0-9]-*.patch; do
    case "$p" in */0000-cover-letter.patch) continue ;; esac
    if ! git -c user.name=check -c user.email=check@localhost am -q "$p" \
            >"$work/am.log" 2>&1; then
        echo "check-series: $(basename "$p") does not apply:"
        sed 's/^/  /' "$work/am.log"
        exit 1
    fi
done
echo "check-series: $(git rev-list --count origin/base..HEAD) patches apply with git am"

for f in $(git diff --name-only origin/base HEAD); do
    if ! cmp -s "$f" "$tree/$f"; then
        echo "check-series: $f differs from the built tree ($tree)"
        status=1
    fi
done
[ $status -eq 0 ] && echo "check-series: the series is what was built"

if ! ./scripts/checkpatch.pl "$series"/[0-9][0-9][0-9][0-9]-*.patch \
        >"$work/checkpatch.log" 2>&1; then
    status=1
fi
grep -E '^(ERROR|WARNING)|^total:|has no obvious style problems|has style problems' \
    "$work/checkpatch.log" || true
if grep -q '^\(ERROR\|WARNING\)' "$work/checkpatch.log"; then
    status=1
fi
exit $status
