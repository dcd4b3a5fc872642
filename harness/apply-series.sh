#!/bin/bash
# Apply the patch series kept in this repository to a QEMU git tree that is
# at the pristine base: one commit per step of patches/series.
#
# usage: apply-series.sh REPO TREE
#
# A step NAME has patches/NAME.msg (its commit message, subject first),
# and optionally patches/NAME.diff (changes to files QEMU already has) and
# patches/NAME.files (new files, as paths in both REPO and TREE).
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

repo=$(realpath "$1")
tree=$(realpath "$2")
author=${VFIO_USER_AUTHOR:-"vfio-user-pci developers <vfio-user-pci@example.org>"}

cd "$tree"
while read -r step; do
    case "$step" in ''|'#'*) continue ;; esac
    msg=$repo/patches/$step.msg
    if [ ! -f "$msg" ]; then
        echo "apply-series: step $step has no $msg" >&2
        exit 1
    fi
    if [ -f "$repo/patches/$step.diff" ]; then
        if ! git apply --index "$repo/patches/$step.diff" 2>apply.err; then
            echo "apply-series: patch $step.diff does not apply:" >&2
            sed 's/^/  /' apply.err >&2
            rm -f apply.err
            exit 1
        fi
        rm -f apply.err
    fi
    if [ -f "$repo/patches/$step.files" ]; then
        while read -r f; do
            case "$f" in ''|'#'*) continue ;; esac
            if [ ! -f "$repo/$f" ]; then
                echo "apply-series: step $step lists missing file $f" >&2
                exit 1
            fi
            mkdir -p "$(dirname "$f")"
            cp "$repo/$f" "$f"
            git add "$f"
        done < "$repo/patches/$step.files"
    fi
    git -c user.name="${author% <*}" -c user.email="$(echo "$author" | sed 's/.*<\(.*\)>/\1/')" \
        commit -q --no-verify -F "$msg"
done < "$repo/patches/series"
