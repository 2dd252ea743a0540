"""Data layers: Input, DummyData, MemoryData, HDF5Data, HDF5Output.

The readers expose `get_state()` / `set_state(state)` (JSON-serialisable)
so a solver snapshot can resume reading at exactly the same row.
"""

import os

import numpy as np

from .. import envvars, parallel
from .. import rng as _rng
from ..errors import DataError, LayerError
from ..filecheck import read_list_file
from ..fillers import fill
from ..layer import Layer, register
from ..proto import caffe_pb2


@register("Input")
class InputLayer(Layer):
    """Tops whose data the user fills in (net inputs).

    `input_param.shape` gives one shape for every top or one per top; with no
    shape the tops stay empty until reshaped by the user.

    Mirrors: src/caffe/layers/input_layer.cpp.
    """

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom, top):
        shapes = self.param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise LayerError(self, f"input_param must give 0, 1 or {len(top)} "
                             f"shapes (one per top), got {len(shapes)}")
        for i, t in enumerate(top):
            if shapes:
                dims = tuple(shapes[0 if len(shapes) == 1 else i].dim)
                if any(d < 0 for d in dims):
                    raise LayerError(self, f"negative dimension in input "
                                     f"shape {dims}")
                t.reshape(dims)

    def reshape(self, bottom, top):
        """Input shapes change only when the user reshapes the tops."""

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


# ---------------------------------------------------------------------------
# DummyData


@register("DummyData", v1="DUMMY_DATA")
class DummyDataLayer(Layer):
    """Tops filled by fillers: constant tops once at setup, others every
    forward.

    `dummy_data_param`: `data_filler` (0 = constant 0, 1 for every top, or
    one per top), and the shapes either as `shape` (once or once per top) or
    as the legacy `num`/`channels`/`height`/`width` (each once or once per
    top). Giving both forms is an error.

    NOTE(caffe): a top whose filler is 'constant' is filled only at setup;
    writing into it afterwards sticks. Other fillers redraw every forward
    from protonet's generator.

    Mirrors: src/caffe/layers/dummy_data_layer.cpp.
    """

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom, top):
        p = self.param.dummy_data_param
        n = len(top)
        nf = len(p.data_filler)
        if nf not in (0, 1, n):
            raise LayerError(self, f"data_filler must be given 0, 1 or {n} "
                             f"times (once per top), got {nf}")
        legacy = len(p.num)
        if p.shape and legacy:
            raise LayerError(self, "give the shapes either as 'shape' or as "
                             "the legacy num/channels/height/width, not both")
        if p.shape:
            if len(p.shape) not in (1, n):
                raise LayerError(self, f"'shape' must be given once or once "
                                 f"per top ({n}), got {len(p.shape)}")
            shapes = [tuple(p.shape[0 if len(p.shape) == 1 else i].dim)
                      for i in range(n)]
        else:
            if legacy not in (1, n):
                raise LayerError(self, f"'shape' (or legacy 'num') must be "
                                 f"given once or once per top ({n}), got "
                                 f"{legacy}")
            for field in ("channels", "height", "width"):
                got = len(getattr(p, field))
                if got != legacy:
                    raise LayerError(self, f"legacy field '{field}' given "
                                     f"{got} time(s) but 'num' {legacy}")
            shapes = [(p.num[k], p.channels[k], p.height[k], p.width[k])
                      for k in (0 if legacy == 1 else i for i in range(n))]
        if nf == 0:
            self.fillers = [caffe_pb2.FillerParameter(type="constant", value=0)]
        else:
            self.fillers = list(p.data_filler)
        self.refill = [f.type != "constant" for f in self.fillers]
        for i, (t, shape) in enumerate(zip(top, shapes)):
            if any(d < 0 for d in shape):
                raise LayerError(self, f"negative dimension in shape {shape}")
            t.reshape(shape)
            fill(t, self._filler(i), layer=self)   # every top once at setup

    def _filler(self, i):
        return self.fillers[i if len(self.fillers) > 1 else 0]

    def reshape(self, bottom, top):
        """Shapes are fixed at setup."""

    def forward(self, bottom, top):
        for i, t in enumerate(top):
            if self.refill[i if len(self.refill) > 1 else 0]:
                fill(t, self._filler(i), layer=self)

    def backward(self, top, propagate_down, bottom):
        pass


# ---------------------------------------------------------------------------
# MemoryData


