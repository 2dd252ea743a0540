"""Key/value databases of `Datum` records, as Caffe's `db::DB` (LMDB).

Mirrors: src/caffe/util/db_lmdb.cpp, src/caffe/util/io.cpp (CVMatToDatum,
DecodeDatum*) and include/caffe/util/db.hpp.

A database is a folder with LMDB's `data.mdb` / `lock.mdb`; keys are bytes
(Caffe's `%08d_<filename>`), values serialized `caffe_pb2.Datum`.  The `lmdb`
package and Pillow are imported only when needed, with an error saying how
to install them.  Pixels are kept in Caffe's (OpenCV's) BGR channel order.

LevelDB (`backend: LEVELDB`) lives in protonet.db_leveldb (optional
`plyvel`); `open_cursor`, `read_datums` and `open_writer` dispatch on the
backend.
"""

import io as _pyio
import math
import os
import threading

import numpy as np

from . import limits
from .errors import DataError, ProtonetError
from .lmdb_check import check_data_file
from .proto import caffe_pb2

LMDB, LEVELDB = 1, 0
_COMMIT_EVERY = 1000


def require_lmdb():
    """Import the `lmdb` package or raise a ProtonetError saying how."""
    try:
        import lmdb
    except ImportError:
        raise ProtonetError("LMDB databases need the lmdb package; install it "
                            "with `pip install lmdb` (or `pip install "
                            "protonet[lmdb]`)") from None
    return lmdb


def require_pil():
    """Import Pillow's Image module or raise a ProtonetError saying how."""
    try:
        from PIL import Image
    except ImportError:
        raise ProtonetError("reading or writing images needs Pillow; install "
                            "it with `pip install Pillow` (or `pip install "
                            "protonet[images]`)") from None
    return Image


def check_backend(backend, path):
    """The backend (DataParameter.DB value or name) as LMDB or LEVELDB;
    DataError for any other."""
    if backend in (LEVELDB, "leveldb", "LEVELDB"):
        return LEVELDB
    if backend not in (LMDB, "lmdb", "LMDB"):
        raise DataError(f"{path}: unknown database backend {backend!r} "
                        "(lmdb or leveldb)")
    return LMDB


def open_cursor(path, backend=LMDB):
    """A wrapping read cursor over the database at `path`."""
    if check_backend(backend, path) == LEVELDB:
        from . import db_leveldb
        return db_leveldb.Cursor(path)
    return Cursor(path)


def open_writer(path, backend=LMDB):
    """A Writer creating a new database at `path`."""
    if check_backend(backend, path) == LEVELDB:
        from . import db_leveldb
        return db_leveldb.Writer(path)
    return Writer(path)


# ---------------------------------------------------------------------------
# Reading

def lmdb_error(path, e, key=None):
    """A DataError naming the database (and the record key) for an
    lmdb.Error raised while reading it."""
    at = f", record {_show_key(key)}" if key is not None else ""
    return DataError(f"{path}{at}: LMDB error {type(e).__name__}: {e} (is "
                     "the database corrupted?)")


class SharedHandles:
    """Open database handles shared by path, with a count of users.

    py-lmdb refuses to open one environment twice in a process (LevelDB
    locks its folder), yet a train and a test net, or two nets, may read
    the same database.  `acquire(path)` opens it on first use with
    `open_fn(path)`; `release(path)` closes it when its last user is done.
    The lock is re-entrant: a Cursor collected (its __del__ releases its
    handle) while this thread holds the lock, e.g. during LMDB's page check,
    must not deadlock.
    """

    def __init__(self, open_fn):
        self.open_fn = open_fn
        self.entries = {}       # real path -> [handle, users]
        self.lock = threading.RLock()

    def acquire(self, path):
        real = os.path.realpath(path)
        with self.lock:
            entry = self.entries.get(real)
            if entry is None:
                entry = self.entries[real] = [self.open_fn(path), 0]
            entry[1] += 1
            return entry[0]

    def release(self, path):
        real = os.path.realpath(path)
        with self.lock:
            entry = self.entries.get(real)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self.entries[real]
                entry[0].close()


def _open_env(path):
    lmdb = require_lmdb()
    check_data_file(path)     # no SIGBUS / abort in LMDB
    try:
        return lmdb.open(path, readonly=True, lock=False, readahead=False,
                         max_readers=512)
    except lmdb.Error as e:
        raise DataError(f"{path}: cannot open LMDB database: {e}") from None


_ENVS = SharedHandles(_open_env)
_acquire_env, _release_env = _ENVS.acquire, _ENVS.release


