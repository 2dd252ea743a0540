"""Checking an LMDB data file before LMDB maps it.

LMDB trusts its file: a page past the end of a truncated `data.mdb` is a
SIGBUS, and a damaged page trips an assertion that aborts the process.
Neither can be caught, so before a database is opened for reading,
`check_data_file` verifies, with plain reads, everything a read-only
cursor will rely on:

* the two meta pages (page header, then MDB_meta: magic 0xBEEFC0DE,
  version 1, the page size kept in the free DB's `md_pad`, `mm_last_pg`,
  `mm_txnid`); the newer one is the one LMDB uses, and the file must hold
  its (last_pg + 1) pages;
* the main B-tree from its root: every branch and leaf page carries its
  own page number and a known page type, its node offsets and sizes stay
  inside the page, every child and overflow page is inside the file, and
  an overflow run is long enough for the value it holds.

The walk reads the branch and leaf pages and the first header of each
overflow run, never the values themselves: a few milliseconds for a
database of 10^4 records, seconds for 10^6.

Layout: lmdb's mdb.c (MDB_page, MDB_meta, MDB_db, MDB_node), 64-bit build.
"""

import os
import struct

from .errors import DataError
from .filecheck import check_regular

MAGIC, VERSION = 0xBEEFC0DE, 1
P_BRANCH, P_LEAF, P_OVERFLOW, P_LEAF2 = 0x01, 0x02, 0x04, 0x20
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
HEADER = struct.Struct("<QHHHH")          # pgno, pad, flags, lower, upper
# MDB_meta after the page header: magic, version, address, mapsize, the
# free DB (md_pad = page size, ...), the main DB (flags, depth, ..., root),
# last_pg, txnid.
META = struct.Struct("<16xIIQQI44x4xHH32xQQQ")
NODE = struct.Struct("<HHHH")             # lo, hi, flags, ksize


class _File:
    def __init__(self, path, fd, psize, npages):
        self.path, self.fd, self.psize, self.npages = path, fd, psize, npages

    def fail(self, message):
        raise DataError(f"{self.path}: data.mdb is damaged: {message}; LMDB "
                        "would crash on it (rebuild the database)")

    def page(self, pgno, length=None):
        return os.pread(self.fd, length or self.psize, pgno * self.psize)


def _meta(raw):
    if len(raw) < META.size:
        return None
    (magic, version, _, _, psize, flags, depth, root, last_pg,
     txnid) = META.unpack_from(raw)
    return dict(magic=magic, version=version, psize=psize, depth=depth,
                root=root, last_pg=last_pg, txnid=txnid)


def check_data_file(path):
    """Raise DataError naming the database `path` unless its data.mdb is
    an LMDB file whose pages and main B-tree are intact."""
    mdb = os.path.join(path, "data.mdb")
    size = check_regular(mdb, "an LMDB data file", DataError).st_size
    fd = os.open(mdb, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        first = _meta(os.pread(fd, META.size, 0))
        if first is None or first["magic"] != MAGIC:
            raise DataError(f"{path}: data.mdb is not an LMDB data file (no "
                            f"magic 0xBEEFC0DE in its first page; {size} "
                            "bytes)")
        if first["version"] != VERSION:
            raise DataError(f"{path}: data.mdb has LMDB data version "
                            f"{first['version']}, expected {VERSION}")
        psize = first["psize"]
        if psize < 256 or psize > 65536 or psize & (psize - 1):
            raise DataError(f"{path}: data.mdb declares a page size of "
                            f"{psize} bytes; not a valid LMDB file")
        second = _meta(os.pread(fd, META.size, psize))
        metas = [first] + ([second] if second and second["magic"] == MAGIC
                           and second["version"] == VERSION else [])
        meta = max(metas, key=lambda m: m["txnid"])
        need = (meta["last_pg"] + 1) * psize
        if size < need:
            raise DataError(f"{path}: data.mdb is truncated: LMDB's metadata"
                            f" counts {meta['last_pg'] + 1} pages of {psize} "
                            f"bytes ({need} bytes) but the file holds {size} "
                            "bytes")
        f = _File(path, fd, psize, meta["last_pg"] + 1)
        if meta["root"] != 0xFFFFFFFFFFFFFFFF:     # P_INVALID: empty tree
            _walk(f, meta["root"], meta["depth"])
    finally:
        os.close(fd)


def _walk(f, root, depth):
    """Check the main B-tree, level by level."""
    if not 1 <= depth <= 64:
        f.fail(f"main tree depth {depth}")
    level = [root]
    for d in range(depth):
        leaf = d == depth - 1
        nxt = []
        for pgno in level:
            nxt.extend(_check_page(f, pgno, leaf))
        level = nxt


def _check_page(f, pgno, leaf):
    """Check one branch or leaf page; return its children (branch)."""
    if not 2 <= pgno < f.npages:
        f.fail(f"a {'leaf' if leaf else 'branch'} page number {pgno} is "
               f"outside the file's pages 2..{f.npages - 1}")
    raw = f.page(pgno)
    own, _, flags, lower, upper = HEADER.unpack_from(raw)
    want = P_LEAF if leaf else P_BRANCH
    if own != pgno or flags & (P_BRANCH | P_LEAF | P_OVERFLOW) != want:
        f.fail(f"page {pgno} says it is page {own} with flags {flags:#x}, "
               f"expected a {'leaf' if leaf else 'branch'} page")
    if flags & P_LEAF2:
        f.fail(f"page {pgno} is a LEAF2 (dup-sort) page, which a Caffe "
               "database never holds")
    if not HEADER.size <= lower <= upper <= f.psize or lower % 2:
        f.fail(f"page {pgno} has free-space bounds {lower}..{upper}")
    n = (lower - HEADER.size) // 2
    if not leaf and n == 0:
        f.fail(f"branch page {pgno} holds no nodes")
    offsets = struct.unpack_from(f"<{n}H", raw, HEADER.size)
    children = []
    for off in offsets:
        if not upper <= off <= f.psize - NODE.size:
            f.fail(f"page {pgno} has a node at offset {off}")
        lo, hi, nflags, ksize = NODE.unpack_from(raw, off)
        end = off + NODE.size + ksize
        if leaf:
            dsize = lo | hi << 16
            if nflags & (F_SUBDATA | F_DUPDATA):
                f.fail(f"page {pgno} holds a sub-database or duplicate "
                       "node, which a Caffe database never holds")
            if nflags & F_BIGDATA:
                if end + 8 > f.psize:
                    f.fail(f"page {pgno} has a node running past the page")
                _check_overflow(f, struct.unpack_from("<Q", raw, end)[0],
                                dsize, pgno)
            elif end + dsize > f.psize:
                f.fail(f"page {pgno} has a node of {dsize} bytes running "
                       "past the page")
        else:
            if end > f.psize:
                f.fail(f"page {pgno} has a node running past the page")
            children.append(lo | hi << 16 | nflags << 32)
    return children


def _check_overflow(f, first, dsize, parent):
    if not 2 <= first < f.npages:
        f.fail(f"page {parent} points to overflow page {first}, outside "
               f"the file's pages 2..{f.npages - 1}")
    own, _, flags, lo, hi = HEADER.unpack_from(f.page(first, HEADER.size))
    pages = lo | hi << 16
    if own != first or not flags & P_OVERFLOW:
        f.fail(f"overflow page {first} says it is page {own} with flags "
               f"{flags:#x}")
    if first + pages > f.npages or pages * f.psize - HEADER.size < dsize:
        f.fail(f"overflow page {first} spans {pages} pages for a value of "
               f"{dsize} bytes ({f.npages} pages in the file)")
