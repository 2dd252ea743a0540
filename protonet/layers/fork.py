"""Element-wise and channel layers of well-known Caffe forks.

ReLU6, HardSwish, HardSigmoid (brocolli-caffe / MobileNet ports), SeLu
(soeaver's SNN layers), Axpy (SENet), ShuffleChannel (ShuffleNet),
PixelShuffle (brocolli-caffe) and BN (caffe-segnet / ENet).

NOTE(caffe): brocolli-caffe's HardSwish, HardSigmoid and PixelShuffle have an
empty Backward_cpu (no gradient at all); we give them their true gradient.

Mirrors: the forks' src/caffe/layers/<type>_layer.cpp.
"""

import numpy as np

from ..errors import LayerError
from ..layer import Layer, NeuronLayer, register
from .conv import ConvolutionLayer
from ..proto import caffe_pb2


class _Elementwise(NeuronLayer):
    """y = f(x) with f'(x) known; keeps the input for backward (in place too)."""

    def f(self, x):
        raise NotImplementedError

    def df(self, x):
        raise NotImplementedError

    def batch_separable(self, bottom):
        return True  # elementwise and deterministic

    def forward(self, bottom, top):
        x = bottom[0].data
        self._x = x.copy() if top[0] is bottom[0] else x
        top[0].data[...] = self.f(self._x)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.df(self._x)

    def _c(self, v):
        return self.dtype.type(v)


@register("ReLU6")
class ReLU6Layer(_Elementwise):
    """Leaky ReLU capped at a threshold.

    y = min(max(x, 0) + negative_slope * min(x, 0), threshold);
    dx = dy * ((x > 0) + negative_slope * (x <= 0)) * (x < threshold).

    Shape: top has the bottom's shape; may run in place.

    Supports relu6_param.{negative_slope (0), threshold (6)}.

    Mirrors: src/caffe/layers/relu6_layer.cpp (brocolli-caffe)
    """

    def setup(self, bottom, top):
        p = self.param.relu6_param
        self.slope, self.threshold = self._c(p.negative_slope), self._c(p.threshold)

    def f(self, x):
        return np.minimum(np.maximum(x, 0) + self.slope * np.minimum(x, 0),
                          self.threshold)

    def df(self, x):
        return ((x > 0) + self.slope * (x <= 0)) * (x < self.threshold)


@register("HardSwish")
class HardSwishLayer(_Elementwise):
    """y = x * min(max(x/6 + 1/2, 0), 1) (= x * relu6(x + 3) / 6).

    dx = dy * (0 for x <= -3; x/3 + 1/2 for -3 < x < 3; 1 for x >= 3).

    Shape: top has the bottom's shape; may run in place.

    Mirrors: src/caffe/layers/hardswish_layer.cpp (brocolli-caffe)
    """

    def f(self, x):
        return x * np.clip(x / self._c(6) + self._c(0.5), 0, 1)

    def df(self, x):
        return np.where(x <= -3, 0, np.where(x >= 3, 1, x / self._c(3) + self._c(0.5)))


@register("HardSigmoid")
class HardSigmoidLayer(_Elementwise):
    """y = min(max(alpha * x + beta, 0), 1); dx = dy * alpha inside (0, 1).

    Shape: top has the bottom's shape; may run in place.

    Supports hardsigmoid_param.{alpha (0.2), beta (0.5)}.

    Mirrors: src/caffe/layers/hardsigmoid_layer.cpp (brocolli-caffe)
    """

    def setup(self, bottom, top):
        p = self.param.hardsigmoid_param
        self.alpha, self.beta = self._c(p.alpha), self._c(p.beta)

    def f(self, x):
        return np.clip(self.alpha * x + self.beta, 0, 1)

    def df(self, x):
        z = self.alpha * x + self.beta
        return self.alpha * ((z > 0) & (z < 1))


