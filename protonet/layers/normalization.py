"""Normalization layers: BatchNorm, MVN and LRN."""

from functools import partial

import numpy as np

from .. import threads
from ..errors import LayerError
from ..layer import Layer, register
from ..proto import caffe_pb2

# Bytes of bottom per block of LRN's elementwise chain (kept in cache).
BLOCK_BYTES = 1 << 19


def _legacy_shape(layer, blob):
    """Caffe's (num, channels, height, width) of a blob of at most 4 axes."""
    if blob.num_axes > 4:
        raise LayerError(layer, f"needs a bottom of at most 4 axes (num, "
                         f"channels, height, width), got shape {blob.shape}")
    return tuple(blob.shape) + (1,) * (4 - blob.num_axes)


@register("BatchNorm")
class BatchNormLayer(Layer):
    """Normalises each channel by its mean and variance: y = (x - mu) / sqrt(var + eps).

    Statistics are taken over every axis but axis 1 (the channels; a 1-D
    bottom is one channel). With batch statistics (TRAIN by default) mu and
    var are the batch mean and biased variance, and the three parameter blobs
    accumulate running sums during forward:

        blobs[0] = maf * blobs[0] + mu
        blobs[1] = maf * blobs[1] + m / (m - 1) * var   (m = count / C)
        blobs[2] = maf * blobs[2] + 1

    With global statistics (TEST by default) mu = blobs[0] / blobs[2] and
    var = blobs[1] / blobs[2] (both 0 when blobs[2] is 0).

    Gradient with batch statistics (means over the non-channel axes):
        dx = (dy - mean(dy) - y * mean(dy * y)) / sqrt(var + eps);
    with global statistics: dx = dy / sqrt(var + eps).

    Shape:
        bottom: (N, C, ...); top: the same. blobs: (C,), (C,), (1,).

    Fields: batch_norm_param.use_global_stats (default: phase == TEST),
    moving_average_fraction, eps. The blobs are statistics, not learnable:
    missing param specs are added with lr_mult 0 and a nonzero lr_mult is an
    error. May run in place.

    Mirrors: src/caffe/layers/batch_norm_layer.cpp
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.batch_norm_param
        self.use_global_stats = p.use_global_stats \
            if p.HasField("use_global_stats") else self.phase == caffe_pb2.TEST
        self.maf = p.moving_average_fraction
        self.eps = p.eps
        self.channels = bottom[0].shape[1] if bottom[0].num_axes > 1 else 1
        C = self.channels
        for shape in ((C,), (C,), (1,)):
            self.add_param_blob(shape)
        # NOTE(caffe): BVLC master masks the statistics from the solver by
        # appending lr_mult 0 param specs (the net reads them after setup).
        for i in range(len(self.blobs)):
            if i == len(self.param.param):
                self.param.param.add().lr_mult = 0.0
            elif self.param.param[i].lr_mult != 0:
                raise LayerError(self, f"param {i} has lr_mult "
                                 f"{self.param.param[i].lr_mult}: batch "
                                 "normalization statistics cannot be learned "
                                 "parameters (use lr_mult 0)")

    def batch_separable(self, bottom):
        # Batch statistics mix the images; a 1-D bottom is one channel.
        return self.use_global_stats and bottom[0].num_axes > 1

    def reshape(self, bottom, top):
        x = bottom[0]
        if x.num_axes > 1 and x.shape[1] != self.channels:
            raise LayerError(self, f"bottom has {x.shape[1]} channels (shape "
                             f"{x.shape}) but the layer was set up for "
                             f"{self.channels}")
        top[0].reshape(x.shape)

    def _view(self, a):
        """(N, C, S) view of a bottom-shaped array."""
        n = a.shape[0] if a.ndim else 1
        return a.reshape(n, self.channels, -1)

    def forward(self, bottom, top):
        if not bottom[0].count:  # empty batch/axis: nothing to compute
            return
        x = self._view(bottom[0].data)
        if self.use_global_stats:
            factor = self.blobs[2].data[0]
            scale = 0 if factor == 0 else 1 / factor
            mean = self.blobs[0].data * self.dtype.type(scale)
            var = self.blobs[1].data * self.dtype.type(scale)
        else:
            mean = x.mean(axis=(0, 2), dtype=self.dtype)
            xc = x - mean[None, :, None]
            var = np.mean(np.square(xc), axis=(0, 2), dtype=self.dtype)
            # NOTE(caffe): the running variance gets the unbiased m/(m-1)
            # correction, but the batch is normalised with the biased one.
            m = x.size // self.channels
            correction = m / (m - 1) if m > 1 else 1.0
            b0, b1, b2 = (b.data for b in self.blobs)
            b0 *= self.maf
            b0 += mean
            b1 *= self.maf
            b1 += self.dtype.type(correction) * var
            b2 *= self.maf
            b2 += 1
        std = np.sqrt(var + self.dtype.type(self.eps))
        self.std = std[None, :, None]
        y = self._view(top[0].data)
        if self.use_global_stats:
            # y = x * (1/std) - mean/std: two passes, in place, nothing kept
            # (the backward is dy / std).  Rounds within 1 ulp of Caffe's
            # (x - mean) / std.
            inv = (1 / std).astype(self.dtype)[None, :, None]
            shift = (mean[None, :, None] * inv)

            def part(s):
                np.multiply(x[s], inv, out=y[s])
                y[s] -= shift
            threads.over_rows(len(x), part, x.size)
            self.x_norm = None
            return
        np.subtract(x, mean[None, :, None], out=y)
        y /= self.std
        self.x_norm = None if self.forward_only else y.copy()

    def backward(self, top, propagate_down, bottom):
        if not bottom[0].count:  # empty batch/axis: nothing to compute
            return
        if not propagate_down[0]:
            return
        dy = self._view(top[0].diff)
        if self.use_global_stats:
            dx = dy / self.std
        else:
            y = self.x_norm
            mean_dy = dy.mean(axis=(0, 2), keepdims=True)
            mean_dyy = np.mean(dy * y, axis=(0, 2), keepdims=True)
            dx = (dy - mean_dy - y * mean_dyy) / self.std
        self._view(bottom[0].diff)[...] = dx


@register("MVN", v1="MVN")
class MVNLayer(Layer):
    """Mean-variance normalisation per image (and per channel by default).

        y = (x - mean(x)) / (std(x) + eps)    (normalize_variance)
        y = x - mean(x)                       (otherwise)

    over each (n, c) slice, or each n with across_channels. std is the
    biased (population) standard deviation.

    Gradient, as Caffe computes it (means over the slice):
        dx = (dy - mean(dy) - y * mean(dy * y)) / (std + eps)
    NOTE(caffe): this is exact only for eps -> 0 (y already includes eps).
    Without normalize_variance: dx = dy - mean(dy).

    Shape:
        bottom: at most 4 axes; top: (num, channels, height, width), Caffe's
        legacy 4-D shape (a (N, C) bottom gives (N, C, 1, 1)).

    Fields: mvn_param.normalize_variance, across_channels, eps.

    Mirrors: src/caffe/layers/mvn_layer.cpp
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.mvn_param
        self.normalize_variance = p.normalize_variance
        self.across_channels = p.across_channels
        self.eps = p.eps

    def reshape(self, bottom, top):
        N, C, H, W = _legacy_shape(self, bottom[0])
        # NOTE(caffe): the top takes the legacy 4-D shape.
        top[0].reshape((N, C, H, W))
        self.rows = N if self.across_channels else N * C

    def forward(self, bottom, top):
        if not bottom[0].count:  # empty batch/axis: nothing to compute
            return
        x = bottom[0].data.reshape(self.rows, -1)
        y = x - x.mean(axis=1, keepdims=True, dtype=self.dtype)
        if self.normalize_variance:
            var = np.mean(np.square(y), axis=1, keepdims=True, dtype=self.dtype)
            # NOTE(caffe): eps is added to the standard deviation.
            self.std_eps = np.sqrt(var) + self.dtype.type(self.eps)
            y /= self.std_eps
        top[0].data.reshape(self.rows, -1)[...] = y

    def backward(self, top, propagate_down, bottom):
        if not bottom[0].count:  # empty batch/axis: nothing to compute
            return
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.rows, -1)
        dx = dy - dy.mean(axis=1, keepdims=True)
        if self.normalize_variance:
            y = top[0].data.reshape(self.rows, -1)
            dx -= y * np.mean(dy * y, axis=1, keepdims=True)
            dx /= self.std_eps
        bottom[0].diff.reshape(self.rows, -1)[...] = dx


