"""Fillers: the initial values of parameter (and DummyData) blobs.

Mirrors: include/caffe/filler.hpp.  Random fillers draw from protonet's
generator (`protonet.rng`), seeded by `set_random_seed` or a solver's
`random_seed`, so a run is reproducible (though not bit-identical to Caffe's
Boost generator).  A filler left out is `constant` 0, as in Caffe.

Fan-in and fan-out follow Caffe: fan_in = count / shape[0],
fan_out = count / shape[1] (count for a 1-D blob).
"""

import numpy as np

from . import rng as _rng
from .errors import LayerError, UnsupportedError
from .proto import caffe_pb2

_FP = caffe_pb2.FillerParameter


def _fans(shape, count):
    fan_in = count // shape[0] if shape and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _variance_n(p, shape, count):
    fan_in, fan_out = _fans(shape, count)
    if p.variance_norm == _FP.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if p.variance_norm == _FP.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def filler_values(p, shape, dtype=np.float32, layer=None):
    """An array of `shape` filled as FillerParameter `p` says (p=None: zeros)."""
    shape = tuple(shape)
    count = int(np.prod(shape, dtype=np.int64))
    if p is None:
        return np.zeros(shape, dtype)
    kind = p.type
    gen = _rng.generator()
    if p.sparse != -1 and kind != "gaussian":
        raise UnsupportedError(layer, f"filler '{kind}': field sparse is only "
                               "supported by the gaussian filler")
    if kind == "constant":
        out = np.full(shape, p.value, dtype)
    elif kind == "uniform":
        if p.max < p.min:
            raise LayerError(layer, f"uniform filler: max ({p.max}) < min ({p.min})")
        out = gen.uniform(p.min, p.max, shape)
    elif kind == "gaussian":
        out = gen.normal(p.mean, p.std, shape)
        if p.sparse >= 0:
            if not shape:
                raise LayerError(layer, "sparse gaussian filler needs a blob "
                                 "with at least one axis")
            # NOTE(caffe): each weight is kept with probability sparse / shape[0].
            prob = p.sparse / float(shape[0])
            out *= gen.random(shape) < prob
    elif kind == "positive_unitball":
        out = gen.uniform(0.0, 1.0, shape)
        if count:
            rows = out.reshape(shape[0] if shape else 1, -1)
            rows /= rows.sum(axis=1, keepdims=True)
    elif kind == "xavier":
        scale = np.sqrt(3.0 / _variance_n(p, shape, count))
        out = gen.uniform(-scale, scale, shape)
    elif kind == "msra":
        std = np.sqrt(2.0 / _variance_n(p, shape, count))
        out = gen.normal(0.0, std, shape)
    elif kind in ("bilinear", "bilinear_upsampling"):
        # NOTE: "bilinear_upsampling" is ParseNet's (weiliu89/caffe fcn
        # branch) name for the same deconvolution-upsampling kernel.
        if len(shape) != 4 or shape[2] != shape[3]:
            raise LayerError(layer, f"bilinear filler needs a 4-D blob with "
                             f"square kernels, got shape {shape}")
        k = shape[3]
        f = int(np.ceil(k / 2.0))
        c = (k - 1) / (2.0 * f)
        x = np.arange(k, dtype=np.float64)
        w = 1 - np.abs(x / f - c)
        out = np.broadcast_to(np.outer(w, w), shape)
    else:
        raise UnsupportedError(layer, f"unknown filler type '{kind}' (known: "
                               "constant, uniform, gaussian, positive_unitball, "
                               "xavier, msra, bilinear)")
    return np.asarray(out, dtype=dtype)


def fill(blob, p, layer=None):
    """Fill `blob.data` in place with FillerParameter `p` (None: zeros)."""
    blob.data[...] = filler_values(p, blob.shape, blob.dtype, layer)
    return blob
