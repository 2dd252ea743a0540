"""Neuron layers: element-wise functions of one bottom into one same-shaped top.

Every layer here may run in place (`top[0] is bottom[0]`).  A backward that
needs the input either derives what it needs from the top, or keeps a copy of
the input made during an in-place forward (Caffe's `bottom_memory_`).
Hot-path layers (ReLU, Sigmoid, TanH) use NumPy ufuncs with `out=` and
reuse scratch buffers instead of allocating temporaries.

Mirrors: src/caffe/layers/<type>_layer.cpp for each layer below.
"""

import math

import numpy as np

from .. import rng as _rng
from .. import threads
from ..errors import LayerError, UnsupportedError
from ..layer import NeuronLayer, register
from ..proto import caffe_pb2


class _Neuron(NeuronLayer):
    """NeuronLayer plus per-layer scratch buffers and the in-place input copy."""

    def __init__(self, param, dtype=np.float32):
        super().__init__(param, dtype)
        self._bufs = {}

    def _buffer(self, key, like, dtype=None):
        """A scratch array shaped like `like`, reused while the shape holds."""
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        buf = self._bufs.get(key)
        if buf is None or buf.shape != like.shape or buf.dtype != dtype:
            buf = np.empty(like.shape, dtype)
            self._bufs[key] = buf
        return buf

    def batch_separable(self, bottom):
        return True  # elementwise, deterministic (Dropout overrides)

    def _save_input(self, bottom, top):
        """In place, copy the input before forward overwrites it."""
        if top[0] is bottom[0]:
            np.copyto(self._buffer("input", bottom[0].data), bottom[0].data)

    def _input(self, bottom, top):
        """The forward input: the bottom, or its saved copy when in place."""
        return self._bufs["input"] if top[0] is bottom[0] else bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self._backward(top, bottom)

    def _backward(self, top, bottom):
        """Assign bottom[0].diff from top[0].diff (default: no backward)."""
        raise UnsupportedError(self, "this layer has no backward pass")

    def _const(self, value):
        """A Python number as a scalar of the layer's dtype (Caffe's Dtype)."""
        return self.dtype.type(value)


def _copy_if_distinct(dst, src):
    if dst is not src:
        np.copyto(dst, src)


@register("ReLU", v1="RELU")
class ReLULayer(_Neuron):
    """Rectified linear unit, optionally leaky.

    y = max(x, 0) + negative_slope * min(x, 0);
    dx = dy * (1 if x > 0 else negative_slope).

    Shape: top has the bottom's shape.

    Supports relu_param.negative_slope; relu_param.engine is ignored (every
    engine computes the same function).

    NOTE(caffe): in place, Caffe's backward tests the top instead of the
    input; both agree for negative_slope >= 0.  For a negative slope we keep
    the input's sign so the gradient stays correct.

    Masked ufuncs (`where=`) are slow on random signs, so the gradient factor
    is built as slope * [x <= 0] + [x > 0]: one term is always exactly 0.

    Mirrors: src/caffe/layers/relu_layer.cpp
    """

    def setup(self, bottom, top):
        self.negative_slope = self._const(self.param.relu_param.negative_slope)

    def forward(self, bottom, top):
        x, y, slope = bottom[0].data, top[0].data, self.negative_slope
        if slope == 0:
            xf, yf = x.reshape(-1), y.reshape(-1)
            threads.over_rows(xf.size, lambda s: np.maximum(
                xf[s], 0, out=yf[s]), xf.size)
            return
        buf = self._buffer("buf", x)
        if top[0] is bottom[0] and slope < 0:
            np.less_equal(x, 0, out=self._buffer("neg", x, bool))
        if 0 < slope <= 1:
            # max(x, slope * x) equals the formula exactly for 0 < slope <= 1.
            np.multiply(x, slope, out=buf)
            np.maximum(x, buf, out=y)
        else:
            np.minimum(x, 0, out=buf)
            buf *= slope
            np.maximum(x, 0, out=y)
            y += buf

    def _backward(self, top, bottom):
        x, dx, dy = bottom[0].data, bottom[0].diff, top[0].diff
        slope = self.negative_slope
        if slope == 0:
            xf, dxf, dyf = x.reshape(-1), dx.reshape(-1), dy.reshape(-1)
            threads.over_rows(xf.size, lambda s: np.multiply(
                dyf[s], xf[s] > 0, out=dxf[s]), xf.size)
            return
        factor = self._buffer("buf", x)
        if top[0] is bottom[0] and slope < 0:
            neg = self._bufs["neg"]
            np.multiply(neg, slope, out=factor)
            np.add(factor, ~neg, out=factor)
        else:
            np.less_equal(x, 0, out=factor)
            factor *= slope
            np.add(factor, x > 0, out=factor)
        np.multiply(dy, factor, out=dx)


