"""Vision layers: Pooling, SPP, Crop.

Mirrors: src/caffe/layers/pooling_layer.cpp (and pooling_layer.cu for
STOCHASTIC), spp_layer.cpp, crop_layer.cpp.

MAX and AVE pooling read the bottom through strided slices, one per window
offset (i, j): ``x[..., i - ph::sh, j - pw::sw]``, clipped to the outputs
whose tap falls inside the bottom (no padded copy; MAX ignores the padding,
AVE counts it in the divisor as zeros).  The kernel loop runs over the kh*kw
offsets, each step vectorised over a block of whole (n, c) planes of about
BLOCK_BYTES, so the running max and its masks stay in a core's cache; the
blocks are spread over the threads (protonet/threads.py).  Measured on this
machine that is 3-10x faster than reducing a 6-D ``as_strided`` window view
(whose innermost loop is only kw long) or copying the windows out for
``argmax``.  MAX keeps a window-local int8 argmax (branch-free: the first
tap equal to the max), not computed in a forward no backward can follow
(``layer.forward_only``), and routes gradients with ``np.add.at`` on a flat
index.  Global pooling reduces the contiguous (N, C, H*W) array directly;
STOCHASTIC works on a padded copy.
"""

from functools import partial

import numpy as np

from .. import rng as _rng
from .. import threads
from ..blob import Blob
from ..errors import LayerError, UnsupportedError
from ..layer import Layer, register
from ..proto import caffe_pb2

_PP = caffe_pb2.PoolingParameter
_FLT_MIN = float(np.finfo(np.float32).tiny)
# MAX and AVE pooling run block by block of whole (n, c) planes of about
# this many bottom bytes (the running max, its argmax and the masks stay in
# a core's cache), the blocks spread over the threads.  Measured on this
# machine (2 MB of L2 a core, float32, one thread), 512 KB against 1 MB:
# 3-16% faster on every AlexNet, GoogLeNet and CIFAR-10 shape (GoogLeNet's
# inception 3x3 stride-1 pooling on 14x14 images, 8 images: 2.1 -> 1.8 ms;
# its pool1, 112x112: 8.0 -> 7.0 ms); 256 KB is no better.
BLOCK_BYTES = 1 << 19