@register("MemoryData", v1="MEMORY_DATA")
class MemoryDataLayer(Layer):
    """Batches served from arrays handed over with `set_input_arrays`.

    `memory_data_param`: batch_size, channels, height, width (all > 0).
    Tops: data (batch_size, channels, height, width) and labels
    (batch_size,) at setup, (batch_size, 1, 1, 1) after a forward as in
    Caffe. Each forward serves the next batch and wraps around at the end.

    Mirrors: src/caffe/layers/memory_data_layer.cpp (Reset, Forward_cpu);
    transform_param is not applied to arrays, as in Caffe's Reset.
    """

    exact_num_bottom = 0
    exact_num_top = 2

    def setup(self, bottom, top):
        p = self.param.memory_data_param
        self.batch_size = p.batch_size
        self.chw = (p.channels, p.height, p.width)
        if min((self.batch_size,) + self.chw) <= 0:
            raise LayerError(self, "batch_size, channels, height and width "
                             "must be given and positive in memory_data_param, "
                             f"got {self.batch_size}, {self.chw}")
        top[0].reshape((self.batch_size,) + self.chw)
        top[1].reshape((self.batch_size,))
        self._data = self._labels = None
        self.pos = 0

    def set_input_arrays(self, data, labels):
        """Serve batches from `data` (N, C, H, W) and `labels` (N or N x 1 x
        1 x 1); N must be a multiple of batch_size. Restarts at row 0."""
        data = np.ascontiguousarray(data, dtype=self.dtype)
        labels = np.ascontiguousarray(labels, dtype=self.dtype)
        if data.ndim != 4 or data.shape[1:] != self.chw:
            raise LayerError(self, f"data must have shape (N, {', '.join(map(str, self.chw))}), got {data.shape}")
        labels = labels.reshape(labels.shape[0], -1) if labels.ndim else labels
        if labels.ndim != 2 or labels.shape[1] != 1 or \
                labels.shape[0] != data.shape[0]:
            raise LayerError(self, f"labels must hold one value per data row "
                             f"({data.shape[0]}), got shape {labels.shape}")
        if data.shape[0] == 0 or data.shape[0] % self.batch_size:
            raise LayerError(self, f"the number of rows ({data.shape[0]}) must "
                             f"be a positive multiple of batch_size "
                             f"({self.batch_size})")
        self._data, self._labels = data, labels.reshape(-1)
        self.pos = 0

    reset = set_input_arrays

    def reshape(self, bottom, top):
        """Shapes are set by forward."""

    def forward(self, bottom, top):
        if self._data is None:
            raise LayerError(self, "no data: call set_input_arrays(data, "
                             "labels) on this layer first")
        b = self.batch_size
        top[0].reshape((b,) + self.chw)
        top[1].reshape((b, 1, 1, 1))
        top[0].data[...] = self._data[self.pos:self.pos + b]
        top[1].data[...] = self._labels[self.pos:self.pos + b].reshape(b, 1, 1, 1)
        self.pos = (self.pos + b) % self._data.shape[0]

    def backward(self, top, propagate_down, bottom):
        pass

    def get_state(self):
        """The read position (for an exact resume)."""
        return {"pos": int(self.pos)}

    def set_state(self, state):
        n = self._data.shape[0] if self._data is not None else None
        self.pos = state_int(_who(self), state, "pos", 0, n)


# ---------------------------------------------------------------------------
# Saved reader states (a resume sidecar is untrusted: check before use)


def _who(layer):
    return f"{layer.type} layer '{layer.name}'"


def state_int(who, state, key, lo, hi=None):
    """`state[key]`, an int in [lo, hi) (hi None: unbounded); `who` names
    the layer in the DataError."""
    v = state.get(key) if isinstance(state, dict) else None
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or \
            (hi is not None and v >= hi):
        span = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
        raise DataError(f"{who}: saved state "
                        f"'{key}' must be an integer in {span}, got {v!r}")
    return v


def state_permutation(who, state, key, n):
    """`state[key]` as an int64 array holding a permutation of range(n)."""
    v = state.get(key) if isinstance(state, dict) else None
    if isinstance(v, list) and len(v) != n:
        raise DataError(f"{who}: saved state "
                        f"'{key}' lists {len(v)} entries, the data has {n} "
                        "(was the source changed since the snapshot?)")
    ok = isinstance(v, list) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in v)
    if ok:
        perm = np.asarray(v, np.int64)
        ok = n == 0 or np.array_equal(np.sort(perm), np.arange(n))
    if not ok:
        raise DataError(f"{who}: saved state "
                        f"'{key}' must be a permutation of 0..{n - 1}, got "
                        f"{str(v)[:60]}")
    return perm


# ---------------------------------------------------------------------------
# HDF5Data / HDF5Output


