#!/bin/bash
# Export the series as git format-patch files with a cover letter, made on
# a fresh clone of the pristine base.
#
# usage: export-series.sh REPO PRISTINE OUTDIR
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

repo=$(realpath "$1")
pristine=$(realpath "$2")
out=$(realpath -m "$3")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

git clone -q "$pristine" "$work/qemu"
"$repo/harness/apply-series.sh" "$repo" "$work/qemu"

rm -rf "$out"
git -C "$work/qemu" format-patch -q --cover-letter --thread=shallow \
    -o "$out" origin/base..HEAD

# Subject and blurb of the cover letter come from patches/cover-letter
cover=$(ls "$out"/0000-cover-letter.patch)
subject=$(head -n 1 "$repo/patches/cover-letter")
base=$(cat "$pristine/.git/debian-version")
python3 - "$cover" "$subject" "$repo/patches/cover-letter" "$base" <<'PY'
import sys
path, subject, blurb_file, base = sys.argv[1:]
blurb = open(blurb_file).read().split('\n', 1)[1].strip('\n')
blurb += '\n\nBased on QEMU %s as packaged by Debian.' % base
text = open(path).read()
text = text.replace('*** SUBJECT HERE ***', subject)
text = text.replace('*** BLURB HERE ***', blurb)
open(path, 'w').write(text)
PY
echo "export-series: $(ls "$out" | wc -l) files in $out"