@register("PReLU")
class PReLULayer(_Neuron):
    """ReLU with a learned negative slope per channel (or one shared slope).

    y = max(x, 0) + a_c * min(x, 0), c = index along axis 1;
    dx = dy * (1 if x > 0 else a_c);  da_c += sum over n, spatial of
    dy * min(x, 0).

    Shape: bottom has at least 2 axes; top has its shape.  The slope blob has
    shape (C,), or () with channel_shared.

    Supports prelu_param.filler (default constant 0.25) and channel_shared.

    NOTE(caffe): BVLC master accumulates the slope diff (older Caffe zeroed
    it first); we accumulate, like every other parameter diff.

    Mirrors: src/caffe/layers/prelu_layer.cpp
    """

    def setup(self, bottom, top):
        p = self.param.prelu_param
        self._check_axes(bottom)
        self.channel_shared = p.channel_shared
        filler = p.filler if p.HasField("filler") else \
            caffe_pb2.FillerParameter(type="constant", value=0.25)
        shape = () if self.channel_shared else (bottom[0].shape[1],)
        self.add_param_blob(shape, filler)

    def _check_axes(self, bottom):
        if bottom[0].num_axes < 2:
            raise LayerError(self, f"bottom must have at least 2 axes, got "
                             f"shape {bottom[0].shape}")

    def reshape(self, bottom, top):
        self._check_axes(bottom)
        C = bottom[0].shape[1]
        want = 1 if self.channel_shared else C
        if self.blobs[0].count != want:
            raise LayerError(self, f"slope blob has {self.blobs[0].count} "
                             f"values but the bottom has {C} channels "
                             f"(channel_shared: {self.channel_shared})")
        super().reshape(bottom, top)

    def _views(self, *arrays):
        """(N, C, H*W...) views of `arrays` and the broadcastable slope."""
        N, C = arrays[0].shape[:2]
        D = int(np.prod(arrays[0].shape[2:], dtype=np.int64))
        slope = self.blobs[0].data
        slope = slope.reshape(()) if self.channel_shared else slope.reshape(C, 1)
        return [a.reshape(N, C, D) for a in arrays], slope

    def forward(self, bottom, top):
        self._save_input(bottom, top)
        x, y = bottom[0].data, top[0].data
        neg = self._buffer("neg", x)
        np.minimum(x, 0, out=neg)
        (neg3,), slope = self._views(neg)
        neg3 *= slope
        np.maximum(x, 0, out=y)
        y += neg

    def backward(self, top, propagate_down, bottom):
        x = self._input(bottom, top)
        dy = top[0].diff
        # Slope first: in place, writing the bottom diff overwrites dy.
        if self.param_propagate_down[0]:
            buf = self._buffer("neg", x)
            np.minimum(x, 0, out=buf)
            buf *= dy
            if self.channel_shared:
                self.blobs[0].diff += buf.sum()
            else:
                (buf3,), _ = self._views(buf)
                self.blobs[0].diff += buf3.sum(axis=(0, 2))
        if propagate_down[0]:
            # a_c * [x <= 0] + [x > 0], exact since one term is 0.
            factor = self._buffer("neg", x)
            np.less_equal(x, 0, out=factor)
            (factor3,), slope = self._views(factor)
            factor3 *= slope
            np.add(factor, x > 0, out=factor)
            np.multiply(dy, factor, out=bottom[0].diff)


