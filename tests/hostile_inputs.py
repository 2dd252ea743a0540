"""Helpers for the hostile-input catalogues: files that are not files.

A FIFO read by code that does not refuse it would block forever; the
`fifo` helper keeps a thread that opens and closes the FIFO's write end
whenever a reader appears, so such code sees end-of-file and the test
fails (on the wrong message) instead of hanging.
"""

import contextlib
import os
import threading
import time


@contextlib.contextmanager
def fifo(path):
    """Make a FIFO at `path`; yield its path while unblocking readers."""
    os.mkfifo(path)
    stop = threading.Event()

    def unblock():
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:         # ENXIO: no reader at the moment
                time.sleep(0.02)
                continue
            os.close(fd)
            time.sleep(0.02)

    t = threading.Thread(target=unblock, daemon=True)
    t.start()
    try:
        yield str(path)
    finally:
        stop.set()
        t.join()


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
