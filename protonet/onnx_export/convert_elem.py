"""ONNX forms of Caffe's element-wise layers: activations, Power / Exp /
Log, Eltwise, Scale, Bias, Softmax, and the layers that vanish at inference
(Dropout, Split, Silence)."""

from __future__ import annotations

import numpy as np

from ..proto import caffe_pb2
from .graph import converter

_f = np.float32


def _unary(op, **attrs):
    def convert(ctx):
        ctx.op(op, [ctx.x[0]], top=0, **attrs)
    return convert


for _caffe, _onnx in (("Sigmoid", "Sigmoid"), ("TanH", "Tanh"), ("AbsVal", "Abs")):
    converter(_caffe)(_unary(_onnx))


@converter("ReLU")
def relu(ctx):
    slope = ctx.param.relu_param.negative_slope
    if slope:
        ctx.op("LeakyRelu", [ctx.x[0]], top=0, alpha=slope)
    else:
        ctx.op("Relu", [ctx.x[0]], top=0)


@converter("ELU")
def elu(ctx):
    ctx.op("Elu", [ctx.x[0]], top=0, alpha=ctx.param.elu_param.alpha)


@converter("BNLL")
def bnll(ctx):
    """NOTE(caffe): the overflow-free max(x, 0) + log(1 + exp(-|x|))."""
    x = ctx.x[0]
    e = ctx.op("Exp", [ctx.op("Neg", [ctx.op("Abs", [x])])])
    soft = ctx.op("Log", [ctx.op("Add", [e, ctx.const(_f(1), "one")])])
    ctx.op("Add", [ctx.op("Relu", [x]), soft], top=0)


@converter("PReLU")
def prelu(ctx):
    a = ctx.layer.blobs[0].data
    shape = ctx.shapes[0]
    a = a.reshape((1,)) if ctx.param.prelu_param.channel_shared else \
        a.reshape((shape[1],) + (1,) * (len(shape) - 2))
    ctx.op("PRelu", [ctx.x[0], ctx.const(a, "slope")], top=0)


@converter("Threshold")
def threshold(ctx):
    t = _f(ctx.param.threshold_param.threshold)
    ctx.op("Cast", [ctx.op("Greater", [ctx.x[0], ctx.const(t, "threshold")])],
           top=0, to=1)


@converter("Clip")
def clip(ctx):
    p = ctx.param.clip_param
    ctx.op("Clip", [ctx.x[0], ctx.const(_f(p.min), "min"), ctx.const(_f(p.max), "max")],
           top=0)


@converter("Swish")
def swish(ctx):
    x = ctx.x[0]
    beta = ctx.param.swish_param.beta
    z = x if beta == 1 else ctx.op("Mul", [x, ctx.const(_f(beta), "beta")])
    ctx.op("Mul", [x, ctx.op("Sigmoid", [z])], top=0)


def _affine(ctx, x, scale, shift):
    """scale * x + shift, skipping the identity parts."""
    if scale != 1:
        x = ctx.op("Mul", [x, ctx.const(_f(scale), "scale")])
    if shift != 0:
        x = ctx.op("Add", [x, ctx.const(_f(shift), "shift")])
    return x


def _finish(ctx, value):
    """Write `value` to top 0 (an Identity when no op was needed)."""
    ctx.op("Identity", [value], top=0)


@converter("Power")
def power(ctx):
    """y = (shift + scale * x) ^ power."""
    p = ctx.param.power_param
    if p.scale == 0 or p.power == 0:
        # NOTE(caffe): a constant fill, shift^power (1 for power 0).
        value = _f(1) if p.power == 0 else _f(p.shift) ** _f(p.power)
        ctx.op("Expand", [ctx.const(value, "fill"), ctx.op("Shape", [ctx.x[0]])], top=0)
        return
    y = _affine(ctx, ctx.x[0], p.scale, p.shift)
    if p.power != 1:
        y = ctx.op("Pow", [y, ctx.const(_f(p.power), "power")])
    _finish(ctx, y)


@converter("Exp")
def exp(ctx):
    """y = base^(shift + scale*x) = base^shift * exp(ln(base) * scale * x)."""
    p = ctx.param.exp_param
    log_base = 1.0 if p.base == -1 else float(np.log(p.base))
    inner = _f(log_base * p.scale)
    outer = _f(1.0 if p.shift == 0 else (np.e if p.base == -1 else p.base) ** p.shift)
    y = ctx.op("Exp", [_affine(ctx, ctx.x[0], inner, 0)])
    _finish(ctx, _affine(ctx, y, outer, 0))


@converter("Log")
def log(ctx):
    """y = ln(shift + scale*x) / ln(base)."""
    p = ctx.param.log_param
    y = ctx.op("Log", [_affine(ctx, ctx.x[0], p.scale, p.shift)])
    base_scale = 1.0 if p.base == -1 else 1.0 / float(np.log(p.base))
    _finish(ctx, _affine(ctx, y, base_scale, 0))