@register("SeLu")
class SeLuLayer(_Elementwise):
    """Scaled ELU: y = lambda * (x if x > 0 else alpha * (exp(x) - 1)).

    dx = dy * lambda * (1 if x > 0 else alpha * exp(x)).

    Shape: top has the bottom's shape; may run in place.

    Supports selu_param.{lambda, alpha} (defaults of Klambauer et al.).

    Mirrors: src/caffe/layers/selu_layer.cpp (soeaver/caffe SNN)
    """

    def setup(self, bottom, top):
        p = self.param.selu_param
        self.lam, self.alpha = self._c(getattr(p, "lambda")), self._c(p.alpha)

    def f(self, x):
        return self.lam * np.where(x > 0, x, self.alpha * np.expm1(np.minimum(x, 0)))

    def df(self, x):
        return self.lam * np.where(x > 0, 1, self.alpha * np.exp(np.minimum(x, 0)))


@register("Axpy")
class AxpyLayer(Layer):
    """SENet's channel re-weighting plus shortcut: top = a * x + y.

    Bottoms: a (N, C) or (N, C, 1, 1) per-channel scales, x (N, C, ...),
    y of x's shape.  da[n, c] = sum over the spatial axes of dtop * x;
    dx = a * dtop; dy = dtop.

    Shape: top has x's shape.

    Mirrors: src/caffe/layers/axpy_layer.cpp (hujie-frank/SENet)
    """

    exact_num_bottom = 3
    exact_num_top = 1

    def reshape(self, bottom, top):
        a, x, y = (b.shape for b in bottom)
        ok = len(x) >= 2 and a[:2] == x[:2] and all(d == 1 for d in a[2:]) \
            and len(a) in (2, 4) and x == y
        if not ok:
            raise LayerError(self, f"expects a (N, C[, 1, 1]), x and y of one "
                             f"shape (N, C, ...); got {a}, {x} and {y}")
        top[0].reshape(x)

    def _a(self, bottom):
        N, C = bottom[1].shape[:2]
        return bottom[0].data.reshape(N, C, 1)

    def forward(self, bottom, top):
        N, C = bottom[1].shape[:2]
        x = bottom[1].data.reshape(N, C, -1)
        out = self._a(bottom) * x + bottom[2].data.reshape(N, C, -1)
        top[0].data[...] = out.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        N, C = bottom[1].shape[:2]
        g = top[0].diff.reshape(N, C, -1)
        if propagate_down[0]:
            x = bottom[1].data.reshape(N, C, -1)
            bottom[0].diff[...] = np.einsum("ncs,ncs->nc", g, x).reshape(bottom[0].shape)
        if propagate_down[1]:
            bottom[1].diff[...] = (self._a(bottom) * g).reshape(bottom[1].shape)
        if propagate_down[2]:
            bottom[2].diff[...] = top[0].diff


