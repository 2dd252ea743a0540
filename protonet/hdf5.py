"""HDF5 weights, snapshots and data files, in Caffe's layouts.

Mirrors: src/caffe/net.cpp (ToHDF5, CopyTrainedLayersFromHDF5),
src/caffe/solvers/sgd_solver.cpp (SnapshotSolverStateToHDF5,
RestoreSolverStateFromHDF5) and src/caffe/util/hdf5.cpp.

Layouts:

- weights (`.caffemodel.h5`): group `data` with one group per layer, holding
  datasets `0`, `1`, ... (float32, the blob's shape) for the parameter blobs
  the layer owns; with `write_diff`, the same under group `diff`.
- solver state (`.solverstate.h5`): scalar int datasets `iter` and
  `current_step`, a string dataset `learned_net`, and group `history` with
  datasets `0`, `1`, ... (one per history blob, in the solver's order).

h5py is imported only when one of these functions runs; without it they
raise a ProtonetError saying how to install it.

Reading checks every file against these layouts before using it (see
`_member`): only regular files, no external links, external storage or
virtual datasets (they could name /dev/zero or another file), numeric
datasets where numbers are expected, and every dataset's shape x dtype
bounded by the memory limit before it is read.  Errors name the file and
the key.
"""

import math
import os

import numpy as np

from . import limits
from .errors import DataError, ProtonetError, SolverError, WeightsError
from .filecheck import check_regular
from .io import atomic_output


def require_h5py(what="HDF5 files"):
    """Import h5py, or raise a ProtonetError explaining how to get it."""
    try:
        import h5py
    except ImportError:
        raise ProtonetError(f"{what} need the h5py package; install it with "
                            "`pip install h5py` (or `pip install "
                            "protonet[hdf5]`)") from None
    return h5py


def _atomic_h5(path, fill):
    """Create the HDF5 file `path` atomically (protonet.io.atomic_output),
    calling `fill(h5file)` to write its contents."""
    from .outpath import writing
    h5py = require_h5py()
    with writing(path), atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            fill(f)


# ---------------------------------------------------------------------------
# Checked reading


def _open(path, what, error, who=None):
    """h5py.File(path, 'r') of a regular file; `error` names the file."""
    h5py = require_h5py(what)
    path = os.fspath(path)
    check_regular(path, what, error, who)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise error(f"{who + ': ' if who else ''}{path}: cannot open {what} "
                    f"(not an HDF5 file?): {e}") from None


def _member(group, key, path, error, kind="dataset", numeric=True):
    """`group[key]` checked to be a `kind` ('dataset' or 'group') stored in
    this file; a dataset must be numeric and fit the memory limit."""
    import h5py
    where = f"{group.name.rstrip('/')}/{key}"
    try:
        link = group.get(key, getlink=True)
    except (KeyError, ValueError, OSError, TypeError) as e:
        raise error(f"{path}: cannot read '{where}': {e}") from None
    if link is None:
        raise error(f"{path}: missing {kind} '{where}'")
    if isinstance(link, h5py.ExternalLink):
        raise error(f"{path}: '{where}' is an external link to "
                    f"{link.filename}; protonet reads only data stored in "
                    "the file itself")
    try:
        obj = group[key]
    except (KeyError, ValueError, OSError) as e:
        raise error(f"{path}: cannot read '{where}' (dangling link?): {e}") \
            from None
    want = h5py.Dataset if kind == "dataset" else h5py.Group
    if not isinstance(obj, want):
        found = "a group" if isinstance(obj, h5py.Group) else "a dataset" \
            if isinstance(obj, h5py.Dataset) else type(obj).__name__
        raise error(f"{path}: '{where}' is {found}, expected a {kind}")
    if kind == "dataset":
        _check_dataset(obj, path, where, error, numeric)
    return obj


def _check_dataset(ds, path, where, error, numeric=True):
    if ds.is_virtual or ds.external:
        raise error(f"{path}: dataset '{where}' keeps its data outside the "
                    "file (virtual or external storage); protonet reads only "
                    "data stored in the file itself")
    if numeric and ds.dtype.kind not in "iufb":
        raise error(f"{path}: dataset '{where}' has dtype {ds.dtype}, "
                    "expected numbers")
    shape = ds.shape or ()
    limits.check_bytes(math.prod(shape) * max(ds.dtype.itemsize, 4),
                       f"{path}: dataset '{where}' of shape {shape} and "
                       f"dtype {ds.dtype}")


def _scalar_int(f, key, path, error, default=None):
    if default is not None and key not in f:
        return default
    ds = _member(f, key, path, error)
    if ds.dtype.kind not in "iu" or math.prod(ds.shape or ()) != 1:
        raise error(f"{path}: '{key}' must be one integer, got dtype "
                    f"{ds.dtype} and shape {ds.shape}")
    value = int(np.asarray(ds[()]).reshape(-1)[0])
    if value < 0:
        raise error(f"{path}: '{key}' must be >= 0, got {value}")
    return value


# ---------------------------------------------------------------------------
# Weights


def save_hdf5(net, path, write_diff=False):
    """Write the net's parameters as Caffe's Net::ToHDF5 does.

    NOTE(caffe): a shared parameter is written only by the layer owning it.
    """
    owned = set()
    for net_id, owner in enumerate(net.param_owners):
        if owner == -1:
            owned.add(net.param_layer_indices[net_id])

    def fill(f):
        groups = [f.create_group("data")]
        if write_diff:
            groups.append(f.create_group("diff"))
        for li, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
            for gi, group in enumerate(groups):
                if name in group:
                    continue    # duplicate layer names: the first one wins
                g = group.create_group(name)
                for j, blob in enumerate(layer.blobs):
                    if (li, j) not in owned:
                        continue
                    arr = blob.diff if gi == 1 else blob.data
                    g.create_dataset(str(j), data=np.asarray(arr, np.float32))
    _atomic_h5(path, fill)