@register("ELU")
class ELULayer(_Neuron):
    """Exponential linear unit.

    y = x if x > 0 else alpha * (exp(x) - 1);
    dx = dy * (1 if x > 0 else y + alpha).

    Shape: top has the bottom's shape.  Supports elu_param.alpha.

    With alpha >= 0, x > 0 exactly when y > 0, so backward reads only the
    top (in place or not); a negative alpha keeps a copy of the input.

    Mirrors: src/caffe/layers/elu_layer.cpp
    """

    def setup(self, bottom, top):
        self.alpha = self._const(self.param.elu_param.alpha)

    def forward(self, bottom, top):
        if self.alpha < 0:
            self._save_input(bottom, top)
        x, y = bottom[0].data, top[0].data
        buf = self._buffer("buf", x)
        np.minimum(x, 0, out=buf)
        np.exp(buf, out=buf)
        buf -= 1
        buf *= self.alpha
        np.maximum(x, 0, out=y)
        y += buf

    def _backward(self, top, bottom):
        y, dy, dx = top[0].data, top[0].diff, bottom[0].diff
        pos = y > 0 if self.alpha >= 0 else self._input(bottom, top) > 0
        # (y + alpha) * [x <= 0] + [x > 0], exact since one term is 0.
        factor = self._buffer("buf", y)
        np.add(y, self.alpha, out=factor)
        factor *= ~pos
        factor += pos
        np.multiply(dy, factor, out=dx)


@register("Sigmoid", v1="SIGMOID")
class SigmoidLayer(_Neuron):
    """Logistic sigmoid: y = 1 / (1 + exp(-x)); dx = dy * y * (1 - y).

    Computed as 0.5 * tanh(0.5 * x) + 0.5 (BVLC master's form, which cannot
    overflow; equal to 1 / (1 + exp(-x)) up to float rounding).

    Shape: top has the bottom's shape.  sigmoid_param.engine is ignored.

    Mirrors: src/caffe/layers/sigmoid_layer.cpp
    """

    def forward(self, bottom, top):
        y = top[0].data
        np.multiply(bottom[0].data, 0.5, out=y)
        np.tanh(y, out=y)
        y *= 0.5
        y += 0.5

    def _backward(self, top, bottom):
        y, dy, dx = top[0].data, top[0].diff, bottom[0].diff
        buf = self._buffer("buf", y) if dx is dy else dx
        np.subtract(1, y, out=buf)
        buf *= y
        np.multiply(dy, buf, out=dx)


@register("TanH", v1="TANH")
class TanHLayer(_Neuron):
    """Hyperbolic tangent: y = tanh(x); dx = dy * (1 - y^2).

    Shape: top has the bottom's shape.  tanh_param.engine is ignored.

    Mirrors: src/caffe/layers/tanh_layer.cpp
    """

    def forward(self, bottom, top):
        np.tanh(bottom[0].data, out=top[0].data)

    def _backward(self, top, bottom):
        y, dy, dx = top[0].data, top[0].diff, bottom[0].diff
        buf = self._buffer("buf", y) if dx is dy else dx
        np.multiply(y, y, out=buf)
        np.subtract(1, buf, out=buf)
        np.multiply(dy, buf, out=dx)


@register("AbsVal", v1="ABSVAL")
class AbsValLayer(_Neuron):
    """Absolute value: y = |x|; dx = dy * sign(x) (0 at x = 0).

    Shape: top has the bottom's shape.

    Mirrors: src/caffe/layers/absval_layer.cpp
    """

    def forward(self, bottom, top):
        self._save_input(bottom, top)
        np.abs(bottom[0].data, out=top[0].data)

    def _backward(self, top, bottom):
        x, dy = self._input(bottom, top), top[0].diff
        sign = self._buffer("sign", x)
        np.sign(x, out=sign)
        np.multiply(dy, sign, out=bottom[0].diff)