def _read_source_list(layer, source):
    who = f"{layer.type} layer '{layer.name}'"
    try:
        lines = read_list_file(source, who, "an HDF5 source list")
    except DataError as e:
        if os.path.isabs(source) or os.path.exists(source):
            raise
        raise DataError(f"{e} (failed to open the source file; the path is "
                        f"relative to the working directory {os.getcwd()})") \
            from None
    names = " ".join(lines).split()
    if not names:
        raise DataError(f"{layer.type} layer '{layer.name}': must have at least "
                        f"1 HDF5 filename listed in {source}")
    return names


@register("HDF5Data", v1="HDF5_DATA")
class HDF5DataLayer(Layer):
    """Rows of HDF5 datasets, one dataset per top (read by the top's name).

    `hdf5_data_param`: `source` (a text file listing .h5 files, opened
    relative to the working directory as Caffe does), `batch_size`,
    `shuffle` (file order and row order reshuffled at every wrap, with
    protonet's generator, so not Caffe's std::random_shuffle order).
    Every top has shape (batch_size,) + the dataset's trailing dimensions;
    reading wraps around at the end of the last file. Under data-parallel
    training rank r of N reads rows [r*B, (r+1)*B) of every N*B rows a
    single reader would read (see protonet.parallel).

    Mirrors: src/caffe/layers/hdf5_data_layer.cpp.
    """

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom, top):
        if self.param.HasField("transform_param"):
            raise self.unsupported("transform_param (HDF5Data does not "
                                   "transform its data, as in Caffe)")
        p = self.param.hdf5_data_param
        if p.batch_size <= 0:
            raise LayerError(self, f"hdf5_data_param.batch_size must be "
                             f"positive, got {p.batch_size}")
        self.batch_size = p.batch_size
        self.shuffle = p.shuffle
        self.top_names = list(self.param.top)
        self.filenames = _read_source_list(self, p.source)
        self.file_permutation = np.arange(len(self.filenames))
        if self.shuffle:
            self.file_permutation = _rng.generator().permutation(
                len(self.filenames))
        self.current_file = 0
        self._load(self.filenames[self.file_permutation[0]])
        self.current_row = 0
        for t, arr in zip(top, self.arrays):
            t.reshape((self.batch_size,) + arr.shape[1:])
        # Data-parallel training: this rank's block of each rank-wide batch.
        self.shard = parallel.data_shard(self)

    def _load(self, name, permutation=None):
        from ..hdf5 import load_datasets
        arrays = load_datasets(name, self.top_names, self)
        n = arrays[0].shape[0]
        for k, a in zip(self.top_names[1:], arrays[1:]):
            if a.shape[0] != n:
                raise DataError(f"HDF5Data layer '{self.name}': dataset '{k}' "
                                f"in {name} has {a.shape[0]} rows but "
                                f"'{self.top_names[0]}' has {n}")
        if n == 0:
            raise DataError(f"HDF5Data layer '{self.name}': {name} holds no rows")
        self.arrays = [a.astype(self.dtype, copy=False) for a in arrays]
        self.loaded_file = name
        if permutation is not None:
            self.data_permutation = np.asarray(permutation, np.int64)
        elif self.shuffle:
            self.data_permutation = _rng.generator().permutation(n)
        else:
            self.data_permutation = np.arange(n)

    def _advance_file(self):
        """Called when the current file is exhausted (Caffe's Next)."""
        if len(self.filenames) > 1:
            self.current_file += 1
            if self.current_file == len(self.filenames):
                self.current_file = 0
                if self.shuffle:
                    _rng.generator().shuffle(self.file_permutation)
            self._load(self.filenames[self.file_permutation[self.current_file]])
        elif self.shuffle:
            _rng.generator().shuffle(self.data_permutation)
        self.current_row = 0

    def reshape(self, bottom, top):
        """Shapes are set at setup (Caffe shapes data layers on the fly)."""

    def _skip(self, rows):
        """Move past `rows` rows (the other ranks' shards)."""
        while rows:
            take = min(rows, self.arrays[0].shape[0] - self.current_row)
            rows -= take
            self.current_row += take
            if self.current_row == self.arrays[0].shape[0]:
                self._advance_file()

    def forward(self, bottom, top):
        filled = 0
        b = self.batch_size
        for t, a in zip(top, self.arrays):
            if t.shape[1:] != a.shape[1:]:
                t.reshape((b,) + a.shape[1:])
        before, after = parallel.shard_skips(self.shard, b)
        self._skip(before)
        while filled < b:
            n = self.arrays[0].shape[0]
            take = min(b - filled, n - self.current_row)
            rows = self.data_permutation[self.current_row:self.current_row + take]
            for t, a in zip(top, self.arrays):
                t.data[filled:filled + take] = a[rows]
            filled += take
            self.current_row += take
            if self.current_row == n:
                self._advance_file()
        self._skip(after)

    def backward(self, top, propagate_down, bottom):
        pass

    def get_state(self):
        """Everything needed to resume reading at exactly this row."""
        return {"current_file": int(self.current_file),
                "current_row": int(self.current_row),
                "file_permutation": [int(i) for i in self.file_permutation],
                "data_permutation": [int(i) for i in self.data_permutation]}

    def set_state(self, state):
        nfiles = len(self.filenames)
        perm = state_permutation(_who(self), state, "file_permutation", nfiles)
        current = state_int(_who(self), state, "current_file", 0, nfiles)
        rows = state.get("data_permutation")
        # the saved row order is passed to _load, which would otherwise
        # draw a new one from the generator just restored
        self._load(self.filenames[perm[current]],
                   permutation=rows if isinstance(rows, list) else [])
        n = self.arrays[0].shape[0]
        self.data_permutation = state_permutation(_who(self), state,
                                                  "data_permutation", n)
        self.file_permutation, self.current_file = perm, current
        self.current_row = state_int(_who(self), state, "current_row", 0,
                                     n + 1)


