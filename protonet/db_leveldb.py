"""LevelDB databases of `Datum` records, as Caffe's `db::LevelDB`.

Mirrors: src/caffe/util/db_leveldb.cpp.

A database is a folder that LevelDB owns; records are read in LevelDB's key
order (bytewise), as Caffe's cursor does, and written in batches of 1000
(Caffe's tools commit every 1000).  The options are Caffe's: block_size 64 KiB,
write_buffer_size 256 MiB, max_open_files 100; a new database must not exist
yet.  The `plyvel` binding is imported only when a LevelDB is used; without
it a ProtonetError names the extra to install.

LevelDB lets one process open a database once, yet a train and a test net
(or two nets) may read the same one: the handle is shared and reference
counted.
"""

import os

from .db import BatchedWriter, SharedHandles
from .errors import DataError, ProtonetError

_OPTIONS = dict(block_size=65536, write_buffer_size=268435456,
                max_open_files=100)


def require_plyvel():
    """Import `plyvel` or raise a ProtonetError saying how to install it."""
    try:
        import plyvel
    except ImportError:
        raise ProtonetError(
            "LevelDB databases (backend: LEVELDB, the default backend of "
            "data_param) need the plyvel package; install it with `pip "
            "install protonet[leveldb]` (or `pip install plyvel`), or "
            "rebuild the data as LMDB with `protonet convert-imageset "
            "--backend lmdb` and set `backend: LMDB`") from None
    return plyvel


def _open(path):
    plyvel = require_plyvel()
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such LevelDB database (expected a "
                        "folder holding CURRENT and *.ldb files)")
    try:
        return plyvel.DB(path, create_if_missing=False, **_OPTIONS)
    except (plyvel.Error, OSError) as e:
        hint = ""
        if os.path.exists(os.path.join(path, "data.mdb")):
            hint = (" (it holds data.mdb: an LMDB database; set "
                    "`backend: LMDB`, data_param's default being LEVELDB)")
        raise DataError(f"{path}: cannot open LevelDB database: {e}{hint}") \
            from None


_DBS = SharedHandles(_open)
_acquire, _release = _DBS.acquire, _DBS.release


class Cursor:
    """A read-only LevelDB cursor in key order that wraps to the first
    record; the same interface as `protonet.db.Cursor`."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.db = _acquire(self.path)
        self.snapshot = self.db.snapshot()
        self.it = self.snapshot.iterator()
        self._item = None
        if not self._step():
            self.close()
            raise DataError(f"{self.path}: the LevelDB database holds no "
                            "records")

    def _step(self):
        try:
            self._item = next(self.it)
            return True
        except StopIteration:
            return False

    def key(self):
        return self._item[0]

    def value(self):
        return self._item[1]

    def next(self):
        """Advance; at the end restart from the first record (returns True
        when it wrapped)."""
        if self._step():
            return False
        self.it.seek_to_start()
        self._step()
        return True

    def seek(self, key):
        """Position at `key` (bytes); DataError when it is absent."""
        self.it.seek(key)
        if not self._step() or self._item[0] != key:
            self.it.seek_to_start()
            self._step()
            raise DataError(f"{self.path}: record key {key!r} not found "
                            "(was the database rebuilt since the snapshot?)")

    def close(self):
        if self.db is not None:
            self.it.close()
            self.snapshot.close()
            _release(self.path)
            self.db = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __len__(self):
        return sum(1 for _ in self.snapshot.iterator(include_value=False))


def read_items(path):
    """Yield (key, serialized value) for every record, in key order."""
    path = os.fspath(path)
    handle = _acquire(path)
    try:
        with handle.snapshot() as snap:
            with snap.iterator() as it:
                yield from it
    finally:
        _release(path)


class Writer(BatchedWriter):
    """Create a NEW LevelDB database and put records (see
    protonet.db.BatchedWriter)."""

    def __init__(self, path):
        plyvel = require_plyvel()
        self.path = os.fspath(path)
        self.refuse_existing(self.path)
        try:
            self.handle = plyvel.DB(self.path, create_if_missing=True,
                                    error_if_exists=True, **_OPTIONS)
        except (plyvel.Error, OSError) as e:
            raise DataError(f"{self.path}: cannot create LevelDB database: "
                            f"{e}") from None
        self.pending = []

    def _write(self, pairs):
        with self.handle.write_batch() as batch:
            for k, v in pairs:
                batch.put(k, v)

    def _close(self):
        self.handle.close()


