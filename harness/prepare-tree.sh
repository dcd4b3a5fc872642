#!/bin/bash
# Keep TREE equal to the pristine base plus our patch series.
#
# usage: prepare-tree.sh REPO PRISTINE TREE
#
# When the series itself (patches/) changed, TREE is reset to the base and
# the series re-applied, one commit per step.  Otherwise only the new files
# whose content changed are copied, so an edit under hw/vfio-user/ rebuilds
# just that file.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

repo=$(realpath "$1")
pristine=$(realpath "$2")
tree=$(realpath -m "$3")

stamp=$(cd "$repo" && cat patches/series patches/*.msg \
            $(ls patches/*.diff patches/*.files 2>/dev/null) \
            "$pristine/.git/debian-version" | sha256sum | cut -d' ' -f1)

if [ ! -d "$tree/.git" ]; then
    git clone -q "$pristine" "$tree"
fi

if [ "$(cat "$tree/.git/series-stamp" 2>/dev/null)" != "$stamp" ]; then
    cd "$tree"
    git fetch -q origin
    git checkout -q -f -B series origin/base
    # Untracked leftovers of an older series, but never the build
    # directories (the main one and the Makefile's sanitizer build)
    git clean -q -fd -e /build -e /build-asan
    rm -f .git/series-stamp
    "$repo/harness/apply-series.sh" "$repo" "$tree"
    echo "$stamp" > .git/series-stamp
    echo "prepare-tree: applied $(git rev-list --count origin/base..HEAD) patches to $(cat "$pristine/.git/debian-version")"
    exit 0
fi

cd "$repo"
cat patches/*.files 2>/dev/null | while read -r f; do
    case "$f" in ''|'#'*) continue ;; esac
    if ! cmp -s "$f" "$tree/$f"; then
        cp "$f" "$tree/$f"
    fi
done
