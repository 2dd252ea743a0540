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
"""

import os

import numpy as np

from .errors import DataError, ProtonetError, WeightsError
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
    h5py = require_h5py("HDF5 weights")
    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"{path}: cannot open HDF5 weights file: {e}") \
            from None
    with f:
        if "data" not in f:
            raise WeightsError(f"{path}: no 'data' group; not a Caffe HDF5 "
                               "weights file")
        data = f["data"]
        by_name = {}
        for li, name in enumerate(net.layer_names):
            by_name.setdefault(name, li)
        param_id = {pos: i for i, pos in enumerate(net.param_layer_indices)}
        for name in data:
            li = by_name.get(name)
            if li is None:
                continue
            group = data[name]
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
                arr = np.asarray(group[key])
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
    h5py = require_h5py("HDF5 solver states")
    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ProtonetError(f"{path}: cannot open HDF5 solver state: {e}") \
            from None
    with f:
        if "iter" not in f or "history" not in f:
            raise ProtonetError(f"{path}: not a Caffe HDF5 solver state "
                                "(needs 'iter' and 'history')")
        learned = None
        if "learned_net" in f:
            v = f["learned_net"][()]
            learned = v.decode() if isinstance(v, bytes) else str(v)
        hist = f["history"]
        return {
            "iter": int(f["iter"][()]),
            "learned_net": learned,
            "current_step": int(f["current_step"][()]) if "current_step" in f
            else 0,
            "history": [np.asarray(hist[str(i)], np.float32)
                        for i in range(len(hist))],
        }


# ---------------------------------------------------------------------------
# Data files (HDF5Data / HDF5Output)


def load_datasets(path, names, layer=None):
    """Read datasets `names` of the HDF5 file `path` as float32 arrays."""
    h5py = require_h5py("HDF5Data layers")
    who = f"layer '{layer.name}': " if layer is not None else ""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{who}failed opening HDF5 file {path}: {e}") from None
    out = []
    with f:
        for name in names:
            if name not in f:
                raise DataError(f"{who}HDF5 file {path} has no dataset "
                                f"'{name}' (datasets: {', '.join(f.keys())})")
            arr = np.asarray(f[name], dtype=np.float32)
            if arr.ndim < 1:
                raise DataError(f"{who}dataset '{name}' in {path} must have "
                                f"at least 1 axis, got a scalar")
            out.append(arr)
    return out
