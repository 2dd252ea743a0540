"""Prefetching data layers: Data (LMDB of Datum records) and ImageData.

Both read and transform the next batches in a background thread (see
protonet.prefetch) and expose `get_state()` / `set_state(state)`
(JSON-serialisable: the position of the next record to read and the
random generators' states as of the last batch served), so a solver
snapshot resumes with exactly the same batches.  `close()` stops the
thread early; it also stops when the layer is garbage-collected.

Mirrors: src/caffe/layers/base_data_layer.cpp, data_layer.cpp,
image_data_layer.cpp.
"""

import os

import numpy as np

from .. import db as _db
from .. import parallel
from .. import rng as _rng
from ..errors import DataError, LayerError
from ..filecheck import read_list_file
from ..imageio import check_resize_target
from ..layer import Layer
from ..layer import register
from .data import state_int
from ..prefetch import make_fetcher
from ..transform import DataTransformer, resize


class _PrefetchingDataLayer(Layer):
    """Shared setup/forward of the prefetching layers.

    Subclasses build `self.reader`, an object with `first_shape()`,
    `next_batch() -> (data, labels, state)`, `get_state()` and
    `set_state(state)`, that holds no reference to the layer.
    """

    exact_num_bottom = 0
    min_top = 1
    max_top = 2
    force_backward_ok = False

    def setup(self, bottom, top):
        self.transformer = DataTransformer(self.param.transform_param,
                                           self.phase, self.dtype, layer=self)
        self.reader = self.make_reader()
        shape = self.reader.first_shape()
        top[0].reshape((self.batch_size,) + tuple(shape))
        if len(top) > 1:
            top[1].reshape((self.batch_size,))
        self._state = self.reader.get_state()
        self._fetcher = None
        self._start()

    def _start(self):
        depth = int(self.param.data_param.prefetch)
        self._fetcher = make_fetcher(self.reader.next_batch, depth,
                                     name=f"prefetch-{self.name}", owner=self)

    def reshape(self, bottom, top):
        """Shapes follow each batch (set in forward), as in Caffe."""

    def forward(self, bottom, top):
        data, labels, state = self._fetcher.next()
        top[0].reshape(data.shape)
        top[0].data[...] = data
        if len(top) > 1:
            top[1].reshape(labels.shape)
            top[1].data[...] = labels
        self._state = state

    def backward(self, top, propagate_down, bottom):
        pass

    def get_state(self):
        """Reader position and RNG states after the last batch served."""
        return self._state

    def set_state(self, state):
        """Resume reading exactly after the batch `state` was taken at."""
        self._fetcher.close()
        self.reader.set_state(state)
        self._state = state
        self._start()

    def close(self):
        """Stop the prefetch thread (forward fails afterwards)."""
        if self._fetcher is not None:
            self._fetcher.close()


def _check_batch_size(layer, batch_size, field):
    if batch_size <= 0:
        raise LayerError(layer, f"{field}.batch_size must be positive, got "
                         f"{batch_size}")
    return int(batch_size)


# ---------------------------------------------------------------------------
# Data