@converter("Dropout", "SeLuDropout")
def dropout(ctx):
    """Identity at inference (Caffe scales at training time)."""
    if ctx.layer.phase == caffe_pb2.TRAIN:
        raise ctx.fail("dropout in the TRAIN phase is random; export the TEST net")
    ctx.alias(0, ctx.x[0])


@converter("Split")
def split(ctx):
    for i in range(len(ctx.tops)):
        ctx.alias(i, ctx.x[0])


@converter("Silence")
def silence(ctx):
    """No tops: nothing to compute."""


_EW = caffe_pb2.EltwiseParameter


@converter("Eltwise")
def eltwise(ctx):
    layer, xs = ctx.layer, ctx.x
    if layer.op == _EW.PROD:
        y = xs[0]
        for k, b in enumerate(xs[1:], 1):
            y = ctx.op("Mul", [y, b], top=0 if k == len(xs) - 1 else None)
        return
    if layer.op == _EW.MAX:
        ctx.op("Max", xs, top=0)
        return
    terms = [b if c == 1 else ctx.op("Mul", [b, ctx.const(_f(c), "coeff")])
             for b, c in zip(xs, layer.coeffs)]
    ctx.op("Sum", terms, top=0)


def _operand(ctx, value, op_shape, axis, rank, static=None):
    """The operand (a learned array or bottom `value`) with trailing 1s so
    it broadcasts from `axis` of a rank-`rank` bottom."""
    k = len(op_shape)
    axis = 0 if k == 0 else axis
    target = tuple(op_shape) + (1,) * (rank - axis - k)
    if static is not None:
        return ctx.const(static.reshape(target), "operand")
    if target == tuple(op_shape) or axis + k == rank:
        return value
    return ctx.reshape(value, op_shape, target)


def _axis(ctx, axis):
    rank = len(ctx.shapes[0])
    return axis + rank if axis < 0 else axis


@converter("Scale")
def scale(ctx):
    """y = x * s [+ b], s (a blob or bottom[1]) spanning axes
    axis..axis+k-1 of x and broadcast over the others."""
    layer, rank = ctx.layer, len(ctx.shapes[0])
    axis = _axis(ctx, ctx.param.scale_param.axis)
    if len(ctx.x) > 1:
        s = _operand(ctx, ctx.x[1], ctx.shapes[1], axis, rank)
    else:
        blob = layer.blobs[0]
        s = _operand(ctx, None, blob.shape, axis, rank, static=blob.data)
    has_bias = layer.bias_index is not None
    y = ctx.op("Mul", [ctx.x[0], s], top=None if has_bias else 0)
    if has_bias:
        b = layer.blobs[layer.bias_index]
        ctx.op("Add", [y, _operand(ctx, None, b.shape, axis, rank, static=b.data)],
               top=0)


@converter("Bias")
def bias(ctx):
    rank = len(ctx.shapes[0])
    axis = _axis(ctx, ctx.param.bias_param.axis)
    if len(ctx.x) > 1:
        b = _operand(ctx, ctx.x[1], ctx.shapes[1], axis, rank)
    else:
        blob = ctx.layer.blobs[0]
        b = _operand(ctx, None, blob.shape, axis, rank, static=blob.data)
    ctx.op("Add", [ctx.x[0], b], top=0)


@converter("Softmax")
def softmax(ctx):
    """Opset 13+ Softmax normalises along the one axis, as Caffe does."""
    ctx.op("Softmax", [ctx.x[0]], top=0, axis=int(ctx.layer.axis))


@converter("ReLU6")
def relu6(ctx):
    layer, x = ctx.layer, ctx.x[0]
    if layer.slope:
        x = ctx.op("LeakyRelu", [x], alpha=float(layer.slope))
        ctx.op("Min", [x, ctx.const(_f(layer.threshold), "threshold")], top=0)
    else:
        ctx.op("Clip", [x, ctx.const(_f(0), "zero"),
                        ctx.const(_f(layer.threshold), "threshold")], top=0)


@converter("HardSwish")
def hard_swish(ctx):
    """x * clip(x/6 + 1/2, 0, 1): ONNX's HardSwish exactly."""
    ctx.op("HardSwish", [ctx.x[0]], top=0)


@converter("HardSigmoid")
def hard_sigmoid(ctx):
    p = ctx.param.hardsigmoid_param
    ctx.op("HardSigmoid", [ctx.x[0]], top=0, alpha=p.alpha, beta=p.beta)


@converter("SeLu")
def selu(ctx):
    ctx.op("Selu", [ctx.x[0]], top=0, alpha=float(ctx.layer.alpha),
           gamma=float(ctx.layer.lam))
