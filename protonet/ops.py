"""Small numerical kernels shared by several layers."""

import numpy as np


def softmax(x, axis, out=None):
    """Numerically stable softmax of `x` along `axis` (Caffe subtracts the
    max before exponentiating, as here)."""
    out = np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out