class _DBReader:
    """Reads and transforms batches of Datum records from an LMDB cursor."""

    shard = (0, 1)      # data-parallel training: (rank, ranks)

    def __init__(self, who, source, batch_size, transformer, color, dtype,
                 skip, backend=_db.LMDB):
        self.who, self.source = who, source
        self.batch_size, self.transformer = batch_size, transformer
        self.color, self.dtype = color, dtype
        self.cursor = _db.open_cursor(source, backend)
        for _ in range(skip):
            self.cursor.next()

    def _read(self):
        key = self.cursor.key()
        datum = _db.parse_datum(self.cursor.value(), self.source, key)
        return key, datum, _db.datum_to_array(datum, self.source, key,
                                              self.color)

    def first_shape(self):
        key, _, arr = self._read()
        return self.transformer.check(arr.shape, self._where(key))

    def _where(self, key):
        return f"{self.source}, record {key.decode('utf-8', 'replace')!r}"

    def next_batch(self):
        items, labels = [], np.empty(self.batch_size, self.dtype)
        before, after = parallel.shard_skips(self.shard, self.batch_size)
        for _ in range(before):     # the other ranks' records
            self.cursor.next()
        for i in range(self.batch_size):
            key, datum, arr = self._read()
            if items and arr.shape != items[0].shape:
                field = ("data (encoded)" if datum.encoded else
                         "data" if datum.data else "float_data")
                raise DataError(f"{self.who}: {self._where(key)}, field "
                                f"'{field}': shape (C, H, W) = {arr.shape} "
                                f"differs from the batch's first datum "
                                f"{items[0].shape}")
            if i == 0:
                where = self._where(key)
            items.append(arr)
            labels[i] = datum.label
            self.cursor.next()
        for _ in range(after):
            self.cursor.next()
        data = self.transformer.apply(np.stack(items), where)
        return data, labels, self.get_state()

    def get_state(self):
        return {"key": self.cursor.key().hex(),
                "transform_rng": self.transformer.get_state()}

    def set_state(self, state):
        key = state.get("key")
        try:
            key = bytes.fromhex(key)
        except (TypeError, ValueError):
            raise DataError(f"{self.who}: saved state 'key' must be a hex "
                            f"string (a record key), got {str(key)[:60]!r}") \
                from None
        self.cursor.seek(key)
        self.transformer.set_state(state.get("transform_rng"))


@register("Data", v1="DATA")
class DataLayer(_PrefetchingDataLayer):
    """Batches of `Datum` records from an LMDB database.

    Tops: data (batch_size, C, H, W) after the transformation and, with a
    second top, label (batch_size,).  Each record is a raw uint8 `data`
    (C x H x W, BGR), `float_data`, or an `encoded` JPEG/PNG (decoded with
    Pillow; `transform_param.force_color` / `force_gray` or
    `data_param.force_encoded_color` choose the channels).  Reading wraps to
    the first record at the end.

    `data_param`: source, batch_size, backend (LMDB, or LEVELDB with the
    optional plyvel; both read in key order), rand_skip (skip a random number
    of records in [0, rand_skip) at setup, drawn from protonet's generator),
    prefetch (batches read ahead; 0 reads in forward).

    Shape:
        NOTE(caffe): the first datum of each batch sets that batch's shape;
        another datum of another shape in the batch is a DataError naming
        the database, record key and field.

    Mirrors: src/caffe/layers/data_layer.cpp.
    """

    def make_reader(self):
        p = self.param.data_param
        self.batch_size = _check_batch_size(self, p.batch_size, "data_param")
        if not p.source:
            raise LayerError(self, "data_param.source is required")
        _db.check_backend(p.backend, p.source)
        skip = 0
        if p.rand_skip:
            skip = int(_rng.generator().integers(p.rand_skip))
        color = self.transformer.color
        if color is None and p.force_encoded_color:
            color = True
        reader = _DBReader(f"Data layer '{self.name}'", p.source,
                           self.batch_size, self.transformer, color,
                           self.dtype, skip, p.backend)
        reader.shard = parallel.data_shard(self)
        return reader


# ---------------------------------------------------------------------------
# ImageData


