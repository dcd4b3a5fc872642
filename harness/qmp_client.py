# A minimal QMP client for the harness's scripts: connect (retrying while
# QEMU starts), negotiate, send a command and return its answer; events
# that come meanwhile are dropped.
#
# SPDX-License-Identifier: GPL-2.0-or-later

import json
import socket
import time


class QMP:
    def __init__(self, path):
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile('rw')
        json.loads(self.file.readline())
        self.cmd('qmp_capabilities')

    def cmd(self, name, **args):
        self.file.write(json.dumps({'execute': name, 'arguments': args}))
        self.file.write('\n')
        self.file.flush()
        while True:
            msg = json.loads(self.file.readline())
            if 'return' in msg or 'error' in msg:
                return msg
