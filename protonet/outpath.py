"""Checking where output goes before any work, and naming the path when an
OS error happens on output.

Every tool that writes a file (`compute-mean`, `upgrade`, `draw`, the
solver's snapshots) calls `check_output_file` or `probe_folder` before its
work, so a missing folder, a directory given as the file, or a read-only
folder is reported at once with the path, not as a raw `OSError` after the
work is done.  `writing(path)` turns an OS error during the write itself
(ENOSPC, EROFS, EACCES, ...) into an `OutputError` naming the path.
"""

import contextlib
import errno
import os

from .errors import OutputError


def output_error(err, path, what="output file"):
    """An OutputError for the OSError `err` raised while writing `path`."""
    reason = err.strerror or str(err)
    hint = {errno.ENOSPC: " (the disk is full)",
            errno.EDQUOT: " (disk quota exceeded)",
            errno.EROFS: " (a read-only file system)",
            errno.EACCES: " (permission denied)"}.get(err.errno, "")
    return OutputError(f"{what} '{path}': cannot write: {reason}{hint}")


@contextlib.contextmanager
def writing(path, what="output file"):
    """Turn an OSError raised in the block into an OutputError naming
    `path`."""
    try:
        yield
    except OSError as e:
        raise output_error(e, path, what) from None


def probe_folder(folder, what, path):
    """Create and remove a small file in `folder` (synced, so a full disk
    shows too); raise OutputError naming `path` when that fails."""
    probe = os.path.join(folder, f".protonet-probe-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"{what} '{path}': cannot write in the folder '{folder}': "
            f"{e.strerror or e}") from None


def check_output_file(path, what="output file"):
    """Raise OutputError unless `path` can be written as a file: it is not
    empty, not an existing directory, and its folder exists, is a folder and
    is writable.  Returns `path`."""
    path = os.fspath(path)
    if not path:
        raise OutputError(f"{what}: empty path")
    if os.path.isdir(path):
        raise OutputError(f"{what} '{path}' is a directory; give a file name "
                          "inside it")
    if os.path.exists(path) and not os.path.isfile(path):
        raise OutputError(f"{what} '{path}' exists and is not a regular file")
    folder = os.path.dirname(os.path.abspath(path))
    problem = folder_problem(folder)
    if problem:
        raise OutputError(f"{what} '{path}': {problem}")
    probe_folder(folder, what, path)
    return path


def folder_problem(folder):
    """Why `folder` cannot hold files (missing, or under a file), or None."""
    if os.path.isdir(folder):
        return None
    up = folder
    while up and not os.path.exists(up) and os.path.dirname(up) != up:
        up = os.path.dirname(up)
    if up != folder and os.path.isdir(up):
        return f"the folder '{folder}' does not exist"
    return f"'{up}' is a file, not a folder"


def check_output_folder(path, what="output folder"):
    """Raise OutputError unless the folder `path` (a database, a data set
    folder) can be created or written: the nearest existing ancestor must
    be a writable folder.  Returns `path`."""
    path = os.fspath(path)
    if not path:
        raise OutputError(f"{what}: empty path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{what} '{path}' exists and is not a folder")
    up = os.path.abspath(path)
    while not os.path.exists(up) and os.path.dirname(up) != up:
        up = os.path.dirname(up)
    if not os.path.isdir(up):
        raise OutputError(f"{what} '{path}': '{up}' is a file, not a folder")
    probe_folder(up, what, path)
    return path