@register("BNLL", v1="BNLL")
class BNLLLayer(_Neuron):
    """Binomial normal log-likelihood (softplus): y = log(1 + exp(x)).

    dx = dy * e / (e + 1) with e = exp(min(x, 50)).

    Shape: top has the bottom's shape.

    NOTE(caffe): the forward is Caffe's overflow-free form
    max(x, 0) + log(1 + exp(-|x|)); the backward clamps x at 50 before
    exponentiating, as Caffe's kBNLL_THRESHOLD does.

    Mirrors: src/caffe/layers/bnll_layer.cpp
    """

    THRESHOLD = 50.0

    def forward(self, bottom, top):
        self._save_input(bottom, top)
        x, y = bottom[0].data, top[0].data
        buf = self._buffer("exp", x)
        np.abs(x, out=buf)
        np.negative(buf, out=buf)
        np.exp(buf, out=buf)
        np.log1p(buf, out=buf)
        np.maximum(x, 0, out=y)
        y += buf

    def _backward(self, top, bottom):
        x, dy, dx = self._input(bottom, top), top[0].diff, bottom[0].diff
        e = self._buffer("exp", x)
        np.minimum(x, self.THRESHOLD, out=e)
        np.exp(e, out=e)
        np.multiply(dy, e, out=dx)
        e += 1
        dx /= e


@register("Power", v1="POWER")
class PowerLayer(_Neuron):
    """Power of an affine function: y = (shift + scale * x) ^ power.

    dx = dy * power * scale * (shift + scale * x) ^ (power - 1), in Caffe's
    forms: power * scale for power 1 (0 when power * scale is 0: y is then
    constant); power * scale * (scale * x + shift) for power 2; power * y / x
    for shift 0; else power * scale * y / (scale * x + shift) (NaN or inf
    where x or the base is 0, as in Caffe).

    Shape: top has the bottom's shape.  Supports power_param.power, scale
    and shift.

    Mirrors: src/caffe/layers/power_layer.cpp
    """

    def setup(self, bottom, top):
        p = self.param.power_param
        self.power = self._const(p.power)
        self.scale = self._const(p.scale)
        self.shift = self._const(p.shift)
        self.diff_scale = self.power * self.scale

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.diff_scale == 0:
            # NOTE(caffe): scale or power 0: the output is a constant.
            y[...] = 1 if self.power == 0 else self.shift ** self.power
            return
        if self.power != 1:
            self._save_input(bottom, top)
        if self.scale != 1:
            np.multiply(x, self.scale, out=y)
        else:
            _copy_if_distinct(y, x)
        if self.shift != 0:
            y += self.shift
        if self.power != 1:
            np.power(y, self.power, out=y)

    def _backward(self, top, bottom):
        dy, dx = top[0].diff, bottom[0].diff
        if self.diff_scale == 0:
            dx[...] = 0
            return
        if self.power == 1:
            np.multiply(dy, self.diff_scale, out=dx)
            return
        x, y = self._input(bottom, top), top[0].data
        g = self._buffer("grad", x)
        if self.power == 2:
            np.multiply(x, self.diff_scale * self.scale, out=g)
            if self.shift != 0:
                g += self.diff_scale * self.shift
        elif self.shift == 0:
            np.divide(y, x, out=g)
            g *= self.power
        else:
            np.multiply(x, self.scale, out=g)
            g += self.shift
            np.divide(y, g, out=g)
            if self.diff_scale != 1:
                g *= self.diff_scale
        np.multiply(dy, g, out=dx)


