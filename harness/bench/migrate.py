#!/usr/bin/env python3
# make bench, section 4: migrate a VM between two QEMUs on this machine and
# print what query-migrate says it took, as one JSON object.
#
# usage: migrate.py QEMU_BIN WORK_DIR [RAW_SERVER SERVER_ARGS DEVICE_PROPS]
#   Without RAW_SERVER, the VM has no vfio-user device.  With it, each
#   QEMU gets a raw test server of its own (started with SERVER_ARGS, a
#   string split on spaces) and -device vfio-user-pci,socket=...DEVICE_PROPS.
#
# The VM: -M pc, TCG, 128 MiB, no disk (the firmware waits for a boot
# device).  Migration parameters are QEMU's defaults.
#
# SPDX-License-Identifier: GPL-2.0-or-later

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..'))
from qmp_client import QMP  # noqa: E402


def wait_socket(path, proc):
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError('server did not start: ' + path)
        time.sleep(0.01)


def main():
    if len(sys.argv) not in (3, 6):
        sys.exit('usage: migrate.py QEMU_BIN WORK_DIR '
                 '[RAW_SERVER SERVER_ARGS DEVICE_PROPS]')
    qemu, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    procs = []
    try:
        vms = {}
        for side in ('src', 'dst'):
            args = [qemu, '-M', 'pc', '-accel', 'tcg', '-m', '128',
                    '-display', 'none', '-nodefaults',
                    '-qmp', 'unix:%s/%s.qmp,server=on,wait=off' % (work, side)]
            if len(sys.argv) == 6:
                sock = '%s/%s.sock' % (work, side)
                if os.path.exists(sock):
                    os.unlink(sock)
                srv = subprocess.Popen([sys.argv[3]] + sys.argv[4].split() +
                                       [sock], stdout=subprocess.DEVNULL)
                procs.append(srv)
                wait_socket(sock, srv)
                args += ['-device',
                         'vfio-user-pci,socket=%s%s' % (sock, sys.argv[5])]
            if side == 'dst':
                args += ['-incoming', 'unix:%s/migration' % work]
            err = open('%s/%s.err' % (work, side), 'w')
            procs.append(subprocess.Popen(args, stderr=err))
            vms[side] = QMP('%s/%s.qmp' % (work, side))
        # Let the firmware settle
        time.sleep(1)
        rsp = vms['src'].cmd('migrate', uri='unix:%s/migration' % work)
        if 'error' in rsp:
            print(json.dumps({'error': rsp['error']['desc']}))
            return 1
        while True:
            info = vms['src'].cmd('query-migrate')['return']
            if info.get('status') in ('completed', 'failed', 'cancelled'):
                break
            time.sleep(0.01)
        out = {'status': info['status'],
               'total_ms': info.get('total-time'),
               'downtime_ms': info.get('downtime'),
               'setup_ms': info.get('setup-time'),
               'ram_bytes': info.get('ram', {}).get('transferred'),
               'vfio_bytes': info.get('vfio', {}).get('transferred'),
               'error': info.get('error-desc')}
        print(json.dumps(out))
        return 0 if info['status'] == 'completed' else 1
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == '__main__':
    sys.exit(main())
