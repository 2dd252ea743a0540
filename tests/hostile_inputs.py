"""Helpers for the hostile-input catalogues: files that are not files.

A FIFO read by code that does not refuse it would block forever; the
`fifo` helper keeps a small process (not a thread: h5py opens files
holding the GIL) that opens and closes the FIFO's write end whenever a
reader appears, so such code sees end-of-file and the test fails (on the
wrong message) instead of hanging.
"""

import contextlib
import os
import subprocess
import sys

UNBLOCK = """
import os, sys, time
while True:
    try:
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        break
    except OSError:             # ENXIO: no reader at the moment
        time.sleep(0.02)
        continue
    os.close(fd)
    time.sleep(0.02)
"""


@contextlib.contextmanager
def fifo(path):
    """Make a FIFO at `path`; yield its path while unblocking readers."""
    os.mkfifo(path)
    helper = subprocess.Popen([sys.executable, "-S", "-c", UNBLOCK, str(path)])
    try:
        yield str(path)
    finally:
        helper.kill()
        helper.wait()


def symlink(path, target):
    os.symlink(target, path)
    return str(path)


@contextlib.contextmanager
def special(kind, path):
    """`path` made into one of: 'zero' (a symlink to /dev/zero... named as
    the file), 'urandom' (a symlink to /dev/urandom), 'fifo'."""
    if kind == "fifo":
        with fifo(path) as p:
            yield p
    else:
        yield symlink(path, {"zero": "/dev/zero",
                             "urandom": "/dev/urandom"}[kind])


SPECIAL_WORDS = {"zero": "character device", "urandom": "character device",
                 "fifo": "FIFO"}
