"""ONNX forms of Caffe's convolution, pooling, inner product and
normalisation layers.

Each converter reproduces Caffe's arithmetic exactly; where ONNX's operator
differs from Caffe (pooling's output size and AVE divisor, BatchNorm's stored
scale factor, MVN's eps outside the square root) the difference is expressed
with extra pads, a constant divisor map or explicit ops.
"""

from __future__ import annotations

import numpy as np

from ..layers.vision import pooled_size
from ..proto import caffe_pb2
from .graph import converter

_PP = caffe_pb2.PoolingParameter


def _conv_attrs(layer):
    return dict(kernel_shape=list(layer.kernel), strides=list(layer.stride),
                pads=list(layer.pad) * 2, dilations=list(layer.dilation),
                group=int(layer.group))


@converter("Convolution", "ConvolutionDepthwise", "DepthwiseConvolution",
           "Deconvolution")
def convolution(ctx):
    """Conv / ConvTranspose: Caffe's weight layouts are ONNX's, its output
    sizes (floor for Conv; s*(H-1) + d*(k-1) + 1 - 2p for deconvolution)
    are ONNX's with symmetric pads."""
    layer = ctx.layer
    if layer.channel_axis != 1:
        raise ctx.fail(f"convolution_param.axis {layer.channel_axis} (ONNX "
                       "convolves over axis 1)")
    w = ctx.const(layer.blobs[0].data, "weight")
    inputs = [w] + ([ctx.const(layer.blobs[1].data.reshape(-1), "bias")]
                    if layer.bias_term else [])
    kind = "ConvTranspose" if ctx.param.type == "Deconvolution" else "Conv"
    for i, x in enumerate(ctx.x):
        ctx.op(kind, [x] + inputs, top=i, **_conv_attrs(layer))


def _pool_geometry(ctx):
    """(kernel, stride, begin pads, end pads, rows kept per axis or None).

    Caffe's output size P (ceil or floor, minus a last window that would
    start in the padding) is reached by ONNX's floor formula with end pad
    (P-1)*s + k - H - p; when that is negative the unread tail of the input
    is sliced off instead (ONNX pads are non-negative)."""
    layer = ctx.layer
    H = ctx.shapes[0][2:]
    ends, keep = [], []
    for size, k, s, p in zip(H, layer.kernel, layer.stride, layer.pad):
        P = pooled_size(size, k, s, p, layer.ceil)
        end = (P - 1) * s + k - size - p
        ends.append(max(end, 0))
        keep.append(size + min(end, 0))
    return list(layer.kernel), list(layer.stride), list(layer.pad), ends, keep


def _ave_divisor_ratio(ctx, keep):
    """valid / caffe per output cell: ONNX (count_include_pad=0) divides by
    the window clipped to the input; Caffe by the window clipped to
    [-pad, H+pad).  None when they agree everywhere."""
    layer = ctx.layer
    ratio = 1.0
    for axis, (size, k, s, p, P) in enumerate(zip(
            keep, layer.kernel, layer.stride, layer.pad, ctx.top_shapes[0][2:])):
        start = np.arange(P) * s - p
        caffe = np.minimum(start + k, ctx.shapes[0][2 + axis] + p) - start
        valid = np.minimum(start + k, size) - np.maximum(start, 0)
        r = valid / caffe
        ratio = np.multiply.outer(ratio, r) if axis else r
    return None if np.all(ratio == 1) else ratio


