"""Locating NaN / Inf after a failing training step.

`first_nonfinite(net)` walks the layers in forward order and names the first
one whose top data holds a NaN or Inf (where the fault appeared going
forward); failing that, the last layer in forward order -- the first going
backward -- whose parameter diffs or bottom diffs hold one.  The solver calls
`check_step` after each forward/backward, before the update, so a bad
gradient never reaches the weights.  The update itself can still overflow
(a huge rate or weight decay): `check_weights` runs before every snapshot,
so no snapshot ever holds a NaN or Inf, and `check_step` blames the weights
and the hyper-parameters when they are what went bad.
"""

import numpy as np

from . import threads
from .errors import NumericalError

BLOCK = 1 << 20  # elements per task of all_finite


def _bad(arr):
    # One fast pass: a NaN or Inf anywhere makes the sum non-finite.  Only
    # then the exact elementwise look, as finite values may overflow a sum.
    with np.errstate(all="ignore"):
        return not (np.isfinite(np.sum(arr)) or np.isfinite(arr).all())


def _block_ok(a, worker):
    return not _bad(a)


def all_finite(arrays):
    """Whether no array of `arrays` holds a NaN or Inf; blocks of BLOCK
    elements spread over the cores (a memory-bound pass: CaffeNet's 61M
    parameter gradients 33 ms in one float64 sum, ~9 ms so)."""
    return all(threads.over_blocks(_block_ok, arrays, BLOCK))


def first_nonfinite(net):
    """(layer name, description) of the first NaN/Inf, or None."""
    for li, name in enumerate(net.layer_names):
        for j, top in enumerate(net.top_vecs[li]):
            if _bad(top.data):
                return name, f"top {j} ('{net.top_names[name][j]}') data"
    for li in reversed(range(len(net.layers))):
        name = net.layer_names[li]
        for k, blob in enumerate(net.layers[li].blobs):
            if blob.has_diff and _bad(blob.diff):
                return name, f"parameter {k} gradient"
        for j, bottom in enumerate(net.bottom_vecs[li]):
            if bottom.has_diff and _bad(bottom.diff):
                return name, f"bottom {j} gradient"
    return None


def _kept(last_snapshot):
    if last_snapshot:
        return f"the last snapshot on disk ({last_snapshot}) is kept"
    return "no snapshot was written by this run"


def first_nonfinite_weight(net):
    """(layer name, blob index) of the first parameter blob holding a NaN or
    Inf, in layer order, or None."""
    for name, layer in zip(net.layer_names, net.layers):
        for k, blob in enumerate(layer.blobs):
            if _bad(blob.data):
                return name, k
    return None


def check_weights(net, iteration, hyper="", last_snapshot=None,
                  doing="snapshot not written"):
    """Raise NumericalError when a parameter blob holds NaN / Inf, naming
    the layer, the blob index and `hyper` (the solver's rate, decay, ...
    that produced the update)."""
    if all_finite([b.data for layer in net.layers for b in layer.blobs]):
        return
    name, k = first_nonfinite_weight(net)
    cause = f"; the update used {hyper}" if hyper else ""
    raise NumericalError(
        f"iteration {iteration}: the weights are NaN or Inf: layer "
        f"'{name}' parameter blob {k}{cause} (too large a learning rate or "
        f"weight_decay?); {doing}, {_kept(last_snapshot)}")


def check_step(net, iteration, loss, hyper="", last_snapshot=None):
    """Raise NumericalError when the loss or any parameter gradient is NaN /
    Inf, naming the iteration and the first layer where it appeared (or the
    parameter blob, when the weights themselves went bad)."""
    if np.isfinite(loss) and all_finite([b.diff for b in net.learnable_params
                                         if b.has_diff]):
        return
    check_weights(net, iteration, hyper, last_snapshot,
                  "training stopped before the update")
    where = first_nonfinite(net)
    at = (f"; first seen in layer '{where[0]}' ({where[1]})" if where
          else "")
    what = "loss" if not np.isfinite(loss) else "a gradient"
    used = f"; the last update used {hyper}" if hyper else ""
    raise NumericalError(
        f"iteration {iteration}: {what} is NaN or Inf (loss {loss}){at}"
        f"{used}; training stopped before the update, "
        f"{_kept(last_snapshot)}")