class Cursor:
    """A read-only LMDB cursor that wraps around to the first record.

    Opened inside the thread that uses it (LMDB read transactions belong to
    one thread unless opened without locks, which is what is done here,
    as Caffe's MDB_RDONLY | MDB_NOTLS).
    """

    def __init__(self, path):
        lmdb = require_lmdb()
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise DataError(f"{self.path}: no such LMDB database (expected a "
                            "folder holding data.mdb)")
        self._lmdb = lmdb
        self.env = _acquire_env(self.path)
        try:
            self.txn = self.env.begin(buffers=False)
            self.cursor = self.txn.cursor()
            found = self.cursor.first()
        except lmdb.Error as e:
            _release_env(self.path)
            self.env = None
            raise lmdb_error(self.path, e) from None
        if not found:
            self.close()
            raise DataError(f"{self.path}: the LMDB database holds no records")

    def _call(self, method, *args):
        """cursor.method(*args), with lmdb errors naming the database and
        the current record's key."""
        try:
            return getattr(self.cursor, method)(*args)
        except self._lmdb.Error as e:
            try:
                key = self.cursor.key()
            except self._lmdb.Error:
                key = None
            raise lmdb_error(self.path, e, key) from None

    def key(self):
        return self._call("key")

    def value(self):
        return self._call("value")

    def next(self):
        """Advance; at the end restart from the first record (returns True
        when it wrapped)."""
        if self._call("next"):
            return False
        self._call("first")
        return True

    def seek(self, key):
        """Position at `key` (bytes); DataError when it is absent."""
        if not self._call("set_key", key):
            raise DataError(f"{self.path}: record key {key!r} not found "
                            "(was the database rebuilt since the snapshot?)")

    def close(self):
        if self.env is not None:
            self.txn.abort()
            _release_env(self.path)
            self.env = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __len__(self):
        try:
            return self.env.stat()["entries"]
        except self._lmdb.Error as e:
            raise lmdb_error(self.path, e) from None


def read_datums(path, backend=LMDB):
    """Yield (key, Datum) for every record of the database at `path`, in
    key order."""
    path = os.fspath(path)
    if check_backend(backend, path) == LEVELDB:
        from . import db_leveldb
        for key, value in db_leveldb.read_items(path):
            yield key, parse_datum(value, path, key)
        return
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such LMDB database (expected a folder "
                        "holding data.mdb)")
    lmdb = require_lmdb()
    env = _acquire_env(path)
    key = None
    try:
        with env.begin() as txn:
            cursor = txn.cursor()
            more = cursor.first()
            while more:
                key, value = cursor.key(), cursor.value()
                yield key, parse_datum(value, path, key)
                more = cursor.next()
    except lmdb.Error as e:
        raise lmdb_error(path, e, key) from None
    finally:
        _release_env(path)


def parse_datum(value, path="<db>", key=b""):
    """A serialized Datum; DataError naming the database and key if bad."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception as e:  # protobuf raises DecodeError
        raise DataError(f"{path}: record {_show_key(key)}: not a Datum "
                        f"({e})") from None
    return datum


def _show_key(key):
    if isinstance(key, bytes):
        return repr(key.decode("utf-8", "replace"))
    return repr(key)


# ---------------------------------------------------------------------------
# Datum <-> array


def decode_image(data, color=None, where="<bytes>"):
    """Decode JPEG/PNG bytes (or a file path) to a uint8 (C, H, W) array in
    BGR order, as OpenCV's imread/imdecode.

    Args:
        color: True = 3 channels (IMREAD_COLOR), False = 1 channel
            (IMREAD_GRAYSCALE), None = as stored (IMREAD_ANYCOLOR).
        where: what to name in the DataError when decoding fails.
    """
    from .imageio import open_image
    try:
        with open_image(data, where) as img:
            img.load()
            if color is None:
                color = img.mode not in ("1", "L", "I", "I;16", "F", "LA")
            img = img.convert("RGB" if color else "L")
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{where}: cannot decode image: {e}") from None
    if arr.ndim == 2:
        return arr[None].copy()
    # NOTE(caffe): OpenCV keeps BGR; datums and mean files are BGR.
    return np.ascontiguousarray(arr[:, :, ::-1].transpose(2, 0, 1))


def encode_image(arr, fmt="png"):
    """Encode a uint8 (C, H, W) BGR (or gray) array as PNG/JPEG bytes."""
    Image = require_pil()
    arr = np.asarray(arr, np.uint8)
    img = (Image.fromarray(arr[0]) if arr.shape[0] == 1 else
           Image.fromarray(np.ascontiguousarray(arr[::-1].transpose(1, 2, 0))))
    fmt = fmt.lower()
    name = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP"}.get(fmt)
    if name is None:
        raise DataError(f"unsupported encode_type {fmt!r} (use png, jpg or "
                        "bmp)")
    buf = _pyio.BytesIO()
    img.save(buf, format=name, **({"quality": 95} if name == "JPEG" else {}))
    return buf.getvalue()


def array_to_datum(arr, label=0):
    """A raw Datum from a (C, H, W) array: uint8 arrays go to `data`, any
    other dtype to `float_data` (Caffe's CVMatToDatum / array_to_datum)."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise DataError(f"a Datum holds a (C, H, W) array, got shape "
                        f"{arr.shape}")
    datum = caffe_pb2.Datum(channels=arr.shape[0], height=arr.shape[1],
                            width=arr.shape[2], label=int(label))
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel())
    return datum