@converter("Pooling")
def pooling(ctx):
    layer = ctx.layer
    x = ctx.x[0]
    if len(ctx.shapes[0]) != 4:
        raise ctx.fail(f"Pooling of a {len(ctx.shapes[0])}-D bottom")
    if layer.global_pooling and len(ctx.tops) == 1 and layer.pool != _PP.STOCHASTIC:
        kind = "GlobalMaxPool" if layer.pool == _PP.MAX else "GlobalAveragePool"
        ctx.op(kind, [x], top=0)
        return
    k, s, pb, pe, keep = _pool_geometry(ctx)
    if keep != list(ctx.shapes[0][2:]):
        x = ctx.op("Slice", [x, ctx.ints([0, 0], "starts"), ctx.ints(keep, "ends"),
                             ctx.ints([2, 3], "axes")])
    attrs = dict(kernel_shape=k, strides=s, pads=pb + pe)
    if layer.pool == _PP.MAX:
        if len(ctx.tops) == 1:
            ctx.op("MaxPool", [x], top=0, **attrs)
            return
        # The mask top: Caffe's flat h * W + w within each plane of the
        # (unsliced) input; ONNX's indices count over the whole tensor.
        y, idx = ctx.g.op("MaxPool", [x], [ctx.out(0), ctx.g.fresh(f"{ctx.name}/idx")],
                          hint=ctx.name, **attrs)
        Hk, Wk = keep
        plane = ctx.op("Mod", [idx, ctx.const(np.int64(Hk * Wk), "plane", np.int64)])
        W = ctx.shapes[0][3]
        if Wk != W:   # a cut-off column changes the row stride: h * W + w
            wk = ctx.const(np.int64(Wk), "kept_width", np.int64)
            rows = ctx.op("Mul", [ctx.op("Div", [plane, wk]),
                                  ctx.const(np.int64(W), "width", np.int64)])
            plane = ctx.op("Add", [rows, ctx.op("Mod", [plane, wk])])
        ctx.op("Cast", [plane], top=1, to=1)
        return
    if layer.pool == _PP.STOCHASTIC:
        # TEST-time stochastic pooling: sum(x^2) / sum(x) over the window
        # clipped to the input; the two window counts cancel.
        sq = ctx.op("Mul", [x, x])
        num = ctx.op("AveragePool", [sq], count_include_pad=0, **attrs)
        den = ctx.op("AveragePool", [x], count_include_pad=0, **attrs)
        ctx.op("Div", [num, den], top=0)
        return
    ratio = _ave_divisor_ratio(ctx, keep)
    if ratio is None:
        ctx.op("AveragePool", [x], top=0, count_include_pad=0, **attrs)
        return
    y = ctx.op("AveragePool", [x], count_include_pad=0, **attrs)
    ctx.op("Mul", [y, ctx.const(ratio[None, None], "divisor_ratio")], top=0)


@converter("InnerProduct")
def inner_product(ctx):
    """y = x.reshape(M, K) @ W^T + b, the rows spanning the axes before
    `axis`; `transpose` stores W as (K, N)."""
    layer = ctx.layer
    w = layer.blobs[0].data
    w = w if layer.transpose else w.T
    b = layer.blobs[1].data.reshape(-1) if layer.bias_term else None
    shape, axis = ctx.shapes[0], layer.axis
    if axis == 1:
        flat = ctx.x[0] if len(shape) == 2 else ctx.op("Flatten", [ctx.x[0]], axis=1)
        inputs = [flat, ctx.const(w, "weight")] + ([ctx.const(b, "bias")] if b is not None else [])
        ctx.op("Gemm", inputs, top=0)
        return
    lead = list(shape[:axis])
    flat = ctx.reshape(ctx.x[0], shape, lead + [int(np.prod(shape[axis:]))]) \
        if axis else ctx.reshape(ctx.x[0], shape, [1, int(np.prod(shape))])
    if b is None:
        y = ctx.op("MatMul", [flat, ctx.const(w, "weight")],
                   top=0 if axis else None)
    else:
        y = ctx.op("MatMul", [flat, ctx.const(w, "weight")])
        y = ctx.op("Add", [y, ctx.const(b, "bias")], top=0 if axis else None)
    if not axis:
        ctx.op("Reshape", [y, ctx.ints(ctx.top_shapes[0])], top=0)


@converter("LRN")
def lrn(ctx):
    p = ctx.param.lrn_param
    n = p.local_size
    if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        # NOTE(caffe): scale = k + alpha/n * sum x^2 over n channels: ONNX's
        # LRN has the same alpha/size convention and centred window.
        ctx.op("LRN", [ctx.x[0]], top=0, size=n, alpha=p.alpha, beta=p.beta,
               bias=p.k)
        return
    # WITHIN_CHANNEL: s = 1 + alpha * avg_{n x n, zero padded}(x^2) (Caffe's
    # AVE pooling divides by n^2 everywhere here; k is ignored).
    x = ctx.x[0]
    pad = (n - 1) // 2
    sq = ctx.op("Mul", [x, x])
    avg = ctx.op("AveragePool", [sq], kernel_shape=[n, n], pads=[pad] * 4,
                 count_include_pad=1)
    s = ctx.op("Add", [ctx.op("Mul", [avg, ctx.const(np.float32(p.alpha), "alpha")]),
                       ctx.const(np.float32(1), "one")])
    d = ctx.op("Pow", [s, ctx.const(np.float32(p.beta), "beta")])
    ctx.op("Div", [x, d], top=0)


def _channel_shape(shape, axis=1):
    """(C, 1, ..., 1): a per-channel vector aligned to `axis` of `shape`."""
    return (shape[axis],) + (1,) * (len(shape) - axis - 1)