def copy_from_hdf5(net, path):
    """Copy parameters by layer name from a Caffe HDF5 weights file.

    Layers of the file absent from the net are ignored; a layer of the net
    absent from the file keeps its values (Caffe's CopyTrainedLayersFromHDF5).
    """
    path = os.fspath(path)
    f = _open(path, "HDF5 weights", WeightsError)
    with f:
        if "data" not in f:
            raise WeightsError(f"{path}: no 'data' group; not a Caffe HDF5 "
                               "weights file")
        data = _member(f, "data", path, WeightsError, "group")
        by_name = {}
        for li, name in enumerate(net.layer_names):
            by_name.setdefault(name, li)
        param_id = {pos: i for i, pos in enumerate(net.param_layer_indices)}
        for name in data:
            li = by_name.get(name)
            if li is None:
                continue
            group = _member(data, name, path, WeightsError, "group")
            target = net.layers[li].blobs
            if len(group) > len(target):
                raise WeightsError(
                    f"{path}: layer '{name}' has {len(group)} parameter "
                    f"blob(s) in the weights file but {len(target)} in the net")
            for j, blob in enumerate(target):
                key = str(j)
                if key not in group:
                    if net.param_owners[param_id[(li, j)]] != -1:
                        continue        # shared: its owner is loaded instead
                    raise WeightsError(
                        f"{path}: layer '{name}' lacks parameter blob {j} "
                        f"(the net has {len(target)})")
                arr = np.asarray(_member(group, key, path, WeightsError))
                if arr.shape != blob.shape:
                    if arr.size != blob.count or blob.num_axes > 4:
                        raise WeightsError(
                            f"{path}: cannot copy param {j} of layer '{name}':"
                            f" shape mismatch, weights file has {arr.shape}, "
                            f"net expects {blob.shape}")
                    arr = arr.reshape(blob.shape)
                blob.data[...] = arr


# ---------------------------------------------------------------------------
# Solver state


def write_solverstate(path, iteration, learned_net, current_step, history):
    """Write a `.solverstate.h5` (history: list of arrays)."""
    def fill(f):
        f.create_dataset("iter", data=np.int32(iteration))
        f.create_dataset("learned_net", data=np.bytes_(learned_net))
        f.create_dataset("current_step", data=np.int32(current_step))
        g = f.create_group("history")
        for i, h in enumerate(history):
            g.create_dataset(str(i), data=np.asarray(h, np.float32))
    _atomic_h5(path, fill)


def read_solverstate(path):
    """Read a `.solverstate.h5`: dict with iter, learned_net (str or None),
    current_step and history (list of float32 arrays, in order)."""
    path = os.fspath(path)
    err = SolverError
    f = _open(path, "HDF5 solver state", err)
    with f:
        if "iter" not in f or "history" not in f:
            raise err(f"{path}: not a Caffe HDF5 solver state (needs 'iter' "
                      "and 'history')")
        learned = None
        if "learned_net" in f:
            learned = _string(f, "learned_net", path, err)
        hist = _member(f, "history", path, err, "group")
        keys = sorted(hist.keys())
        if keys != sorted(str(i) for i in range(len(keys))):
            raise err(f"{path}: group 'history' must hold datasets named 0, "
                      f"1, ..., {len(keys) - 1}, got {keys[:10]}")
        return {
            "iter": _scalar_int(f, "iter", path, err),
            "learned_net": learned,
            "current_step": _scalar_int(f, "current_step", path, err, 0),
            "history": [np.asarray(_member(hist, str(i), path, err),
                                   np.float32) for i in range(len(keys))],
        }


def _string(f, key, path, error):
    """The one string held by dataset `key`."""
    obj = _member(f, key, path, error, "dataset", numeric=False)
    if obj.dtype.kind not in "SOU" or math.prod(obj.shape or ()) != 1:
        raise error(f"{path}: '{key}' must be one string, got dtype "
                    f"{obj.dtype} and shape {obj.shape}")
    v = np.asarray(obj[()]).reshape(-1)[0]
    try:
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)
    except UnicodeDecodeError:
        raise error(f"{path}: '{key}' is not valid UTF-8: {v[:60]!r}") \
            from None


# ---------------------------------------------------------------------------
# Data files (HDF5Data / HDF5Output)


def load_datasets(path, names, layer=None):
    """Read datasets `names` of the HDF5 file `path` as float32 arrays."""
    who = f"{layer.type} layer '{layer.name}'" if layer is not None else None
    pre = who + ": " if who else ""
    f = _open(path, "an HDF5 data file", DataError, who)
    out = []
    with f:
        datasets = []
        for name in names:
            if name not in f:
                raise DataError(f"{pre}HDF5 file {path} has no dataset "
                                f"'{name}' (datasets: {', '.join(f.keys())})")
            ds = _member(f, name, path, DataError)
            if ds.ndim < 1:
                raise DataError(f"{pre}dataset '{name}' in {path} must have "
                                f"at least 1 axis, got a scalar")
            datasets.append(ds)
        # all the tops' datasets are held at once: bound their sum
        limits.check_bytes(sum(math.prod(d.shape) * 4 for d in datasets),
                           f"{pre}{path}: datasets {list(names)} of shapes "
                           f"{[d.shape for d in datasets]} (as float32)")
        for ds in datasets:
            out.append(np.asarray(ds, dtype=np.float32))
    return out