def _window_sum(a, size, axis, out=None):
    """Sum over a centred window of odd `size` along `axis`, zero-padded:
    ``out[i] = sum_{|j| <= size//2} a[i + j]``, as `size` shifted slice
    adds (each a contiguous block when `axis` is not the last)."""
    out = np.empty_like(a) if out is None else out
    out[...] = a
    half, n = (size - 1) // 2, a.shape[axis]

    def sl(lo, hi):
        return (slice(None),) * axis + (slice(lo, hi),)
    for j in range(1, min(half, n - 1) + 1):
        out[sl(0, n - j)] += a[sl(j, n)]      # the cell j after
        out[sl(j, n)] += a[sl(0, n - j)]      # the cell j before
    return out


def _negative_power(s, beta, out, numerator=None):
    """out = s ** -beta, or numerator / s ** beta; betas 0.75 (AlexNet,
    GoogLeNet), 0.5 and 1 by square roots and a division (a float32 pow
    costs ~10x more here)."""
    if beta == 0.75:
        np.sqrt(s, out=out)
        out *= np.sqrt(out)
    elif beta == 0.5:
        np.sqrt(s, out=out)
    elif beta == 1:
        np.copyto(out, s)
    else:
        np.power(s, s.dtype.type(beta), out=out)
    if numerator is None:
        return np.reciprocal(out, out=out)
    return np.divide(numerator, out, out=out)


