"""Spatial coordinate maps between NetSpec tops, and FCN-style cropping.

A map (axis, a, b) says: coordinate x of the "from" blob corresponds to
a * x + b in the "to" blob, along every spatial axis from `axis` on.
`coord_map_from_to` composes the maps of the layers between two tops (through
their nearest common ancestor); `crop` uses it to emit the Crop layer that
aligns a coarse upsampled score map with the input, as in FCN.

Mirrors: python/caffe/coord_map.py
"""

import numpy as np

from .errors import ProtonetError
from .netspec import layers as L

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout",
                       "Eltwise", "ELU", "Log", "LRN", "Exp", "MVN", "Power",
                       "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH",
                       "Threshold"]


class UndefinedMapException(ProtonetError):
    """The layer has no defined coordinate mapping."""


class AxisMismatchException(ProtonetError):
    """Two maps act on different axes and cannot be composed."""


class CropAssertionError(ProtonetError, AssertionError):
    """A crop pycaffe refuses with an `assert`: an AssertionError (as
    pycaffe raises) that is also a ProtonetError."""


def _field(params, name, default):
    value = params.get(name, default)
    return np.array(value, ndmin=1)


def conv_params(fn):
    """(axis, stride, effective kernel size, pad) of a Convolution,
    Deconvolution, Im2col or Pooling call."""
    params = fn.params.get("convolution_param",
                           fn.params.get("pooling_param", fn.params))
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h",
              "stride_w"} & set(params)
    if legacy:
        raise CropAssertionError(f"cropping does not support legacy _h/_w "
                                 f"params ({fn.type_name} uses "
                                 f"{', '.join(sorted(legacy))})")
    if "kernel_size" not in params:
        raise UndefinedMapException(f"coord_map: {fn.type_name} has no "
                                    "kernel_size (global pooling?)")
    axis = params.get("axis", 1)
    ks = _field(params, "kernel_size", 1)
    dilation = _field(params, "dilation", 1)
    return (axis, _field(params, "stride", 1), (ks - 1) * dilation + 1,
            _field(params, "pad", 0))


def crop_params(fn):
    """(axis, offset) of a Crop call, with Caffe's defaults (axis 2, the
    first axis the Crop layer cuts)."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), _field(params, "offset", 0)


def coord_map(fn):
    """The (axis, scale, shift) map from a layer's bottom to its top; the
    identity (None, 1, 0) for pointwise layers."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, ks, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (ks - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, ks, pad = conv_params(fn)
        return axis, stride, (ks - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        # NOTE(caffe): maps carry the last axis *before* the spatial ones
        # (a convolution's channel axis); a Crop names its first cut axis.
        return axis - 1, 1, -offset
    raise UndefinedMapException(f"coord_map: no coordinate map for "
                                f"{fn.type_name}")


def compose(base_map, next_map):
    """Apply `next_map` after `base_map`: scales multiply, shifts add (the
    later shift scaled by the earlier scale)."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"coord_map: cannot compose maps on "
                                    f"axis {ax1} and axis {ax2}")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(cmap):
    """The inverse map (un-shift then de-scale)."""
    ax, a, b = cmap
    return ax, 1 / a, -b / a


def _map_bottoms(top):
    # A Crop's second bottom only gives the reference shape: not mapped.
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def coord_map_from_to(top_from, top_to):
    """The map from `top_from` coordinates to `top_to` coordinates, found
    through their common ancestor.

    Raises:
        ProtonetError: the tops are not connected through spatial layers.
    """
    from_maps = {top_from: (None, 1, 0)}
    frontier = [top_from]
    while frontier:
        top = frontier.pop()
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _map_bottoms(top):
            from_maps[bottom] = compose(from_maps[top], step)
            frontier.append(bottom)

    to_maps = {top_to: (None, 1, 0)}
    frontier = [top_to]
    while frontier:
        top = frontier.pop()
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _map_bottoms(top):
            to_maps[bottom] = compose(to_maps[top], step)
            frontier.append(bottom)
    raise ProtonetError("Could not compute map between tops; are they "
                        "connected by spatial layers?")


def crop(top_from, top_to):
    """A Crop layer (a NetSpec top) cropping `top_from` to `top_to`'s
    spatial size at the offset that aligns their coordinates."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    if ax is None:
        raise ProtonetError("crop: the tops are related by pointwise layers "
                            "only; there is nothing to crop")
    # pycaffe asserts these; the messages are pycaffe's, the types both.
    if not np.all(a == 1):
        raise CropAssertionError(f"scale mismatch on crop (a = {a}): the "
                                 "tops must have the same resolution")
    if not np.all(b <= 0):
        raise CropAssertionError(f"cannot crop negative offset (b = {b}): "
                                 "top_from is smaller than top_to")
    if not np.all(np.round(b) == b):
        raise CropAssertionError(f"cannot crop noninteger offset (b = {b})")
    # The maps carry the axis before the first spatial one (see coord_map).
    return L.Crop(top_from, top_to,
                  crop_param=dict(axis=ax + 1, offset=[
                      int(v) for v in -np.round(np.atleast_1d(b))]))
