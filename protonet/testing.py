"""Testing helpers: build one layer from prototxt text and check its gradient.

`check_gradient` is Caffe's GradientChecker in NumPy: the objective is a fixed
random projection of every top, sum_i <R_i, top_i>, so each top element
contributes with its own weight; analytic gradients from `backward` are
compared with central differences, element by element, in float64.
"""

import numpy as np

from . import rng as _rng
from .blob import Blob
from .io import parse_text
from .layer import create_layer
from .proto import caffe_pb2


def layer_param(text, phase=caffe_pb2.TEST):
    """A LayerParameter from prototxt text (with or without `layer { }`)."""
    if isinstance(text, caffe_pb2.LayerParameter):
        p = caffe_pb2.LayerParameter()
        p.CopyFrom(text)
    else:
        s = text.strip()
        if s.startswith("layer") and "{" in s and s[5:].lstrip().startswith("{"):
            s = s[s.index("{") + 1: s.rindex("}")]
        p = parse_text(s, caffe_pb2.LayerParameter())
    if not p.HasField("phase"):
        p.phase = phase
    if not p.name:
        p.name = p.type.lower() or "layer"
    return p


def make_layer(text, bottoms, phase=caffe_pb2.TEST, dtype=np.float64,
               num_tops=None):
    """Create and set up a layer on bottoms (arrays); returns
    (layer, bottom_blobs, top_blobs)."""
    p = layer_param(text, phase)
    layer = create_layer(p, dtype)
    bottom = []
    for a in bottoms:
        a = np.asarray(a, dtype)
        b = Blob(a.shape, dtype)
        b.data[...] = a
        bottom.append(b)
    n = len(p.top) if num_tops is None else num_tops
    top = [Blob((), dtype) for _ in range(n)]
    layer.set_up(bottom, top)
    return layer, bottom, top


def run_forward(layer, bottom, top, seed=0):
    _rng.set_random_seed(seed)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)


def check_gradient(text, bottoms, check_bottoms=None, check_params=True,
                   phase=caffe_pb2.TEST, step=1e-5, rtol=1e-4, atol=1e-6,
                   seed=1701, params=None, max_checks=300, num_tops=None):
    """Compare `backward` with central differences, in float64.

    Args:
        text: the layer's prototxt (or a LayerParameter).
        bottoms: list of arrays.
        check_bottoms: indices of bottoms to check (default: all).
        check_params: True (all), False, or a list of parameter blob indices.
        params: optional list of arrays to put in the layer's blobs.
        max_checks: at most this many elements per blob (a seeded random
            subset) keep the check fast on larger blobs.

    Returns:
        The largest relative error seen.

    Raises:
        AssertionError: naming the blob, element, analytic and numeric values.
    """
    layer, bottom, top = make_layer(text, bottoms, phase, np.float64, num_tops)
    if params is not None:
        for blob, arr in zip(layer.blobs, params):
            blob.data[...] = arr
    gen = np.random.default_rng(seed)
    run_forward(layer, bottom, top)
    proj = [gen.standard_normal(t.shape) for t in top]

    def objective():
        run_forward(layer, bottom, top)
        return sum(float(np.sum(t.data * r)) for t, r in zip(top, proj))

    run_forward(layer, bottom, top)
    for t, r in zip(top, proj):
        t.diff[...] = r
    for blob in layer.blobs:
        blob.diff[...] = 0
    check_bottoms = list(range(len(bottom))) if check_bottoms is None \
        else list(check_bottoms)
    prop = [i in check_bottoms for i in range(len(bottom))]
    layer.backward(top, prop, bottom)
    targets = [(f"bottom[{i}]", bottom[i], bottom[i].diff.copy())
               for i in check_bottoms]
    if check_params:
        idx = range(len(layer.blobs)) if check_params is True else check_params
        targets += [(f"param[{k}]", layer.blobs[k], layer.blobs[k].diff.copy())
                    for k in idx]
    worst = 0.0
    for label, blob, analytic in targets:
        flat = blob.data.reshape(-1)
        n = flat.size
        picks = np.arange(n) if n <= max_checks else \
            gen.choice(n, max_checks, replace=False)
        for e in picks:
            orig = flat[e]
            flat[e] = orig + step
            fp = objective()
            flat[e] = orig - step
            fm = objective()
            flat[e] = orig
            numeric = (fp - fm) / (2 * step)
            a = analytic.reshape(-1)[e]
            err = abs(a - numeric)
            scale = max(abs(a), abs(numeric), 1.0)
            worst = max(worst, err / scale)
            if err > atol + rtol * max(abs(a), abs(numeric)) and err / scale > rtol:
                raise AssertionError(
                    f"{layer.type} layer '{layer.name}': gradient of {label} "
                    f"element {np.unravel_index(e, blob.shape)}: analytic "
                    f"{a:.8g}, numeric {numeric:.8g}")
    return worst
