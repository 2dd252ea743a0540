"""Reading input files safely: regular files only, bounded by the memory limit.

Every file protonet reads (nets, solvers, weights, mean files, list files,
images, HDF5 sources, sidecars) is untrusted.  A device (`/dev/zero`), a
symlink to one (`/dev/urandom`) or a FIFO would be read until memory runs
out or block forever, so only regular files are accepted; `/dev/stdin`,
when named explicitly, is allowed and read up to the memory limit.

`read_file` opens with O_NONBLOCK (opening a FIFO then returns at once
instead of waiting for a writer) and checks the *open* descriptor with
`fstat`, so a file swapped for a FIFO between a check and the open is still
refused.  Files opened by name by other libraries (h5py, LMDB) get
`check_regular` on the path just before.
"""

import os
import stat

from . import limits
from .errors import DataError, ParseError, ResourceError

#: Devices a user may name explicitly (they are read up to the limit).
ALLOWED_DEVICES = ("/dev/stdin",)
_CHUNK = 1 << 20


def _kind(mode):
    for test, name in ((stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _raise(error, path, message, who=None):
    if error is ParseError:
        raise ParseError(message, str(path))
    raise error(f"{who + ': ' if who else ''}{path}: {message}")


def _not_regular(path, mode, what, error, who=None):
    link = " (through a symlink)" if os.path.islink(path) else ""
    _raise(error, path, f"is {_kind(mode)}{link}, expected {what} as a "
           "regular file", who)


def check_regular(path, what="a file", error=ParseError, who=None):
    """Stat `path` (following symlinks) and raise `error` naming it (after
    `who`, e.g. the layer) unless it is an existing regular file.  Returns
    the os.stat_result."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _raise(error, path, "file not found", who)
    except OSError as e:
        _raise(error, path, f"cannot read: {e.strerror}", who)
    if not stat.S_ISREG(st.st_mode) and str(path) not in ALLOWED_DEVICES:
        _not_regular(path, st.st_mode, what, error, who)
    return st


def check_size(path, nbytes, what, factor=1):
    """Raise ResourceError when reading `nbytes` (expanding `factor` times
    in memory) would pass the memory limit."""
    need = nbytes * factor
    cap = limits.max_memory()
    if cap is not None and need > cap:
        grow = f" (x{factor} once parsed)" if factor != 1 else ""
        raise ResourceError(
            f"{path}: {what} of {limits.format_bytes(nbytes)}{grow} needs "
            f"{limits.format_bytes(need)}, more than the memory limit of "
            f"{limits.format_bytes(cap)}; {limits.how_to_raise()}")


def read_file(path, what="a file", error=ParseError, factor=1, who=None):
    """The bytes of the regular file `path`, refused before reading when it
    is not a regular file or its size (times `factor`, the expansion once
    parsed) passes the memory limit.  Errors are `error` (ResourceError
    for the size) naming `who` (when given) and the file."""
    path = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        _raise(error, path, "file not found", who)
    except IsADirectoryError:
        _raise(error, path, f"is a directory, expected {what}", who)
    except OSError as e:
        _raise(error, path, f"cannot read: {e.strerror}", who)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            if path not in ALLOWED_DEVICES:
                _not_regular(path, st.st_mode, what, error, who)
            os.set_blocking(fd, True)
        check_size(path, st.st_size, what, factor)
        try:    # one read of the known size: no second copy of a big file
            data = f.read(st.st_size) if st.st_size else b""
            if not f.peek(1):       # at the end (a BufferedReader)
                return data
        except OSError as e:
            _raise(error, path, f"cannot read: {e.strerror}")
        return _read_bounded(f, path, what, factor, error, data)


def _read_bounded(f, path, what, factor, error, head=b""):
    """Read the rest, refusing as soon as the data passes the limit (a
    file that grows while read, /dev/stdin, /proc files of size 0)."""
    cap = limits.max_memory()
    chunks, total = [head], len(head)
    try:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if cap is not None and total * factor > cap:
                check_size(path, total, what, factor)
            chunks.append(chunk)
    except OSError as e:
        _raise(error, path, f"cannot read: {e.strerror}")
    return b"".join(chunks)


def decode_lines(data, path, who, error=DataError):
    """The text of a list file, one string per line; invalid UTF-8 raises
    `error` naming the file and the line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        bad = data[e.start:e.start + 1]
        raise error(f"{who}: {path}:{line}: invalid UTF-8 (byte {bad!r} at "
                    f"offset {e.start}); list files must be UTF-8 text") \
            from None
    return text.splitlines()


def read_list_file(path, who, what="a list file"):
    """The lines of a UTF-8 list file (image list, HDF5 source list):
    regular file only, bounded by the memory limit (x8 for the Python
    strings), decoding errors named by file and line."""
    data = read_file(path, what, DataError, factor=8, who=who)
    return decode_lines(data, path, who)