OVERWRITE_ENV = "PROTONET_HDF5_OUTPUT_OVERWRITE"
_MARK = "protonet_writer"       # root attribute of files HDF5Output wrote
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _overwrite_allowed():
    return envvars.flag(OVERWRITE_ENV, False)


def _written_by_us(path, h5py):
    """True when `path` is an HDF5 file carrying HDF5Output's mark."""
    with open(path, "rb") as f:
        if f.read(8) != _HDF5_SIGNATURE:
            return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get(_MARK) == "HDF5Output"
    except OSError:
        return False


@register("HDF5Output", v1="HDF5_OUTPUT")
class HDF5OutputLayer(Layer):
    """Writes its two bottoms to `hdf5_output_param.file_name` as datasets
    'data' and 'label' (float32, Caffe's legacy 4-D shapes).

    NOTE(caffe): Caffe creates (truncates) the file at setup and writes the
    datasets at every forward (a second forward fails there, the datasets
    exist).  Here nothing is touched until the first forward, since a model
    file is untrusted and merely building a net (`protonet summary`, `time`)
    must not destroy a file; each forward then rewrites the file with the
    latest batch.  An existing file is replaced only when it is an HDF5 file
    this layer wrote (root attribute `protonet_writer`), or when
    PROTONET_HDF5_OUTPUT_OVERWRITE=1; anything else is a DataError.

    Mirrors: src/caffe/layers/hdf5_output_layer.cpp.
    """

    exact_num_bottom = 2
    exact_num_top = 0

    def setup(self, bottom, top):
        from ..hdf5 import require_h5py
        self.file_name = self.param.hdf5_output_param.file_name
        if not self.file_name:
            raise LayerError(self, "hdf5_output_param.file_name is required")
        require_h5py("HDF5Output layers")
        self._claimed = False

    def _claim(self, h5py):
        """Refuse to replace a file this layer did not write."""
        path = self.file_name
        if os.path.lexists(path) and not _overwrite_allowed():
            what = None
            if os.path.isdir(path):
                what = "a directory"
            elif not os.path.isfile(path):
                what = "not a regular file"
            elif not _written_by_us(path, h5py):
                what = "a file HDF5Output did not write"
            if what:
                raise DataError(
                    f"HDF5Output layer '{self.name}': {path} exists and is "
                    f"{what}; refusing to overwrite it (remove it, choose "
                    f"another file_name, or set {OVERWRITE_ENV}=1)")
        self._claimed = True

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise LayerError(self, f"data and label must have the same number "
                             f"of rows, got {bottom[0].shape} and "
                             f"{bottom[1].shape}")

    def forward(self, bottom, top):
        from ..hdf5 import require_h5py
        h5py = require_h5py("HDF5Output layers")
        if not self._claimed:
            self._claim(h5py)
        try:
            with h5py.File(self.file_name, "w") as f:
                f.attrs[_MARK] = "HDF5Output"
                for name, b in (("data", bottom[0]), ("label", bottom[1])):
                    shape = (b.num, b.channels, b.height, b.width)
                    f.create_dataset(name, data=np.asarray(b.data, np.float32)
                                     .reshape(shape))
        except OSError as e:
            raise DataError(f"HDF5Output layer '{self.name}': cannot write "
                            f"{self.file_name}: {e}") from None

    def backward(self, top, propagate_down, bottom):
        pass