@register("Exp", v1="EXP")
class ExpLayer(_Neuron):
    """Exponential: y = base ^ (shift + scale * x); dx = dy * y * ln(base) * scale.

    base -1 (the default) means e.

    Shape: top has the bottom's shape.  Supports exp_param.base (> 0 or -1),
    scale and shift.

    Mirrors: src/caffe/layers/exp_layer.cpp
    """

    def setup(self, bottom, top):
        p = self.param.exp_param
        if p.base != -1 and not p.base > 0:
            raise LayerError(self, f"exp_param.base must be -1 (for e) or "
                             f"positive, got {p.base}")
        log_base = 1.0 if p.base == -1 else math.log(p.base)
        self.inner_scale = self._const(self._const(log_base) * self._const(p.scale))
        self.outer_scale = self._const(
            1.0 if p.shift == 0 else
            math.exp(p.shift) if p.base == -1 else p.base ** p.shift)

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.inner_scale != 1:
            np.multiply(x, self.inner_scale, out=y)
        else:
            _copy_if_distinct(y, x)
        np.exp(y, out=y)
        if self.outer_scale != 1:
            y *= self.outer_scale

    def _backward(self, top, bottom):
        dx = bottom[0].diff
        np.multiply(top[0].data, top[0].diff, out=dx)
        if self.inner_scale != 1:
            dx *= self.inner_scale


@register("Log")
class LogLayer(_Neuron):
    """Logarithm: y = log_base(shift + scale * x);
    dx = dy * scale / ((shift + scale * x) * ln(base)).

    base -1 (the default) means e.

    Shape: top has the bottom's shape.  Supports log_param.base (-1, or > 0
    and not 1), scale and shift.

    Mirrors: src/caffe/layers/log_layer.cpp
    """

    def setup(self, bottom, top):
        p = self.param.log_param
        if p.base != -1 and not (p.base > 0 and p.base != 1):
            raise LayerError(self, f"log_param.base must be -1 (for e) or "
                             f"positive and not 1, got {p.base}")
        self.base_scale = self._const(
            1.0 if p.base == -1 else 1.0 / self._const(math.log(p.base)))
        self.scale = self._const(p.scale)
        self.shift = self._const(p.shift)
        self.backward_scale = self.scale * self.base_scale

    def _affine(self, x, out):
        if self.scale != 1:
            np.multiply(x, self.scale, out=out)
        else:
            _copy_if_distinct(out, x)
        if self.shift != 0:
            out += self.shift

    def forward(self, bottom, top):
        self._save_input(bottom, top)
        y = top[0].data
        self._affine(bottom[0].data, y)
        np.log(y, out=y)
        if self.base_scale != 1:
            y *= self.base_scale

    def _backward(self, top, bottom):
        x = self._input(bottom, top)
        g = self._buffer("grad", x)
        self._affine(x, g)
        np.reciprocal(g, out=g)
        if self.backward_scale != 1:
            g *= self.backward_scale
        np.multiply(top[0].diff, g, out=bottom[0].diff)


@register("Threshold", v1="THRESHOLD")
class ThresholdLayer(_Neuron):
    """Step function: y = 1 if x > threshold else 0.

    Forward only (Caffe has no backward; asking for one raises).

    Shape: top has the bottom's shape.  Supports threshold_param.threshold.

    Mirrors: src/caffe/layers/threshold_layer.cpp
    """

    def setup(self, bottom, top):
        self.threshold = self._const(self.param.threshold_param.threshold)

    def forward(self, bottom, top):
        np.greater(bottom[0].data, self.threshold, out=top[0].data)


