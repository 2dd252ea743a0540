"""Error catalogue, LMDB databases: a database that is truncated, corrupted,
not a file, or holds records with impossible sizes ends in a ProtonetError
naming the database (and the record key where there is one), through every
entry point that reads one: the Data layer, `protonet compute-mean` and
`protonet.db.read_datums`.  Never a SIGBUS, a raw lmdb error or a NumPy
message.
"""

import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import protonet
from protonet import db, limits
from protonet.errors import DataError, ProtonetError, ResourceError
from protonet.proto import caffe_pb2

from hostile_inputs import SPECIAL_WORDS, special

pytest.importorskip("lmdb")
pytest.importorskip("PIL")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(protonet.__file__)))
PAGE = 4096


def make_db(path, n=300, datums=None):
    """An LMDB of `n` raw 3x10x10 datums (several leaf pages), or of the
    given (key, Datum) pairs."""
    items = datums or [(f"{i:08d}", db.array_to_datum(
        np.full((3, 10, 10), i % 256, np.uint8), i)) for i in range(n)]
    with db.Writer(str(path)) as w:
        for key, d in items:
            w.put(key, d)
    return str(path)


def data_net(tmp_path, source):
    text = (f'layer {{ name: "d" type: "Data" top: "data" top: "label" '
            f'data_param {{ source: "{source}" batch_size: 4 backend: LMDB '
            'prefetch: 0 } }')
    p = tmp_path / "net.prototxt"
    p.write_text(text)
    net = protonet.Net(str(p), phase=protonet.TEST)
    for _ in range(100):            # past every record, wrapping around
        net.forward()
    return net


def compute_mean(tmp_path, source):
    from protonet.tools.compute_mean import compute_mean as cm
    return cm(source)


def read_all(tmp_path, source):
    """The API: every record, as an array."""
    return [db.datum_to_array(d, source, key)
            for key, d in db.read_datums(source)]


READERS = {"data_layer": data_net, "compute_mean": compute_mean,
           "read_datums": read_all}


def _mdb(path):
    return os.path.join(path, "data.mdb")


def _patch(path, offset, data):
    with open(_mdb(path), "r+b") as f:
        f.seek(offset)
        f.write(data)


def _zero_page(path, page):
    _patch(path, page * PAGE, bytes(PAGE))