def pooled_size(size, kernel, stride, pad, ceil=True):
    """Caffe's pooled output length along one axis.

    ``ceil((size + 2*pad - kernel) / stride) + 1`` (or floor); then, when
    pad > 0 and the last window would start inside the padding
    (``(pooled-1)*stride >= size + pad``), that window is dropped.
    """
    span = size + 2 * pad - kernel
    pooled = (-(-span // stride) if ceil else span // stride) + 1
    # NOTE(caffe): ceil rounding can start the last window in the padding;
    # Caffe clips it (for FLOOR too, whenever pad > 0).
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


@register("Pooling", v1="POOLING")
class PoolingLayer(Layer):
    """MAX, AVE or STOCHASTIC pooling over kh x kw windows of (N, C, H, W).

    * MAX: ``y = max_window x``; an optional second top holds the argmax as a
      float flat index ``h*W + w``.  Backward routes dy to the argmax; ties go
      to the first maximum in row-major window order (Caffe's rule).
    * AVE: ``y = sum_window x / pool_size`` where pool_size is the window
      clipped to [-pad, H+pad): padded cells count, cells beyond do not.
      Backward spreads dy / pool_size over the (real) window cells.
    * STOCHASTIC (Caffe has it on GPU only; inputs must be non-negative):
      TRAIN samples one cell per window with probability x / sum_window x and
      outputs it, backward routes dy to the sampled cell; TEST outputs the
      activation-weighted average ``sum x^2 / (FLT_MIN + sum x)``, and its
      backward is that formula's exact gradient (Caffe's GPU backward would
      reuse stale TRAIN samples).

    Shape:
        bottom (N, C, H, W); top (N, C, PH, PW) with, per axis,
        ``P = ceil((H + 2*pad - kernel) / stride) + 1`` (round_mode CEIL, the
        default; FLOOR floors) and then ``P -= 1`` if pad > 0 and
        ``(P-1)*stride >= H + pad``.  global_pooling: kernel = (H, W), top
        (N, C, 1, 1).

    pooling_param: pool, kernel_size | kernel_h/_w, stride | stride_h/_w,
    pad | pad_h/_w, global_pooling, round_mode (also a fork's ceil_mode);
    engine accepted and ignored.

    Mirrors: src/caffe/layers/pooling_layer.cpp.
    """

    exact_num_bottom = 1
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        p = self.param.pooling_param
        self.pool = p.pool
        self._argkey = self._bwdbuf = self._idx_buf = None
        if self.pool not in (_PP.MAX, _PP.AVE, _PP.STOCHASTIC):
            raise UnsupportedError(self, f"unknown pool method {self.pool}")
        if len(top) > 1 and self.pool != _PP.MAX:
            raise LayerError(self, f"only MAX pooling has a second (mask) top, "
                             f"got {len(top)} tops")
        self.global_pooling = p.global_pooling
        has_k = p.HasField("kernel_size")
        has_hw = p.HasField("kernel_h") or p.HasField("kernel_w")
        if self.global_pooling:
            if has_k or has_hw:
                raise LayerError(self, "global_pooling takes its kernel from "
                                 "the bottom; kernel_size/kernel_h/kernel_w "
                                 "must not be given")
        elif has_k == has_hw:
            raise LayerError(self, "give kernel_size or kernel_h and kernel_w "
                             "(exactly one of the two forms)")
        elif has_hw and not (p.HasField("kernel_h") and p.HasField("kernel_w")):
            raise LayerError(self, "kernel_h and kernel_w must both be given")
        self.kernel = (p.kernel_h, p.kernel_w) if has_hw else \
            (p.kernel_size, p.kernel_size)
        self.pad = self._pair(p, "pad")
        self.stride = self._pair(p, "stride")
        if self.global_pooling and (any(self.pad) or self.stride != (1, 1)):
            raise LayerError(self, f"global_pooling needs pad 0 and stride 1, "
                             f"got pad {self.pad}, stride {self.stride}")
        if any(s <= 0 for s in self.stride):
            raise LayerError(self, f"stride must be positive, got {self.stride}")
        if any(self.pad) and self.pool == _PP.STOCHASTIC:
            raise UnsupportedError(self, "pad is implemented only for MAX and "
                                   "AVE pooling")
        self.ceil = p.round_mode == _PP.CEIL
        if p.HasField("ceil_mode"):
            self.ceil = p.ceil_mode

    def _pair(self, p, field):
        has_one = p.HasField(field)
        h, w = p.HasField(field + "_h"), p.HasField(field + "_w")
        if (h or w) and (has_one or not (h and w)):
            raise LayerError(self, f"give {field} or both {field}_h and "
                             f"{field}_w, got {field}={has_one}, "
                             f"{field}_h={h}, {field}_w={w}")
        if h:
            return (getattr(p, field + "_h"), getattr(p, field + "_w"))
        return (getattr(p, field),) * 2

    def batch_separable(self, bottom):
        # STOCHASTIC pooling draws random numbers while training.
        return self.pool != _PP.STOCHASTIC or self.phase != caffe_pb2.TRAIN

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise LayerError(self, f"bottom must have 4 axes (N, C, H, W), got "
                             f"shape {bottom[0].shape}")
        N, C, H, W = bottom[0].shape
        if self.global_pooling:
            self.kernel = (H, W)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        if kh <= 0 or kw <= 0:
            raise LayerError(self, f"kernel must be positive, got {self.kernel}")
        if ph >= kh or pw >= kw:
            raise LayerError(self, f"pad {self.pad} must be smaller than the "
                             f"kernel {self.kernel}")
        # NOTE(caffe): a kernel larger than the padded bottom is allowed (the
        # window is clipped to the bottom); only an empty output is an error.
        PH = pooled_size(H, kh, sh, ph, self.ceil)
        PW = pooled_size(W, kw, sw, pw, self.ceil)
        if PH <= 0 or PW <= 0:
            raise LayerError(self, f"kernel {self.kernel} with stride "
                             f"{self.stride} and pad {self.pad} leaves no "
                             f"output for bottom shape {bottom[0].shape}")
        for t in top:
            t.reshape((N, C, PH, PW))
        self.out_shape = (PH, PW)
        # Padded extent: image at [ph, ph+H) x [pw, pw+W); every window
        # inside (STOCHASTIC works on such a copy; MAX and AVE use _taps).
        self._padded_shape = (N, C, max(ph + H, (PH - 1) * sh + kh),
                              max(pw + W, (PW - 1) * sw + kw))
        self._direct = self.global_pooling or \
            self._padded_shape[2:] == (H, W)
        xp = getattr(self, "_xp", None)
        if xp is None or xp.shape != self._padded_shape:
            self._xp = None
        self._taps = self._clipped_taps(H, W)
        # Blocks of whole (n, c) planes, about BLOCK_BYTES of bottom each.
        planes = max(1, BLOCK_BYTES // max(1, H * W * self.dtype.itemsize))
        self._blocks = [slice(a, min(a + planes, N * C))
                        for a in range(0, N * C, planes)]
        # AVE divisor: the window clipped to H+pad (padding cells count).
        hs = np.arange(PH) * sh - ph
        ws = np.arange(PW) * sw - pw
        self._hs, self._ws = hs, ws
        size_h = np.minimum(hs + kh, H + ph) - hs
        size_w = np.minimum(ws + kw, W + pw) - ws
        self._pool_size = np.outer(size_h, size_w).astype(self.dtype)
        self._idx = None
        if (N, C, H, W) != self._argkey:  # argmax scratch: made on first use
            self._argkey, self._scratch = (N, C, H, W), {}
            self._bwdbuf = self._idx_buf = None

    def _clipped_taps(self, H, W):
        """(k, out, inp) per window offset k = i*kw + j: the outputs whose
        tap (i, j) falls inside the bottom, and those bottom cells, as index
        tuples of (planes, rows, cols) arrays.  Taps in the padding are
        never read (MAX ignores them, AVE counts them as zeros)."""
        def ranges(i, n_out, size, s, p):
            lo = max(0, -(-(p - i) // s))
            hi = min(n_out - 1, (size - 1 + p - i) // s)
            if lo > hi:
                return None
            return slice(lo, hi + 1), slice(lo * s + i - p,
                                            hi * s + i - p + 1, s)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        PH, PW = self.out_shape
        taps = []
        for i in range(kh):
            r = ranges(i, PH, H, sh, ph)
            for j in range(kw):
                c = ranges(j, PW, W, sw, pw)
                if r and c:
                    taps.append((i * kw + j, (Ellipsis, r[0], c[0]),
                                 (Ellipsis, r[1], c[1])))
        return taps

    def _block_scratch(self, name, worker, shape, dtype):
        key = (name, worker, shape)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = np.empty(shape, dtype)
        return buf

    def _padded_block(self, worker, xb, fill):
        """A block of planes in a padded buffer whose border is `fill`
        (one per worker, border written once; interior rewritten here), so
        that every window offset is a full strided slice."""
        if self._direct:
            return xb
        shape = (self._blocks[0].stop,) + self._padded_shape[2:]
        key = ("pad", fill, worker, shape)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = np.full(shape, fill, self.dtype)
        (ph, pw), (H, W) = self.pad, xb.shape[1:]
        buf = buf[:len(xb)]
        buf[:, ph:ph + H, pw:pw + W] = xb
        return buf

    def _over_blocks(self, fn, *arrays):
        """fn(worker, *blocks) for every block of (n, c) planes of the
        (N, C, h, w) `arrays`, spread over the threads (protonet/threads.py;
        NumPy's loops release the GIL)."""
        flat = [a.reshape((-1,) + a.shape[2:]) for a in arrays]
        threads.run([partial(lambda s, w: fn(w, *(a[s] for a in flat)), s)
                     for s in self._blocks])

    def release_buffers(self):
        """Drop the padded copy, argmax indices and scratch (the net's
        ``memory="inference"`` mode calls this after forward)."""
        self._xp = None
        self._idx = self._idx_flat = self._win = self._idx_buf = None
        self._argkey = self._bwdbuf = None
        self._scratch = {}

    # -- helpers ---------------------------------------------------------------
    def _backward_buffers(self):
        """(base, table, gidx): flat bottom index of every window's first cell
        and of every window offset, and room for their sum.  Made on the first
        backward after a reshape, then reused."""
        if self._bwdbuf is None:
            N, C, H, W = self._argkey
            kh, kw = self.kernel
            itype = np.intp  # measured: int32 indices cost 2x in add.at/take
            base = (np.arange(N * C, dtype=itype).reshape(N, C, 1, 1) * (H * W)
                    + (self._hs[:, None] * W + self._ws).astype(itype))
            table = (np.arange(kh)[:, None] * W + np.arange(kw)).astype(
                itype).reshape(-1)
            self._bwdbuf = (base, table, np.empty(base.shape, itype))
        return self._bwdbuf

    def _padded(self, x):
        if self._direct:
            return x
        if self._xp is None:
            # Reused across forwards: only the interior is ever rewritten.
            self._xp = np.zeros(self._padded_shape, self.dtype)
        ph, pw = self.pad
        H, W = x.shape[2:]
        self._xp[:, :, ph:ph + H, pw:pw + W] = x
        return self._xp

    def _offsets(self, buf):
        """(offset number, strided slice of the padded `buf`, (..., Hp, Wp))
        for every window offset."""
        (kh, kw), (sh, sw), (PH, PW) = self.kernel, self.stride, self.out_shape
        for i in range(kh):
            for j in range(kw):
                yield i * kw + j, buf[..., i:i + (PH - 1) * sh + 1:sh,
                                      j:j + (PW - 1) * sw + 1:sw]

    def _flat_index(self, idx):
        """Window-local offsets -> flat index h*W + w in the bottom."""
        kw = self.kernel[1]
        W = self._bottom_shape[3]
        h = self._hs[:, None] + idx // kw
        w = self._ws[None, :] + idx % kw
        return h * W + w

    def _route(self, dy, dx):
        """dx = sum of dy routed to each window's selected cell (window
        offsets self._idx).  np.add.at on a flat index: measured 4-8x faster
        than np.bincount (float64) and than per-offset masked adds, and it
        sums in output order in float32, as Caffe does."""
        base, table, gidx = self._backward_buffers()
        # take() would convert the int8 offsets to a new intp array first
        # (9 MB for CaffeNet's pool1 a step); converted into gidx and looked
        # up in place instead (each element read before it is written).
        np.copyto(gidx, self._idx, casting="unsafe")
        np.take(table, gidx, out=gidx, mode="clip")  # clip: no checks
        gidx += base
        dx[...] = 0
        (kh, kw), (sh, sw) = self.kernel, self.stride
        if sh >= kh and sw >= kw:  # windows do not overlap: plain scatter
            dx.reshape(-1)[gidx.reshape(-1)] = dy.reshape(-1)
        else:
            np.add.at(dx.reshape(-1), gidx.reshape(-1), dy.reshape(-1))

    def _spread(self, values, dx):
        """dx = sum over window offsets k of values(k) (each (N, C, PH,
        PW)) added to the bottom cells tap k reads."""
        dx[...] = 0
        for k, out, inp in self._taps:
            dx[inp] += values(k)[out]

    # -- forward -----------------------------------------------------------------
    def forward(self, bottom, top):
        x = bottom[0].data
        self._bottom_shape = x.shape
        if self.pool == _PP.MAX:
            self._forward_max(x, top)
        elif self.pool == _PP.AVE:
            self._forward_ave(x, top[0].data)
        else:
            self._forward_stochastic(x, top[0].data)

    def _forward_max(self, x, top):
        N, C = x.shape[:2]
        y = top[0].data
        if self.global_pooling:
            flat = x.reshape(N, C, -1)
            self._idx_flat = flat.argmax(axis=2).reshape(N, C, 1, 1)
            y[...] = np.take_along_axis(flat, self._idx_flat.reshape(N, C, 1),
                                        axis=2).reshape(y.shape)
            if len(top) > 1:
                top[1].data[...] = self._idx_flat
            return
        # NOTE(caffe): a cell replaces the running max only when strictly
        # greater, so ties go to the first maximum in window order (and NaN
        # never wins: fmax).  The argmax, for backward and the mask top, is
        # the first tap equal to the max: idx = K - max_k (K - k)[x_k == y],
        # branch-free on int8 (masked copies are 10x slower on random masks).
        # Block by block of planes, so the running values stay in cache.
        K = self.kernel[0] * self.kernel[1]
        want_idx = not self.forward_only or len(top) > 1
        idx = None
        if want_idx:  # kept across forwards (no fresh pages each time)
            if self._idx_buf is None:
                self._idx_buf = np.empty(
                    y.shape, np.int8 if K <= 127 else np.int32)
            idx = self._idx_buf

        weights = None if idx is None else \
            np.arange(K, 0, -1, dtype=idx.dtype).reshape((K, 1, 1, 1))

        def block(worker, xb, yb, *ib):
            xp = self._padded_block(worker, xb, -np.inf)
            self._window_max(xp, yb, worker)
            if not ib:
                return
            # All taps' masks, then their weighted max in two calls: few,
            # long NumPy calls (two threads contend for the GIL on short
            # ones; in the batch split, CIFAR-10's pool1 forward 5.9 -> 5.3
            # ms, CaffeNet's pool1 and pool2 10.9 -> 9.5 and 7.5 -> 6.4).
            code, = ib
            masks = self._block_scratch("masks", worker, (K,) + yb.shape,
                                        bool)
            for k, sl in self._offsets(xp):
                np.equal(sl, yb, out=masks[k])
            tmp = self._block_scratch("tmp", worker, (K,) + yb.shape,
                                      code.dtype)
            np.multiply(masks.view(np.int8), weights, out=tmp)
            np.max(tmp, axis=0, out=code)
            np.subtract(code.dtype.type(K), code, out=code)
        self._over_blocks(block, x, y, *(() if idx is None else (idx,)))
        self._idx = idx
        if len(top) > 1:
            top[1].data[...] = self._flat_index(idx)

    def _window_max(self, xp, yb, worker):
        """yb = the max of every window of the padded block `xp`, as a max
        over each window's rows of the max over its columns: (kw - 1) + (kh
        - 1) passes instead of kh * kw - 1 (GoogLeNet's 3x3 stride-1
        pooling: 8 -> 4 passes).  fmax: exact, and NaN never wins."""
        (kh, kw), (sh, sw) = self.kernel, self.stride
        PH, PW = yb.shape[1:]
        rows = (PH - 1) * sh + kh
        hm = self._block_scratch("hmax", worker, (len(yb), rows, PW),
                                 self.dtype)
        np.copyto(hm, xp[:, :rows, 0:(PW - 1) * sw + 1:sw])
        for j in range(1, kw):
            np.fmax(hm, xp[:, :rows, j:j + (PW - 1) * sw + 1:sw], out=hm)
        np.copyto(yb, hm[:, 0:(PH - 1) * sh + 1:sh])
        for i in range(1, kh):
            np.fmax(yb, hm[:, i:i + (PH - 1) * sh + 1:sh], out=yb)

    def _forward_ave(self, x, y):
        if self.global_pooling:
            N, C = x.shape[:2]
            np.mean(x.reshape(N, C, -1), axis=2, out=y.reshape(N, C))
            return

        def block(worker, xb, yb):
            taps = self._offsets(self._padded_block(worker, xb, 0))
            np.copyto(yb, next(taps)[1])
            for _, sl in taps:
                yb += sl
            yb /= self._pool_size
        self._over_blocks(block, x, y)

    def _windows(self, x):
        """(N, C, PH, PW, kh*kw) copy of every window (STOCHASTIC only)."""
        slices = list(self._offsets(self._padded(x)))
        win = np.empty(slices[0][1].shape + (len(slices),), self.dtype)
        for k, sl in slices:
            win[..., k] = sl
        return win

    def _forward_stochastic(self, x, y):
        win = self._windows(x)
        if self.phase == caffe_pb2.TRAIN:
            cum = np.cumsum(win, axis=-1)
            u = _rng.generator().random(y.shape)
            thres = (u * cum[..., -1]).astype(self.dtype)
            idx = np.argmax(cum >= thres[..., None], axis=-1)
            y[...] = np.take_along_axis(win, idx[..., None], -1)[..., 0]
            self._idx = idx
        else:
            self._win = win
            y[...] = (win * win).sum(-1) / (_FLT_MIN + win.sum(-1))

    # -- backward ----------------------------------------------------------------
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = top[0].diff, bottom[0].diff
        if self.pool == _PP.AVE:
            if self.global_pooling:
                dx[...] = dy / self._pool_size[0, 0]
            else:
                scaled = dy / self._pool_size
                self._spread(lambda k: scaled, dx)
        elif self.pool == _PP.MAX and self.global_pooling:
            dx[...] = 0  # one window per channel: a plain scatter
            N, C, H, W = dx.shape
            np.put_along_axis(dx.reshape(N, C, H * W),
                              self._idx_flat.reshape(N, C, 1),
                              dy.reshape(N, C, 1), axis=2)
        elif self.pool == _PP.MAX or self.phase == caffe_pb2.TRAIN:
            self._route(dy, dx)
        else:
            win = self._win
            s = _FLT_MIN + win.sum(-1, keepdims=True)
            q = (win * win).sum(-1, keepdims=True)
            g = dy[..., None] * (2 * win / s - q / (s * s))
            self._spread(lambda k: g[..., k], dx)


@register("SPP", v1="SPP")
class SPPLayer(Layer):
    """Spatial pyramid pooling: level l pools the image into 2^l x 2^l bins.

    Level l uses a Pooling with ``kernel = ceil(H / 2^l)``,
    ``pad = (kernel*2^l - H + 1) // 2``, ``stride = kernel`` (per axis); the
    levels are flattened to (N, C*bins) and concatenated along axis 1.

    Shape:
        bottom (N, C, H, W); top (N, C * sum_l bins_l) where bins_l is the
        pooled PH*PW of level l (4^l unless the ceil/clip rule changes it).
        NOTE(caffe): pyramid_height 1 returns that single pooling's top
        unflattened, (N, C, 1, 1).

    spp_param: pyramid_height, pool (MAX, AVE, STOCHASTIC); engine ignored.

    Mirrors: src/caffe/layers/spp_layer.cpp.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        self.height = self.param.spp_param.pyramid_height
        if self.height < 1:
            raise LayerError(self, f"pyramid_height must be >= 1, got "
                             f"{self.height}")
        self._key = None

    def _level_param(self, level, H, W):
        bins = 2 ** level
        lp = caffe_pb2.LayerParameter(name=f"{self.name}_level{level}",
                                      type="Pooling", phase=self.phase)
        pp = lp.pooling_param
        pp.pool = self.param.spp_param.pool
        kh, kw = -(-H // bins), -(-W // bins)
        pp.kernel_h, pp.kernel_w, pp.stride_h, pp.stride_w = kh, kw, kh, kw
        pp.pad_h = (kh * bins - H + 1) // 2
        pp.pad_w = (kw * bins - W + 1) // 2
        return lp

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise LayerError(self, f"bottom must have 4 axes (N, C, H, W), got "
                             f"shape {bottom[0].shape}")
        N, C, H, W = bottom[0].shape
        if (H, W) != self._key:
            self._key = (H, W)
            self.levels, self._tops = [], []
            for level in range(self.height):
                layer = PoolingLayer(self._level_param(level, H, W), self.dtype)
                t = Blob((), self.dtype)
                layer.set_up(bottom, [t])
                self.levels.append(layer)
                self._tops.append(t)
        for layer, t in zip(self.levels, self._tops):
            layer.reshape(bottom, [t])
        if self.height == 1:
            top[0].reshape(self._tops[0].shape)
        else:
            top[0].reshape((N, sum(t.count // N for t in self._tops)))

    def _segments(self, top):
        N, off = top.shape[0], 0
        for layer, t in zip(self.levels, self._tops):
            n = t.count // N
            yield layer, t, slice(off, off + n)
            off += n

    def forward(self, bottom, top):
        N = bottom[0].shape[0]
        y = top[0].data.reshape(N, -1)
        for layer, t, sl in self._segments(y):
            layer.forward(bottom, [t])
            y[:, sl] = t.data.reshape(N, -1)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        N = bottom[0].shape[0]
        dy = top[0].diff.reshape(N, -1)
        proxy = Blob(bottom[0].shape, self.dtype)
        proxy.share_data(bottom[0])
        total = None
        for layer, t, sl in self._segments(dy):
            t.diff[...] = dy[:, sl].reshape(t.shape)
            layer.backward([t], [True], [proxy])
            total = proxy.diff.copy() if total is None else total + proxy.diff
        bottom[0].diff[...] = total


@register("Crop", v1="CROP")
class CropLayer(Layer):
    """Crop bottom 0 to the shape of bottom 1 from `axis` on.

    ``top = x[..., o_a : o_a + ref_a, ...]`` for every axis a >= axis, with
    offset o_a; backward copies dy into that window of a zero dx.  Bottom 1
    only supplies the shape and gets no gradient.

    Shape:
        top shape = bottom 0's before ``axis``, bottom 1's from ``axis`` on;
        needs ``offset_a + ref_a <= in_a``.

    crop_param: axis (default 2, may be negative), offset (none = 0, one for
    every cropped axis, or one per cropped axis).

    Mirrors: src/caffe/layers/crop_layer.cpp.
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.crop_param
        self.axis = self.canonical_axis(bottom[0], p.axis)
        n = bottom[0].num_axes - self.axis
        offsets = list(p.offset)
        if len(offsets) > 1 and len(offsets) != n:
            raise LayerError(self, f"give one offset, or one per cropped axis "
                             f"({n} from axis {self.axis}), got {len(offsets)}")
        self.offsets = (offsets or [0]) * n if len(offsets) <= 1 else offsets

    def reshape(self, bottom, top):
        x, ref = bottom[0].shape, bottom[1].shape
        if len(x) != len(ref):
            raise LayerError(self, f"bottoms must have the same number of "
                             f"axes, got {x} and {ref}")
        a = self.axis
        for i, (o, r) in enumerate(zip(self.offsets, ref[a:])):
            if o + r > x[a + i]:
                raise LayerError(self, f"cannot crop axis {a + i} of bottom "
                                 f"{x} to {r} at offset {o} (reference {ref})")
        self._window = (slice(None),) * a + tuple(
            slice(o, o + r) for o, r in zip(self.offsets, ref[a:]))
        top[0].reshape(x[:a] + ref[a:])

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self._window]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].diff
            dx[...] = 0
            dx[self._window] = top[0].diff