@register("Dropout", v1="DROPOUT")
class DropoutLayer(_Neuron):
    """Inverted dropout.

    TRAIN: y = x * m / (1 - dropout_ratio), m ~ Bernoulli(1 - dropout_ratio)
    per element, drawn from protonet's generator (`protonet.rng`);
    dx = dy * m / (1 - dropout_ratio) with the same mask.
    TEST: y = x, dx = dy.

    Shape: top has the bottom's shape.  Supports dropout_param.dropout_ratio
    in [0, 1).  Masks are reproducible under `set_random_seed` but are not
    Caffe's (Boost's generator is not reproduced).

    Mirrors: src/caffe/layers/dropout_layer.cpp
    """

    def setup(self, bottom, top):
        ratio = self.param.dropout_param.dropout_ratio
        if not 0 <= ratio < 1:
            raise LayerError(self, f"dropout_param.dropout_ratio must be in "
                             f"[0, 1), got {ratio}")
        self.ratio = ratio
        self.scale = self._const(1.0 / (1.0 - ratio))

    def batch_separable(self, bottom):
        return False  # one mask drawn for the whole batch

    @property
    def train(self):
        return self.phase == caffe_pb2.TRAIN

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if not self.train:
            _copy_if_distinct(y, x)
            return
        # Uniform draws in float32 whatever the net's dtype, so a seed gives
        # the same mask in float32 and float64 nets.
        u = self._buffer("uniform", x, np.float32)
        _rng.generator().random(dtype=np.float32, out=u)
        mask = self._buffer("mask", x)
        np.less(u, 1.0 - self.ratio, out=mask)
        mask *= self.scale
        np.multiply(x, mask, out=y)

    def _backward(self, top, bottom):
        dy, dx = top[0].diff, bottom[0].diff
        if self.train:
            np.multiply(dy, self._bufs["mask"], out=dx)
        else:
            _copy_if_distinct(dx, dy)


@register("Clip")
class ClipLayer(_Neuron):
    """Clamp to [min, max]: y = max(min, min(x, max));
    dx = dy where min <= x <= max, else 0 (the gradient passes at the bounds).

    Shape: top has the bottom's shape.  Supports clip_param.min and max
    (both required, min <= max).

    Mirrors: src/caffe/layers/clip_layer.cpp
    """

    def setup(self, bottom, top):
        p = self.param.clip_param
        if not (self.param.HasField("clip_param") and p.HasField("min")
                and p.HasField("max")):
            raise LayerError(self, "clip_param.min and clip_param.max are "
                             "required")
        if p.min > p.max:
            raise LayerError(self, f"clip_param.min ({p.min}) is greater than "
                             f"clip_param.max ({p.max})")
        self.min = self._const(p.min)
        self.max = self._const(p.max)

    def forward(self, bottom, top):
        self._save_input(bottom, top)
        x, y = bottom[0].data, top[0].data
        np.minimum(x, self.max, out=y)
        np.maximum(y, self.min, out=y)

    def _backward(self, top, bottom):
        x, dy, dx = self._input(bottom, top), top[0].diff, bottom[0].diff
        inside = self._buffer("inside", x, bool)
        np.greater_equal(x, self.min, out=inside)
        inside &= x <= self.max
        np.multiply(dy, inside, out=dx)


@register("Swish")
class SwishLayer(_Neuron):
    """Swish: y = x * s with s = sigmoid(beta * x);
    dx = dy * (beta * y + s * (1 - beta * y)).

    Shape: top has the bottom's shape.  Supports swish_param.beta.  The
    sigmoid is kept from forward (Caffe's sigmoid_output_), so in place works.

    Mirrors: src/caffe/layers/swish_layer.cpp
    """

    def setup(self, bottom, top):
        self.beta = self._const(self.param.swish_param.beta)

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        s = self._buffer("sigmoid", x)
        np.multiply(x, self.beta * self._const(0.5), out=s)
        np.tanh(s, out=s)
        s *= 0.5
        s += 0.5
        np.multiply(x, s, out=y)

    def _backward(self, top, bottom):
        y, dy, dx = top[0].data, top[0].diff, bottom[0].diff
        s = self._bufs["sigmoid"]
        g = self._buffer("grad", y)
        # beta*y + s*(1 - beta*y) rearranged as s + beta*y*(1 - s).
        np.subtract(1, s, out=g)
        g *= y
        g *= self.beta
        g += s
        np.multiply(dy, g, out=dx)