@register("ShuffleChannel")
class ShuffleChannelLayer(Layer):
    """ShuffleNet's channel shuffle with g groups.

    Channels seen as a (g, C/g) matrix are transposed: top channel
    j * g + i = bottom channel i * (C/g) + j.  Backward is the inverse
    permutation.

    Shape: top has the bottom's shape (N, C, ...), C divisible by group.

    Supports shuffle_channel_param.group (default 1).

    Mirrors: src/caffe/layers/shuffle_channel_layer.cpp (farmingyard/ShuffleNet)
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        self.group = self.param.shuffle_channel_param.group
        if self.group < 1:
            raise LayerError(self, f"group must be >= 1, got {self.group}")

    def reshape(self, bottom, top):
        s = bottom[0].shape
        if len(s) < 2 or s[1] % self.group:
            raise LayerError(self, f"channels must be divisible by group "
                             f"{self.group}, got bottom shape {s}")
        top[0].reshape(s)

    def _shuffle(self, src, dst, g):
        N, C = src.shape[:2]
        moved = src.reshape(N, g, C // g, -1).transpose(0, 2, 1, 3)
        dst[...] = moved.reshape(dst.shape)

    def forward(self, bottom, top):
        src = bottom[0].data
        if top[0] is bottom[0]:
            src = src.copy()
        self._shuffle(src, top[0].data, self.group)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            g = top[0].diff
            C = g.shape[1]
            if top[0] is bottom[0]:
                g = g.copy()
            self._shuffle(g, bottom[0].diff, C // self.group)


@register("PixelShuffle")
class PixelShuffleLayer(Layer):
    """Depth to space in PyTorch's pixel_shuffle order.

    top[n, c, h*r + i, w*r + j] = bottom[n, c*r*r + i*r + j, h, w];
    backward is the inverse rearrangement.

    Shape: (N, C*r*r, H, W) -> (N, C, H*r, W*r).

    Supports pixelshuffle_param.upscale_factor (required).

    Mirrors: src/caffe/layers/pixelshuffle_layer.cpp (brocolli-caffe)
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        self.r = self.param.pixelshuffle_param.upscale_factor
        if self.r < 1:
            raise LayerError(self, f"upscale_factor must be >= 1, got {self.r}")

    def reshape(self, bottom, top):
        s, r = bottom[0].shape, self.r
        if len(s) != 4 or s[1] % (r * r):
            raise LayerError(self, f"needs a 4-D bottom whose channels divide "
                             f"by upscale_factor^2 = {r * r}, got shape {s}")
        N, C, H, W = s
        top[0].reshape((N, C // (r * r), H * r, W * r))

    def forward(self, bottom, top):
        N, C, H, W = bottom[0].shape
        r = self.r
        x = bottom[0].data.reshape(N, C // (r * r), r, r, H, W)
        top[0].data[...] = x.transpose(0, 1, 4, 2, 5, 3).reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            N, C, H, W = bottom[0].shape
            r = self.r
            g = top[0].diff.reshape(N, C // (r * r), H, r, W, r)
            bottom[0].diff[...] = g.transpose(0, 1, 3, 5, 2, 4).reshape(bottom[0].shape)


@register("BN")
class BNLayer(Layer):
    """caffe-segnet's batch normalisation with built-in scale and shift.

    LEARN: per channel mean m and biased variance v of the batch (over N, H,
    W, as E[x^2] - E[x]^2), x_hat = (x - m) / sqrt(v + 1e-9), y = scale *
    x_hat + shift, in every phase (SegNet computes inference statistics
    offline and folds them into scale / shift).  INFERENCE: y = scale * x +
    shift.  Optional tops 1 and 2 (LEARN only) receive m and v as (1, C, 1, 1).

    Gradient (LEARN): with g = scale * dy,
    dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(v + eps), means over
    N, H, W; dscale += sum(dy * x_hat); dshift += sum(dy).

    Shape: bottom (N, C, H, W); top 0 the same.

    Supports bn_param.{bn_mode, scale_filler, shift_filler} (both fillers
    default to constant 0, as Caffe's GetFiller of an empty FillerParameter).

    Mirrors: src/caffe/layers/bn_layer.cpp (alexgkendall/caffe-segnet)
    """

    exact_num_bottom = 1
    min_top = 1
    max_top = 3
    EPS = 1e-9

    def setup(self, bottom, top):
        p = self.param.bn_param
        self.learn = p.bn_mode == caffe_pb2.BNParameter.LEARN
        if not self.learn and len(top) > 1:
            raise LayerError(self, "bn_mode INFERENCE has exactly one top")
        if bottom[0].num_axes != 4:
            raise LayerError(self, f"needs a 4-D bottom, got shape {bottom[0].shape}")
        C = bottom[0].shape[1]
        self.add_param_blob((1, C, 1, 1), p.scale_filler)
        self.add_param_blob((1, C, 1, 1), p.shift_filler)

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4 or bottom[0].shape[1] != self.blobs[0].count:
            raise LayerError(self, f"expects (N, {self.blobs[0].count}, H, W), "
                             f"got shape {bottom[0].shape}")
        top[0].reshape(bottom[0].shape)
        for t in top[1:]:
            t.reshape((1, bottom[0].shape[1], 1, 1))

    def forward(self, bottom, top):
        x = bottom[0].data
        scale, shift = self.blobs[0].data, self.blobs[1].data
        if not self.learn:
            self._x = x.copy() if top[0] is bottom[0] else x
            top[0].data[...] = scale * x + shift
            return
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        var = (x * x).mean(axis=(0, 2, 3), keepdims=True) - mean * mean
        self._std = np.sqrt(var + self.dtype.type(self.EPS))
        self._xhat = (x - mean) / self._std
        for t, v in zip(top[1:], (mean, var)):
            t.data[...] = v
        top[0].data[...] = scale * self._xhat + shift

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        scale = self.blobs[0].data
        xhat = self._xhat if self.learn else self._x
        if self.param_propagate_down[0]:
            self.blobs[0].diff[...] += (dy * xhat).sum(axis=(0, 2, 3), keepdims=True)
        if self.param_propagate_down[1]:
            self.blobs[1].diff[...] += dy.sum(axis=(0, 2, 3), keepdims=True)
        if propagate_down[0]:
            g = scale * dy
            if self.learn:
                g = (g - g.mean(axis=(0, 2, 3), keepdims=True)
                     - xhat * (g * xhat).mean(axis=(0, 2, 3), keepdims=True)) / self._std
            bottom[0].diff[...] = g


@register("ConvolutionDepthwise", aliases=("DepthwiseConvolution",))
class ConvolutionDepthwiseLayer(ConvolutionLayer):
    """Depthwise convolution (MobileNet / Xception forks): group = channels.

    top[n, o] = sum_{i,j} W[o, 0, i, j] * x_pad[n, o // m, s*h + d*i, s*w +
    d*j] + b[o] with m = num_output / channels.  Computed as a sum over the
    kh*kw shifted strided slices times per-channel weights (no im2col); the
    backward scatters the same slices.  Other than 2-D spatial inputs it
    falls back to Convolution's grouped im2col path.

    Shape: as Convolution (rounding down); weight (num_output, 1, kh, kw).

    Supports convolution_param as Convolution; group may be omitted (it is
    forced to the channel count) but must equal it when given.

    Mirrors: src/caffe/layers/conv_dw_layer.cpp (xception-dw / MobileNet
    ports) and depthwise_conv_layer.cpp (yonghenglh6/DepthwiseConvolution)
    """

    def setup(self, bottom, top):
        p = self.param.convolution_param
        C = bottom[0].shape[self.canonical_axis(bottom[0], p.axis)]
        if p.HasField("group") and p.group not in (1, C):
            raise LayerError(self, f"a depthwise convolution needs group == "
                             f"channels ({C}), got group {p.group}")
        if p.num_output % C:
            raise LayerError(self, f"num_output {p.num_output} must be a "
                             f"multiple of the {C} channels")
        param = caffe_pb2.LayerParameter()
        param.CopyFrom(self.param)
        param.convolution_param.group = C
        self.param = param
        super().setup(bottom, top)
        self.fast = self.num_spatial == 2 and self.channel_axis == 1

    def _slices(self, OH, OW):
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        for i in range(kh):
            for j in range(kw):
                yield i, j, (slice(None), slice(None),
                             slice(i * dh, i * dh + sh * (OH - 1) + 1, sh),
                             slice(j * dw, j * dw + sw * (OW - 1) + 1, sw))

    def _padded_input(self, x):
        ph, pw = self.pad
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
        m = self.num_output // self.channels
        return np.repeat(xp, m, axis=1) if m > 1 else xp

    def forward(self, bottom, top):
        if not self.fast:
            return super().forward(bottom, top)
        W = self.blobs[0].data[:, 0]
        for b, t in zip(bottom, top):
            xp = self._padded_input(b.data)
            y = t.data
            y[...] = 0
            for i, j, sl in self._slices(*y.shape[2:]):
                y += xp[sl] * W[None, :, i, j, None, None]
            self._bias_forward(t)

    def backward(self, top, propagate_down, bottom):
        if not self.fast:
            return super().backward(top, propagate_down, bottom)
        W = self.blobs[0].data[:, 0]
        ph, pw = self.pad
        m = self.num_output // self.channels
        for k, (b, t) in enumerate(zip(bottom, top)):
            self._bias_backward(t)
            dy = t.diff
            xp = self._padded_input(b.data)
            dxp = np.zeros_like(xp) if propagate_down[k] else None
            dW = self.blobs[0].diff[:, 0]
            for i, j, sl in self._slices(*dy.shape[2:]):
                if self.param_propagate_down[0]:
                    dW[:, i, j] += np.einsum("nohw,nohw->o", dy, xp[sl])
                if dxp is not None:
                    dxp[sl] += dy * W[None, :, i, j, None, None]
            if dxp is not None:
                if m > 1:
                    N, O, Hp, Wp = dxp.shape
                    dxp = dxp.reshape(N, O // m, m, Hp, Wp).sum(axis=2)
                H, Wd = b.shape[2:]
                b.diff[...] = dxp[:, :, ph:ph + H, pw:pw + Wd]