def read_image_list(source, who="ImageData"):
    """Caffe's image list: `path label` per line (split at the LAST space).

    Returns:
        list of (path, label, line_number).
    """
    if not os.path.exists(source):
        raise DataError(f"{who}: cannot open list file {source}: no such "
                        "file")
    lines = []
    for n, line in enumerate(read_list_file(source, who, "an image list"), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        name, sep, label = line.rpartition(" ")
        try:
            if not sep:
                raise ValueError
            lines.append((name, int(label), n))
        except ValueError:
            raise DataError(f"{who}: {source}:{n}: expected '<path> <integer "
                            f"label>', got {line!r}") from None
    if not lines:
        raise DataError(f"{who}: list file {source} is empty")
    return lines


class _ImageReader:
    """Reads, resizes and transforms batches of image files."""

    def __init__(self, who, p, transformer, dtype, batch_size):
        self.who, self.source = who, p.source
        self.root = p.root_folder
        self.size = (int(p.new_height), int(p.new_width))
        self.color = bool(p.is_color)
        self.transformer, self.dtype = transformer, dtype
        self.batch_size = batch_size
        self.lines = read_image_list(p.source, who)
        self.order = np.arange(len(self.lines))
        self.shuffle_rng = None
        self.epoch_state = None
        if p.shuffle:
            seed = int(_rng.generator().integers(2 ** 63))
            self.shuffle_rng = np.random.default_rng(seed)
            self._shuffle()
        self.pos = 0
        if p.rand_skip:
            self.pos = int(_rng.generator().integers(p.rand_skip))
            if self.pos >= len(self.lines):
                raise DataError(f"{who}: rand_skip drew {self.pos} but "
                                f"{p.source} lists {len(self.lines)} images")

    def _shuffle(self):
        self.epoch_state = self.shuffle_rng.bit_generator.state
        self.order = self.shuffle_rng.permutation(len(self.lines))

    def _load(self, index):
        name, label, n = self.lines[self.order[index]]
        path = self.root + name
        where = f"{self.source}:{n}: image {path}"
        if not os.path.exists(path):
            raise DataError(f"{self.who}: {where}: no such file")
        img = _db.decode_image(path, self.color, where=f"{self.who}: {where}")
        if self.size[0] > 0:
            img = resize(img, *self.size)
        return img, label, where

    def first_shape(self):
        img, _, where = self._load(self.pos)
        return self.transformer.check(img.shape, where)

    def next_batch(self):
        items, labels = [], np.empty(self.batch_size, self.dtype)
        for i in range(self.batch_size):
            img, labels[i], where = self._load(self.pos)
            if items and img.shape != items[0].shape:
                raise DataError(f"{self.who}: {where}: shape (C, H, W) = "
                                f"{img.shape} differs from the batch's first "
                                f"image {items[0].shape} (set new_height / "
                                "new_width)")
            if i == 0:
                first = where
            items.append(img)
            self.pos += 1
            if self.pos >= len(self.lines):
                self.pos = 0
                if self.shuffle_rng is not None:
                    self._shuffle()
        data = self.transformer.apply(np.stack(items), first)
        return data, labels, self.get_state()

    def get_state(self):
        return {"pos": int(self.pos), "epoch_rng": self.epoch_state,
                "transform_rng": self.transformer.get_state()}

    def set_state(self, state):
        pos = state_int(self.who, state, "pos", 0, len(self.lines))
        if self.shuffle_rng is not None and state.get("epoch_rng"):
            self.shuffle_rng.bit_generator.state = state["epoch_rng"]
            self._shuffle()
        self.pos = pos
        self.transformer.set_state(state.get("transform_rng"))


@register("ImageData", v1="IMAGE_DATA")
class ImageDataLayer(_PrefetchingDataLayer):
    """Batches of image files named in a list file.

    `image_data_param`: source (lines `path label`, split at the last
    space), root_folder (prepended as is), batch_size, shuffle (a new
    permutation every epoch from a generator seeded by protonet's), rand_skip
    (start at a random line in [0, rand_skip)), new_height / new_width
    (bilinear resize, both or neither), is_color (3 BGR channels or 1 gray).
    `data_param.prefetch` sets the read-ahead (default 4).

    Tops: data (batch_size, C, H, W) transformed, label (batch_size,).
    A missing or undecodable image is a DataError naming the list file,
    line and image path.

    Mirrors: src/caffe/layers/image_data_layer.cpp.
    """

    def make_reader(self):
        p = self.param.image_data_param
        self.batch_size = _check_batch_size(self, p.batch_size,
                                            "image_data_param")
        if (p.new_height > 0) != (p.new_width > 0):
            raise LayerError(self, "new_height and new_width must be set "
                             f"together, got {p.new_height} and {p.new_width}")
        if not p.source:
            raise LayerError(self, "image_data_param.source is required")
        if p.new_height > 0:
            check_resize_target(p.new_height, p.new_width,
                                3 if p.is_color else 1,
                                f"ImageData layer '{self.name}'")
        return _ImageReader(f"ImageData layer '{self.name}'", p,
                            self.transformer, self.dtype, self.batch_size)
