#!/bin/bash
# Fetch Debian's qemu source package and unpack it, with Debian's own patch
# series applied, into a pristine git tree: the base our series applies to.
#
# usage: fetch-qemu.sh BASE_VERSION_FILE DOWNLOAD_DIR PRISTINE_DIR
#
# The version recorded in BASE_VERSION_FILE is what the series is tested on.
# If the registry serves another 10.0.x, it is used with a warning; any other
# upstream version is refused.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

want=$(tr -d '[:space:]' < "$1")
dl=$(realpath -m "$2")
pristine=$(realpath -m "$3")

mkdir -p "$dl"
cd "$dl"
if ! ls qemu_*.dsc >/dev/null 2>&1; then
    if ! apt-get source --download-only "qemu=$want" >fetch.log 2>&1; then
        echo "fetch-qemu: qemu $want is not served; trying the newest qemu source" >&2
        apt-get source --download-only qemu >>fetch.log 2>&1 || {
            cat fetch.log >&2
            echo "fetch-qemu: apt-get source qemu failed (is the deb-src entry there?)" >&2
            exit 1
        }
    fi
fi
dsc=$(ls qemu_*.dsc | sort -V | tail -n 1)
have=$(sed -n 's/^Version: //p' "$dsc")
upstream=${have#*:}
upstream=${upstream%%+*}
upstream=${upstream%%-*}
case "$upstream" in
10.0.*) ;;
*)
    echo "fetch-qemu: registry serves qemu $have, not a 10.0.x: refusing" >&2
    exit 1
    ;;
esac
if [ "$have" != "$want" ]; then
    echo "fetch-qemu: WARNING: base is qemu $have, the series is tested on $want" >&2
fi

if [ "$(cat "$pristine/.git/debian-version" 2>/dev/null)" = "$have" ]; then
    exit 0
fi
rm -rf "$pristine" "$pristine.tmp"
dpkg-source --no-check -x "$dsc" "$pristine.tmp" >unpack.log 2>&1 || {
    cat unpack.log >&2
    echo "fetch-qemu: dpkg-source -x $dsc failed" >&2
    exit 1
}
cd "$pristine.tmp"
# Debian's packaging is not part of what QEMU's maintainers see.
rm -rf debian .pc
git init -q -b base
git -c user.name=base -c user.email=base@localhost add -A -f
git -c user.name=base -c user.email=base@localhost \
    commit -q -m "QEMU $have as packaged by Debian (pristine base)"
echo "$have" > .git/debian-version
cd - >/dev/null
mv "$pristine.tmp" "$pristine"
