"""ONNX forms of fork layers: ShuffleChannel, PixelShuffle, Axpy, SegNet's
BN and max-unpooling Upsample, nearest Upsample, Interp and
BilinearInterpolate, ParseNet's UnPooling and ParseOutput.  The element-wise
fork activations (ReLU6, HardSwish, HardSigmoid, SeLu) are in convert_elem;
ConvolutionDepthwise in convert_nn."""

from __future__ import annotations

import numpy as np

from .convert_nn import _reduce
from .graph import converter


@converter("ShuffleChannel")
def shuffle_channel(ctx):
    """(N, g, C/g, rest) -> transpose the two group axes -> (N, C, ...)."""
    g, shape = ctx.layer.group, ctx.shapes[0]
    N, C = shape[:2]
    rest = int(np.prod(shape[2:]))
    x = ctx.reshape(ctx.x[0], shape, (N, g, C // g, rest), keeps_batch=True)
    x = ctx.op("Transpose", [x], perm=[0, 2, 1, 3])
    ctx.reshape(x, (N, C // g, g, rest), shape, top=0, keeps_batch=True)


@converter("PixelShuffle")
def pixel_shuffle(ctx):
    """top[n, c, h*r+i, w*r+j] = bottom[n, c*r*r + i*r + j, h, w]: ONNX's
    DepthToSpace in CRD order."""
    ctx.op("DepthToSpace", [ctx.x[0]], top=0, blocksize=int(ctx.layer.r), mode="CRD")


@converter("Axpy")
def axpy(ctx):
    """top = a * x + y, a (N, C) or (N, C, 1, 1) per channel."""
    a_shape, x_shape = ctx.shapes[0], ctx.shapes[1]
    target = tuple(a_shape[:2]) + (1,) * (len(x_shape) - 2)
    a = ctx.x[0] if tuple(a_shape) == target else \
        ctx.reshape(ctx.x[0], a_shape, target, keeps_batch=True)
    ctx.op("Add", [ctx.op("Mul", [a, ctx.x[1]]), ctx.x[2]], top=0)


@converter("BN")
def segnet_bn(ctx):
    """INFERENCE: scale * x + shift.  LEARN (every phase): batch mean m and
    variance E[x^2] - m^2 over N, H, W; scale * (x - m) / sqrt(v + 1e-9) +
    shift."""
    layer, x = ctx.layer, ctx.x[0]
    scale = ctx.const(layer.blobs[0].data, "scale")
    shift = ctx.const(layer.blobs[1].data, "shift")
    if layer.learn:
        if len(ctx.tops) > 1:
            raise ctx.fail("the mean / variance tops of bn_mode LEARN")
        axes = [0, 2, 3]
        mean = _reduce(ctx, "ReduceMean", x, axes)
        ex2 = _reduce(ctx, "ReduceMean", ctx.op("Mul", [x, x]), axes)
        var = ctx.op("Sub", [ex2, ctx.op("Mul", [mean, mean])])
        std = ctx.op("Sqrt", [ctx.op("Add", [var, ctx.const(np.float32(layer.EPS), "eps")])])
        x = ctx.op("Div", [ctx.op("Sub", [x, mean]), std])
    ctx.op("Add", [ctx.op("Mul", [x, scale]), shift], top=0)


def _unpool(ctx, out_h, out_w):
    """Caffe's per-plane mask index h*W + w -> ONNX MaxUnpool's index over
    the whole (N, C, out_h, out_w) tensor."""
    N, C = ctx.shapes[0][:2]
    if ctx.dynamic:
        raise ctx.fail("max-unpooling needs a fixed batch (its indices count "
                       "over the whole tensor); export with a fixed --batch")
    offset = (np.arange(N * C, dtype=np.int64) * out_h * out_w).reshape(N, C, 1, 1)
    idx = ctx.op("Add", [ctx.op("Cast", [ctx.x[1]], to=7),
                         ctx.const(offset, "plane_offset", np.int64)])
    ctx.op("MaxUnpool", [ctx.x[0], idx, ctx.ints([N, C, out_h, out_w])], top=0,
           kernel_shape=[1, 1])


@converter("Upsample")
def upsample(ctx):
    layer = ctx.layer
    if layer.segnet:
        _unpool(ctx, *ctx.top_shapes[0][2:])
        return
    # Nearest neighbour: top[..., h*s + i] = x[..., h] = floor(out / s).
    shape = ctx.shapes[0]
    scales = [1.0] * len(shape)
    for axis in range(max(2, len(shape) - (layer.dims - 2)), len(shape)):
        scales[axis] = float(layer.scale)
    ctx.op("Resize", [ctx.x[0], "", ctx.const(np.asarray(scales, np.float32), "scales")],
           top=0, mode="nearest", coordinate_transformation_mode="asymmetric",
           nearest_mode="floor")


@converter("MaxUnPool")
def max_unpool(ctx):
    _unpool(ctx, *ctx.layer.dst)


def _resize_linear(ctx, x, mode):
    """Resize to the top's static H, W; with a dynamic batch the sizes'
    first two entries come from the input's own shape."""
    if ctx.dynamic:
        lead = ctx.op("Slice", [ctx.op("Shape", [x]), ctx.ints([0], "zero"),
                                ctx.ints([2], "two")])
        sizes = ctx.op("Concat", [lead, ctx.ints(ctx.top_shapes[0][2:], "hw")], axis=0)
    else:
        sizes = ctx.ints(ctx.top_shapes[0], "sizes")
    ctx.op("Resize", [x, "", "", sizes], top=0, mode="linear",
           coordinate_transformation_mode=mode)


@converter("Interp")
def interp(ctx):
    """DeepLab's Interp: crop by -pad_beg / -pad_end, then bilinear with
    align-corners coordinates (H_eff - 1) / (H_out - 1) * i."""
    p = ctx.layer.p
    x = ctx.x[0]
    H, W = ctx.shapes[0][2:]
    if p.pad_beg or p.pad_end:
        x = ctx.op("Slice", [x, ctx.ints([-p.pad_beg] * 2, "starts"),
                             ctx.ints([H + p.pad_end, W + p.pad_end], "ends"),
                             ctx.ints([2, 3], "axes")])
    _resize_linear(ctx, x, "align_corners")


@converter("BilinearInterpolate")
def bilinear_interpolate(ctx):
    """align_corners, or half-pixel centres clamped to the input (PyTorch's
    align_corners=False)."""
    mode = "align_corners" if ctx.layer.p.align_corners else "half_pixel"
    _resize_linear(ctx, ctx.x[0], mode)


@converter("UnPooling")
def unpooling(ctx):
    """ParseNet's global REP unpooling: (N, C, 1, 1) repeated to H x W."""
    H, W = ctx.shapes[1][2:]
    ctx.op("Expand", [ctx.x[0], ctx.ints([1, 1, H, W])], top=0)


@converter("ParseOutput")
def parse_output(ctx):
    """The label map: argmax over channels, ties to the lowest channel."""
    idx = ctx.op("ArgMax", [ctx.x[0]], axis=1, keepdims=1)
    ctx.op("Cast", [idx], top=0, to=1)
    if len(ctx.tops) > 1:
        ctx.op("Identity", [_reduce(ctx, "ReduceMax", ctx.x[0], [1])], top=1)