@converter("BatchNorm")
def batch_norm(ctx):
    """y = (x - mean) / sqrt(var + eps); with global statistics mean and var
    are blobs[0] and blobs[1] divided by Caffe's scale factor blobs[2]."""
    layer, x, shape = ctx.layer, ctx.x[0], ctx.shapes[0]
    eps = np.float32(layer.eps)
    if not layer.use_global_stats:
        axes = [0] + list(range(2, len(shape)))
        mean = _reduce(ctx, "ReduceMean", x, axes)
        xc = ctx.op("Sub", [x, mean])
        var = _reduce(ctx, "ReduceMean", ctx.op("Mul", [xc, xc]), axes)
        std = ctx.op("Sqrt", [ctx.op("Add", [var, ctx.const(eps, "eps")])])
        ctx.op("Div", [xc, std], top=0)
        return
    f = layer.blobs[2].data.reshape(-1)[0]
    scale = np.float32(0 if f == 0 else 1 / f)
    mean = layer.blobs[0].data * scale
    var = layer.blobs[1].data * scale
    C = mean.size
    if len(shape) >= 2:
        ctx.op("BatchNormalization",
               [x, ctx.const(np.ones(C), "gamma"), ctx.const(np.zeros(C), "beta"),
                ctx.const(mean, "mean"), ctx.const(var, "var")],
               top=0, epsilon=float(eps))
        return
    std = np.sqrt(var + eps)
    ctx.op("Div", [ctx.op("Sub", [x, ctx.const(mean, "mean")]), ctx.const(std, "std")], top=0)


def _reduce(ctx, kind, x, axes, keepdims=1):
    """A Reduce* node: axes as an input from opset 18 (ReduceSum: 13)."""
    if kind == "ReduceSum" or ctx.g.opset >= 18:
        return ctx.op(kind, [x, ctx.ints(axes, "axes")], keepdims=keepdims)
    return ctx.op(kind, [x], axes=list(axes), keepdims=keepdims)


@converter("MVN")
def mvn(ctx):
    """y = (x - mean) / (std + eps) per (n, c) slice (per n across channels).

    NOTE(caffe): eps is added to the standard deviation, not the variance.
    The top takes Caffe's legacy 4-D shape."""
    layer, shape = ctx.layer, ctx.shapes[0]
    x = ctx.x[0]
    top_shape = ctx.top_shapes[0]
    if tuple(shape) != tuple(top_shape):
        x = ctx.reshape(x, shape, top_shape)
    axes = [1, 2, 3] if layer.across_channels else [2, 3]
    y = ctx.op("Sub", [x, _reduce(ctx, "ReduceMean", x, axes)],
               top=None if layer.normalize_variance else 0)
    if layer.normalize_variance:
        var = _reduce(ctx, "ReduceMean", ctx.op("Mul", [y, y]), axes)
        std = ctx.op("Add", [ctx.op("Sqrt", [var]), ctx.const(np.float32(layer.eps), "eps")])
        ctx.op("Div", [y, std], top=0)


@converter("Normalize")
def normalize(ctx):
    """y = scale * x / sqrt(sum x^2 + eps), the sum over channels (or over
    channels and space with across_spatial)."""
    layer, shape = ctx.layer, ctx.shapes[0]
    axes = list(range(1, len(shape))) if layer.across_spatial else [1]
    x = ctx.x[0]
    ss = _reduce(ctx, "ReduceSumSquare", x, axes)
    norm = ctx.op("Sqrt", [ctx.op("Add", [ss, ctx.const(np.float32(layer.eps), "eps")])])
    y = ctx.op("Div", [x, norm])
    scale = layer.blobs[0].data
    scale = scale.reshape(()) if layer.channel_shared else \
        scale.reshape(_channel_shape(shape))
    ctx.op("Mul", [y, ctx.const(scale, "scale")], top=0)


@converter("SPP")
def spp(ctx):
    """Each pyramid level is the Pooling layer protonet builds for it (with
    Caffe's geometry), flattened; the levels are concatenated on axis 1."""
    from .graph import LayerContext
    outs = []
    single = len(ctx.layer.levels) == 1
    for level, t in zip(ctx.layer.levels, ctx.layer._tops):
        name = ctx.out(0) if single else ctx.g.fresh(f"{level.name}/pooled")
        sub = LayerContext(ctx.g, level, ctx.x, ctx.shapes, [name], [tuple(t.shape)],
                           ctx.dynamic, None)
        pooling(sub)
        outs.append(name if single else ctx.op("Flatten", [name], axis=1))
    if not single:
        ctx.op("Concat", outs, top=0, axis=1)
