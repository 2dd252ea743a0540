"""ONNX forms of Caffe's shape and indexing layers: Concat, Slice, Flatten,
Reshape, Crop, Permute, Tile, Reduction, ArgMax, Embed, Parameter and the
constant-folded PriorBox."""

from __future__ import annotations

import numpy as np

from ..proto import caffe_pb2
from .convert_nn import _reduce
from .graph import converter


@converter("Concat")
def concat(ctx):
    axis = ctx.layer.axis
    if len(ctx.x) == 1:
        ctx.alias(0, ctx.x[0])
        return
    ctx.no_batch_axis(axis, "concatenation")
    ctx.op("Concat", ctx.x, top=0, axis=int(axis))


@converter("Slice")
def slice_(ctx):
    layer = ctx.layer
    if len(ctx.tops) == 1:
        ctx.alias(0, ctx.x[0])
        return
    ctx.no_batch_axis(layer.axis, "slicing")
    sizes = [b - a for a, b in zip(layer.bounds, layer.bounds[1:])]
    ctx.g.op("Split", [ctx.x[0], ctx.ints(sizes, "split")], list(ctx.tops),
             hint=ctx.name, axis=int(layer.axis))


@converter("Flatten")
def flatten(ctx):
    p = ctx.param.flatten_param
    start = p.axis + len(ctx.shapes[0]) if p.axis < 0 else p.axis
    ctx.reshape(ctx.x[0], ctx.shapes[0], ctx.top_shapes[0], top=0,
                keeps_batch=start > 0)


@converter("Reshape")
def reshape(ctx):
    """Caffe's 0 (copy) and -1 (infer) dims are resolved by the built net;
    the static top shape is written (axis 0 symbolic with a dynamic batch
    when the layer copies it)."""
    p = ctx.param.reshape_param
    start = p.axis if p.axis >= 0 else len(ctx.shapes[0]) + p.axis + 1
    dims = list(p.shape.dim)
    keeps = start > 0 or (p.num_axes != 0 and bool(dims) and dims[0] == 0)
    ctx.reshape(ctx.x[0], ctx.shapes[0], ctx.top_shapes[0], top=0,
                keeps_batch=keeps)


@converter("Crop")
def crop(ctx):
    layer = ctx.layer
    a = layer.axis
    ctx.no_batch_axis(a, "cropping")
    ref = ctx.shapes[1][a:]
    starts = list(layer.offsets)
    ends = [o + r for o, r in zip(starts, ref)]
    axes = list(range(a, a + len(ref)))
    ctx.op("Slice", [ctx.x[0], ctx.ints(starts, "starts"), ctx.ints(ends, "ends"),
                     ctx.ints(axes, "axes")], top=0)


@converter("Permute")
def permute(ctx):
    order = list(ctx.layer.order)
    if ctx.dynamic and order[0] != 0:
        raise ctx.fail("the permutation moves the batch axis; export with a "
                       "fixed --batch")
    ctx.op("Transpose", [ctx.x[0]], top=0, perm=order)


@converter("Tile")
def tile(ctx):
    """Caffe repeats the block of axes axis.. `tiles` times: np.tile along
    `axis`, which is ONNX's Tile with one repeat count per axis."""
    shape, top_shape = ctx.shapes[0], ctx.top_shapes[0]
    repeats = [t // s if s else 1 for s, t in zip(shape, top_shape)]
    ctx.op("Tile", [ctx.x[0], ctx.ints(repeats, "repeats")], top=0)


_RED = caffe_pb2.ReductionParameter


@converter("Reduction")
def reduction(ctx):
    """coeff * reduce(x over axes axis..end); the top has the axes before."""
    layer, shape = ctx.layer, ctx.shapes[0]
    axes = list(range(layer.axis, len(shape)))
    ctx.no_batch_axis(layer.axis, "reduction")
    kind = {_RED.SUM: "ReduceSum", _RED.ASUM: "ReduceL1",
            _RED.SUMSQ: "ReduceSumSquare", _RED.MEAN: "ReduceMean"}[layer.op]
    y = _reduce(ctx, kind, ctx.x[0], axes, keepdims=0)
    if layer.coeff != 1:
        ctx.op("Mul", [y, ctx.const(np.float32(layer.coeff), "coeff")], top=0)
    else:
        ctx.op("Identity", [y], top=0)


@converter("ArgMax")
def argmax(ctx):
    """top_k 1 only: Caffe ranks (value, index) descending, so the last of
    equal maxima wins (select_last_index); for top_k > 1 ONNX's TopK orders
    ties the other way."""
    layer, x = ctx.layer, ctx.x[0]
    if layer.top_k != 1:
        raise ctx.fail(f"argmax_param.top_k {layer.top_k} (ONNX TopK orders "
                       "equal values by lower index, Caffe by higher)")
    shape = ctx.shapes[0]
    if layer.has_axis:
        axis = int(layer.axis)
    else:
        x = ctx.reshape(x, shape, [shape[0], int(np.prod(shape[1:]))],
                        keeps_batch=True)
        axis = 1
    if layer.out_max_val and layer.has_axis:
        y = _reduce(ctx, "ReduceMax", x, [axis])
    else:
        idx = ctx.op("ArgMax", [x], axis=axis, keepdims=1, select_last_index=1)
        y = ctx.op("Cast", [idx], to=1)
        if layer.out_max_val:
            y = ctx.op("Concat", [y, _reduce(ctx, "ReduceMax", x, [axis])], axis=1)
    ctx.reshape(y, (shape[0], 2 if layer.out_max_val and not layer.has_axis else 1),
                ctx.top_shapes[0], top=0, keeps_batch=True)


@converter("Embed")
def embed(ctx):
    """y = W[x] (+ b): a Gather of the weight rows at the integer inputs."""
    layer = ctx.layer
    idx = ctx.op("Cast", [ctx.x[0]], to=7)
    y = ctx.op("Gather", [ctx.const(layer.blobs[0].data, "weight"), idx], axis=0,
               top=None if len(layer.blobs) > 1 else 0)
    if len(layer.blobs) > 1:
        ctx.op("Add", [y, ctx.const(layer.blobs[1].data, "bias")], top=0)


@converter("Parameter")
def parameter(ctx):
    ctx.op("Identity", [ctx.const(ctx.layer.blobs[0].data, "value")], top=0)


@converter("PriorBox")
def prior_box(ctx):
    """Folded to a constant: the boxes depend only on the shapes."""
    ctx.op("Identity", [ctx.const(ctx.top_data()[0], "priors")], top=0)


@converter("DummyData")
def dummy_data(ctx):
    """Constant-filled tops become constants; a random filler redraws every
    forward, which no deterministic graph reproduces."""
    p = ctx.param.dummy_data_param
    fillers = list(p.data_filler)
    for i in range(len(ctx.tops)):
        f = fillers[0] if len(fillers) == 1 else fillers[i] if fillers else None
        if f is not None and f.type != "constant":
            raise ctx.fail(f"top {i} is redrawn from a '{f.type}' filler every "
                           "forward (random); only constant tops can be exported")
        value = np.full(ctx.top_shapes[i], f.value if f is not None else 0, np.float32)
        ctx.op("Identity", [ctx.const(value, f"value{i}")], top=i)