@register("LRN", v1="LRN")
class LRNLayer(Layer):
    """Local response normalisation.

    ACROSS_CHANNELS (n = local_size, window of n channels centred on c,
    zero-padded):
        scale = k + alpha / n * sum_{c'} x[c']^2,   y = x * scale^-beta
        dx = dy * scale^-beta
             - 2 * alpha * beta / n * x * sum_{c'} (dy * y / scale)[c']
    NOTE(caffe): alpha is divided by local_size.

    WITHIN_CHANNEL (n x n spatial window, zero-padded by (n-1)/2):
        s = 1 + alpha / n^2 * sum_{window} x^2,     y = x * s^-beta
        dx = dy * s^-beta
             - 2 * alpha * beta / n^2 * x * sum_{window} (dy * y / s)
    NOTE(caffe): Caffe computes it with AVE pooling, whose divisor counts the
    padded cells (always n^2 here), and k is ignored (the shift is 1).

    Shape:
        bottom: (N, C, H, W); top: the same.

    Fields: lrn_param.local_size (odd), alpha, beta, k, norm_region; engine
    is ignored. May run in place.

    Mirrors: src/caffe/layers/lrn_layer.cpp
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.lrn_param
        self.size = p.local_size
        if self.size % 2 != 1:
            raise LayerError(self, f"local_size must be odd, got {self.size}")
        self.alpha, self.beta, self.k = p.alpha, p.beta, p.k
        self.within = p.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise LayerError(self, f"needs a 4-D bottom (num, channels, height, "
                             f"width), got shape {bottom[0].shape}")
        top[0].reshape(bottom[0].shape)

    def batch_separable(self, bottom):
        return True

    def _window(self, a, out=None):
        if self.within:
            return _window_sum(_window_sum(a, self.size, 2), self.size, 3,
                               out)
        return _window_sum(a, self.size, 1, out)

    def _parts(self, n):
        return threads.split(n, threads.workers())

    def _blocks(self, s, x):
        """Slices of a few images of `s` (about BLOCK_BYTES of `x`), so
        that the ~10 passes of the chain stay in cache (GoogLeNet's two LRN
        layers, 8 images on one core: forward 29 -> 23 ms; CaffeNet's norm1,
        backward 2.4 -> 1.5 ms).  Measured: bands of rows of one larger
        image, all channels, were slower (GoogLeNet's norm2 17 -> 30 ms)."""
        per = max(1, BLOCK_BYTES // max(1, x[0].nbytes)) if len(x) else 1
        return [slice(a, min(a + per, s.stop))
                for a in range(s.start, s.stop, per)]

    def forward(self, bottom, top):
        x = bottom[0].data
        t = self.dtype.type
        if self.within:
            coeff, shift = self.alpha / self.size ** 2, 1.0
        else:
            coeff, shift = self.alpha / self.size, self.k
        self.coeff = coeff
        # In place, keep x for backward (Caffe itself has no in-place LRN).
        self.saved_x = x.copy() if top[0] is bottom[0] else None
        xs = self.saved_x if self.saved_x is not None else x
        if getattr(self, "scale", None) is None or \
                self.scale.shape != x.shape or self.scale.dtype != x.dtype:
            self.scale = np.empty_like(x)
        y = top[0].data

        def part(s, worker):
            for b in self._blocks(s, x):
                sc = self._window(np.square(xs[b]), self.scale[b])
                sc *= t(coeff)
                sc += t(shift)
                _negative_power(sc, self.beta, y[b], numerator=xs[b])
        threads.run([partial(part, s) for s in self._parts(x.shape[0])])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        t = self.dtype.type
        x = bottom[0].data if self.saved_x is None else self.saved_x
        y, dy, dx = top[0].data, top[0].diff, bottom[0].diff

        def part(s, worker):
            for b in self._blocks(s, x):
                ratio = self._window(dy[b] * y[b] / self.scale[b])
                ratio *= x[b]
                ratio *= t(2 * self.coeff * self.beta)
                g = _negative_power(self.scale[b], self.beta,
                                    np.empty_like(ratio), numerator=dy[b])
                np.subtract(g, ratio, out=dx[b])
        threads.run([partial(part, s) for s in self._parts(x.shape[0])])
