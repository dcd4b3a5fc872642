#!/usr/bin/env python3
# Write the seed corpus of tests/fuzz/vfio-user/fuzz-check.c: one valid
# message for each check, and a few near misses.  Run it to regenerate
# tests/fuzz/vfio-user/corpus/ (the files are kept in git).
#
# SPDX-License-Identifier: GPL-2.0-or-later
import os
import struct
import sys

VERSION, REGION_INFO, ERRNO, IO_FDS = range(4)
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'corpus')
os.makedirs(out, exist_ok=True)


def hdr(msg_id, command, size, flags=1, error=0):
    return struct.pack('<HHIII', msg_id, command, size, flags, error)


def seed(name, kind, body):
    with open(os.path.join(out, name), 'wb') as f:
        f.write(bytes([kind]) + body)


def version(caps):
    payload = struct.pack('<HH', 0, 1) + caps
    return hdr(0, 1, 16 + len(payload)) + payload


seed('version-caps', VERSION, version(
    b'{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,'
    b'"migration":{"pgsize":4096}}}\0'))
seed('version-bare', VERSION, version(b''))
seed('version-no-nul', VERSION, version(b'{"capabilities":{}}'))

# struct vfio_region_info: argsz flags index cap_offset size offset
CAPS, MMAP = 1 << 3, 1 << 2
sparse = struct.pack('<HHIII', 1, 1, 0, 2, 0) + \
    struct.pack('<QQ', 0, 0x1000) + struct.pack('<QQ', 0x2000, 0x1000)
info = struct.pack('<IIIIQQ', 32 + len(sparse), CAPS | MMAP | 3, 1, 32,
                   0x4000, 0) + sparse
seed('region-sparse', REGION_INFO, info)
seed('region-plain', REGION_INFO,
     struct.pack('<IIIIQQ', 32, 3, 0, 0, 0x1000, 0))

seed('errno-eio', ERRNO, hdr(1, 9, 16, 0x21, 5))
seed('errno-huge', ERRNO, hdr(1, 9, 16, 0x21, 0x80000001))


def iofds(entries, stride, nfds):
    body = b''.join(entries)
    argsz = 16 + len(body)
    msg = hdr(2, 6, 32 + len(body)) + \
        struct.pack('<IIII', argsz, 0, 0, len(entries)) + body
    return bytes([nfds]) + msg


e40 = struct.pack('<QQIIIIQ', 0x100, 4, 0, 0, 0, 0, 0)
e40b = struct.pack('<QQIIIIQ', 0x200, 8, 1, 1, 0, 0, 7)
e48 = struct.pack('<QQIIIIQQ', 0x108, 4, 0, 2, 0, 1, 8, 0)
seed('iofds-40', IO_FDS, iofds([e40, e40b], 40, 2))
seed('iofds-48', IO_FDS, iofds([e48], 48, 2))