def _leaf_pages(path):
    raw = open(_mdb(path), "rb").read()
    return [p for p in range(2, len(raw) // PAGE)
            if struct.unpack_from("<H", raw, p * PAGE + 10)[0] == 0x2]


# -- truncation: a SIGBUS without the check, so each runs in a subprocess --

TRUNCATE_CODE = """
import sys
from protonet.errors import ProtonetError
sys.path.insert(0, {tests!r})
from test_error_catalogue_db import READERS
import pathlib
try:
    READERS[{reader!r}](pathlib.Path({tmp!r}), {db!r})
except ProtonetError as e:
    print(type(e).__name__, e)
    sys.exit(3)
"""


@pytest.mark.parametrize("reader", sorted(READERS))
def test_truncated_data_mdb(reader, tmp_path):
    path = make_db(tmp_path / "db")
    size = os.path.getsize(_mdb(path))
    os.truncate(_mdb(path), size // 2)
    code = TRUNCATE_CODE.format(tests=os.path.dirname(__file__),
                                reader=reader, tmp=str(tmp_path), db=path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 3, (out.returncode, out.stderr.decode()[-800:])
    msg = out.stdout.decode()
    assert msg.startswith("DataError") and path in msg, msg
    assert "truncated" in msg and f"holds {size // 2} bytes" in msg, msg


# -- files that are not LMDB files --------------------------------------------


def _bad_magic(path):
    _patch(path, 16, b"\0\0\0\0")
    _patch(path, PAGE + 16, b"\0\0\0\0")


def _bad_version(path):
    _patch(path, 20, struct.pack("<I", 7))


def _bad_page_size(path):
    _patch(path, 40, struct.pack("<I", 3000))


def _random_file(path):
    with open(_mdb(path), "wb") as f:
        f.write(np.random.default_rng(1).bytes(3 * PAGE))


def _tiny_file(path):
    os.truncate(_mdb(path), 100)


def _zero_root(path):
    raw = open(_mdb(path), "rb").read()
    _zero_page(path, struct.unpack_from("<Q", raw, PAGE + 128)[0])


def _zero_leaf(path):
    _zero_page(path, _leaf_pages(path)[len(_leaf_pages(path)) // 2])


def _garbage_leaf(path):
    page = _leaf_pages(path)[3]
    _patch(path, page * PAGE + 16, np.random.default_rng(2).bytes(PAGE - 16))


def _leaf_flags(path):
    """A leaf marked as an overflow page: LMDB asserts IS_LEAF and aborts."""
    _patch(path, _leaf_pages(path)[5] * PAGE + 10, struct.pack("<H", 0x04))


def _branch_pointer(path):
    raw = open(_mdb(path), "rb").read()
    root = struct.unpack_from("<Q", raw, PAGE + 128)[0]
    off = struct.unpack_from("<H", raw, root * PAGE + 18)[0]   # 2nd node
    _patch(path, root * PAGE + off, struct.pack("<HH", 0x4240, 0x000F))


def _big_values(path):
    """Values of 3 pages: overflow runs; the last run's length is forged."""
    import shutil
    shutil.rmtree(path)
    make_db(path, datums=[(f"{i:08d}", db.array_to_datum(
        np.full((3, 40, 100), i, np.uint8))) for i in range(6)])
    raw = open(_mdb(path), "rb").read()
    runs = [p for p in range(2, len(raw) // PAGE)
            if struct.unpack_from("<H", raw, p * PAGE + 10)[0] == 0x4]
    _patch(path, runs[-1] * PAGE + 12, struct.pack("<I", 1))


DAMAGE = [
    ("bad_magic", _bad_magic, ["not an LMDB data file", "0xBEEFC0DE"]),
    ("bad_version", _bad_version, ["version 7"]),
    ("bad_page_size", _bad_page_size, ["page size of 3000"]),
    ("random_bytes", _random_file, ["not an LMDB data file"]),
    ("tiny_file", _tiny_file, ["not an LMDB data file"]),
    ("zeroed_root_page", _zero_root, ["damaged", "page 4 says it is page 0"]),
    ("zeroed_leaf_page", _zero_leaf, ["damaged", "expected a leaf page"]),
    ("leaf_marked_overflow", _leaf_flags, ["damaged", "flags 0x4"]),
    ("garbage_leaf_page", _garbage_leaf, ["damaged"]),
    ("branch_points_outside", _branch_pointer, ["damaged", "outside the "
                                                "file's pages"]),
    ("overflow_run_too_short", _big_values, ["damaged", "spans 1 pages"]),
]
DAMAGE_CASES = [(d, r) for d in DAMAGE for r in sorted(READERS)]


@pytest.mark.parametrize("damage,reader", DAMAGE_CASES,
                         ids=[f"{d[0]}-{r}" for d, r in DAMAGE_CASES])
def test_damaged_database(damage, reader, tmp_path):
    name, spoil, words = damage
    path = make_db(tmp_path / "db")
    spoil(path)
    with pytest.raises(ProtonetError) as info:
        READERS[reader](tmp_path, path)
    msg = str(info.value)
    assert path in msg, msg
    for w in words:
        assert w in msg, (name, msg)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_lmdb_errors_are_wrapped(reader, tmp_path, monkeypatch):
    """Without the page check, a zeroed root page is lmdb.CorruptedError:
    it becomes a DataError naming the database."""
    monkeypatch.setattr(db, "check_data_file", lambda path: None)
    path = make_db(tmp_path / "db")
    _zero_root(path)
    with pytest.raises(DataError) as info:
        READERS[reader](tmp_path, path)
    msg = str(info.value)
    assert path in msg and "LMDB error" in msg, msg


def test_lmdb_error_while_reading_names_the_key(tmp_path):
    import lmdb

    class Failing:
        def key(self):
            return b"00000007_cat.jpg"

        def next(self):
            raise lmdb.CorruptedError("mdb_cursor_next: MDB_CORRUPTED")

    path = make_db(tmp_path / "db", n=10)
    cursor = db.Cursor(path)
    real, cursor.cursor = cursor.cursor, Failing()
    try:
        with pytest.raises(DataError, match=r"db, record '00000007_cat.jpg': "
                           "LMDB error CorruptedError"):
            cursor.next()
    finally:
        cursor.cursor = real
        cursor.close()


@pytest.mark.parametrize("kind", sorted(SPECIAL_WORDS))
@pytest.mark.parametrize("reader", sorted(READERS))
def test_data_mdb_not_a_file(kind, reader, tmp_path):
    path = tmp_path / "db"
    path.mkdir()
    with special(kind, path / "data.mdb"):
        with pytest.raises(DataError) as info:
            READERS[reader](tmp_path, str(path))
    msg = str(info.value)
    assert "data.mdb" in msg and SPECIAL_WORDS[kind] in msg, msg


# -- records with impossible sizes --------------------------------------------

# channels * height * width = 2^20 * 18837001 * 1867833 = 2^65 + 2^20: an
# int64 product wraps to 2^20, exactly the bytes the record holds.
WRAP = (1 << 20, 18837001, 1867833)


def _datum(c, h, w, data=b"", **kw):
    return caffe_pb2.Datum(channels=c, height=h, width=w, data=data, **kw)


def _bomb_png():
    import zlib

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + \
            struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" +
            chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0,
                                       0)) +
            chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


RECORDS = [
    ("negative_dims", _datum(-1, -1, 3, b"abc"), DataError,
     ["must be positive", "(-1, -1, 3)"]),
    ("int64_wrap", _datum(*WRAP, bytes(1 << 20)), ResourceError,
     [str(2 ** 65 + 2 ** 20)]),
    ("zero_dim", _datum(3, 0, 4), DataError, ["must be positive"]),
    ("huge_float_claim", caffe_pb2.Datum(channels=60000, height=60000,
                                         width=3, float_data=[1.0]),
     ResourceError, ["10800000000 values"]),
    ("size_mismatch", _datum(3, 4, 4, b"x" * 10), DataError,
     ["holds 10 bytes"]),
    ("decompression_bomb", caffe_pb2.Datum(data=_bomb_png(), encoded=True),
     DataError, ["decompression bomb"]),
    ("undecodable", caffe_pb2.Datum(data=b"not an image", encoded=True),
     DataError, ["cannot decode"]),
    ("not_a_datum", b"\xff\xff\xff", DataError, ["not a Datum"]),
]
RECORD_CASES = [(r, e) for r in RECORDS for e in sorted(READERS)]


@pytest.mark.parametrize("record,reader", RECORD_CASES,
                         ids=[f"{r[0]}-{e}" for r, e in RECORD_CASES])
def test_bad_record(record, reader, tmp_path):
    name, datum, cls, words = record
    good = db.array_to_datum(np.zeros((3, 4, 4), np.uint8))
    path = make_db(tmp_path / "db", datums=[("00000000_good", good),
                                            ("00000001_bad", datum)])
    with limits.limit("4G"):
        with pytest.raises(cls) as info:
            READERS[reader](tmp_path, path)
    msg = str(info.value)
    assert path in msg and "00000001_bad" in msg, msg
    for w in words:
        assert w in msg, (name, msg)


def test_compute_mean_cli_reports_a_truncated_db(tmp_path, capsys):
    """Through the CLI: exit status 1 and the message, in a subprocess
    (the unchecked read is a SIGBUS)."""
    path = make_db(tmp_path / "db")
    os.truncate(_mdb(path), PAGE * 3)
    code = (f"import sys; from protonet import cli; "
            f"sys.exit(cli.main(['compute-mean', {path!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 1, (out.returncode, out.stderr.decode()[-500:])
    assert "truncated" in out.stderr.decode()


def test_good_database_still_reads(tmp_path):
    path = make_db(tmp_path / "db", n=10)
    assert len(read_all(tmp_path, path)) == 10
    mean = compute_mean(tmp_path, path)
    assert mean.shape == (1, 3, 10, 10)


CATALOGUE = {
    "truncated data.mdb (per reader)": len(READERS) + 1,
    "damaged data.mdb (per reader)": len(DAMAGE_CASES) + 1,
    "data.mdb not a file (per reader)": len(READERS) * len(SPECIAL_WORDS),
    "bad records (per reader)": len(RECORD_CASES),
}


def test_catalogue_size():
    assert sum(CATALOGUE.values()) >= 60
