"""Locating NaN / Inf after a failing training step.

`first_nonfinite(net)` walks the layers in forward order and names the first
one whose top data holds a NaN or Inf (where the fault appeared going
forward); failing that, the last layer in forward order -- the first going
backward -- whose parameter diffs or bottom diffs hold one.  The solver calls
`check_step` after each forward/backward, before the update, so a bad step
never reaches the weights and the last snapshot on disk stays valid.
"""

import numpy as np

from .errors import NumericalError


def _bad(arr):
    # np.sum is one fast pass; NaN/Inf anywhere makes it non-finite (a sum
    # that merely overflows is reported too, which is equally fatal).
    with np.errstate(all="ignore"):
        return arr.size and not np.isfinite(np.sum(arr, dtype=np.float64))


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


def check_step(net, iteration, loss):
    """Raise NumericalError when the loss or any parameter gradient is NaN /
    Inf, naming the iteration and the first layer where it appeared."""
    if np.isfinite(loss) and not any(_bad(b.diff) for b in net.learnable_params
                                     if b.has_diff):
        return
    where = first_nonfinite(net)
    at = (f"; first seen in layer '{where[0]}' ({where[1]})" if where
          else "")
    what = "loss" if not np.isfinite(loss) else "a gradient"
    raise NumericalError(
        f"iteration {iteration}: {what} is NaN or Inf (loss {loss}){at}; "
        "training stopped before the update, the last snapshot on disk is "
        "kept")