def datum_to_array(datum, path="<db>", key=b"", color=None):
    """The (C, H, W) array of a Datum: uint8 for `data` and encoded images,
    float32 for `float_data`.

    Args:
        color: for encoded datums: True/False force 3/1 channels, None keeps
            the stored channels (Caffe's DecodeDatumToCVMatNative).

    Raises:
        DataError: naming the database, the record key and the field when
            the sizes do not agree or the image does not decode.
    """
    where = f"{path}: record {_show_key(key)}"
    if datum.encoded:
        return decode_image(datum.data, color, where=f"{where}, field 'data' "
                            "(encoded)")
    shape = (datum.channels, datum.height, datum.width)
    # Python ints: channels*height*width of int32 fields cannot wrap, and
    # each dim is checked (two negative dims multiply to a positive count).
    count = math.prod(shape)
    if min(shape) <= 0:
        raise DataError(f"{where}: channels/height/width must be positive, "
                        f"got {shape}")
    limits.check_bytes(count * 4, f"{where}: a datum of channels x height x "
                       f"width = {shape} ({count} values)")
    if datum.data:
        if len(datum.data) != count:
            raise DataError(f"{where}: field 'data' holds {len(datum.data)} "
                            f"bytes but channels*height*width = {shape} "
                            f"needs {count}")
        return np.frombuffer(datum.data, np.uint8).reshape(shape)
    if len(datum.float_data) != count:
        raise DataError(f"{where}: field 'float_data' holds "
                        f"{len(datum.float_data)} values but channels*height*"
                        f"width = {shape} needs {count}")
    return np.asarray(datum.float_data, np.float32).reshape(shape)


# ---------------------------------------------------------------------------
# Writing


class BatchedWriter:
    """Records put into a new database, written in batches of 1000 (as
    Caffe's tools commit).  A backend provides `handle`, `_write(pairs)`
    and `_close()`; use it as a context manager or call `close()`."""

    handle = None

    def put(self, key, value):
        if isinstance(key, str):
            key = key.encode("utf-8")
        if not isinstance(value, bytes):
            value = value.SerializeToString()
        self.pending.append((key, value))
        if len(self.pending) >= _COMMIT_EVERY:
            self.commit()

    def commit(self):
        self._write(self.pending)
        self.pending = []

    def close(self):
        if self.handle is not None:
            self.commit()
            self._close()
            self.handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def refuse_existing(path):
        if os.path.exists(path):
            raise DataError(f"{path}: already exists; Caffe's tools "
                            "create a new database (remove it first)")


class Writer(BatchedWriter):
    """Create a NEW LMDB database and put records (see BatchedWriter)."""

    def __init__(self, path, map_size=1 << 30):
        self._lmdb = require_lmdb()
        self.path = os.fspath(path)
        self.refuse_existing(self.path)
        # NOTE(caffe): the database is a folder, made like Caffe's mkdir.
        os.makedirs(self.path)
        try:
            self.handle = self._lmdb.open(self.path, map_size=map_size)
        except self._lmdb.Error as e:
            raise lmdb_error(self.path, e) from None
        self.pending = []

    def _write(self, pairs):
        while True:
            try:
                with self.handle.begin(write=True) as txn:
                    for k, v in pairs:
                        txn.put(k, v)
                return
            except self._lmdb.MapFullError:
                # NOTE(caffe): db_lmdb.cpp doubles the map size when full.
                self.handle.set_mapsize(self.handle.info()["map_size"] * 2)

    def _close(self):
        self.handle.close()


def write_datums(path, items):
    """Write an iterable of (key, Datum) to a new LMDB at `path`; returns
    the number of records."""
    n = 0
    with Writer(path) as w:
        for key, datum in items:
            w.put(key, datum)
            n += 1
    return n
