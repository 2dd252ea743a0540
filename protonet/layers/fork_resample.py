"""Resampling and region layers of well-known Caffe forks.

Upsample (nearest-neighbour, YOLOv3 ports / brocolli-caffe; or SegNet's
max-unpooling with a mask bottom), MaxUnPool (brocolli-caffe), bilinear
BilinearInterpolate (brocolli-caffe) and Interp (DeepLab / PSPNet),
ROIPooling (py-faster-rcnn) and PSROIPooling (R-FCN).

Bilinear resizing is separable: top = A_h @ x @ A_w^T with sparse (two
entries per row) interpolation matrices, so forward and backward are two
BLAS products each.

NOTE(caffe): brocolli-caffe's Upsample, MaxUnPool and BilinearInterpolate
have an empty Backward_cpu; we give them their true gradient (for MaxUnPool
and SegNet's Upsample that is SegNet's gather of the top diff at the mask).
"""

import math

import numpy as np

from ..errors import LayerError
from ..layer import Layer, register


# -- unpooling / nearest neighbour ------------------------------------------

def _unpool_forward(layer, x, mask, top, out_h, out_w):
    N, C, H, W = x.shape
    idx = mask.reshape(N * C, H * W).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= out_h * out_w):
        raise LayerError(layer, f"mask index {int(idx.min() if idx.min() < 0 else idx.max())} "
                         f"is outside the {out_h}x{out_w} output plane")
    out = top.reshape(N * C, out_h * out_w)
    out[...] = 0
    np.put_along_axis(out, idx, x.reshape(N * C, H * W), axis=1)
    return idx


class _Unpool(Layer):
    """Shared forward/backward of SegNet-style unpooling (data + mask)."""

    exact_num_top = 1

    def _check_mask(self, bottom):
        if bottom[1].shape != bottom[0].shape or bottom[0].num_axes != 4:
            raise LayerError(self, f"the mask must have the data's 4-D shape; "
                             f"got data {bottom[0].shape} and mask {bottom[1].shape}")

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def forward(self, bottom, top):
        _, _, oh, ow = top[0].shape
        self._idx = _unpool_forward(self, bottom[0].data, bottom[1].data,
                                    top[0].data, oh, ow)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            N, C, H, W = bottom[0].shape
            g = top[0].diff.reshape(N * C, -1)
            bottom[0].diff[...] = np.take_along_axis(g, self._idx, axis=1).reshape(N, C, H, W)
        # NOTE(caffe): the pooling mask gets no gradient; the forks ignore
        # propagate_down[1] (it is set whenever the pooling layer learns).


@register("Upsample")
class UpsampleLayer(_Unpool):
    """Upsampling; its meaning depends on the number of bottoms.

    One bottom (YOLOv3 ports, brocolli-caffe): nearest neighbour,
    top[..., h*s + i, w*s + j] = x[..., h, w] over the last dims_num - 2
    axes (dims_num 4: H and W; 3: the last axis); backward sums each s x s
    block.  Uses upsample_param.{scale, dims_num}.

    Two bottoms (caffe-segnet): max-unpooling, bottom[1] = the Pooling
    layer's mask top (flat h*W + w index in each output plane); each value is
    written at its mask position of a zero plane of size upsample_h x
    upsample_w, or H*scale - pad_out_h x W*scale - pad_out_w.  Without
    scale, upsample_h/w the scale is SegNet's default 2.  Backward gathers
    the top diff at the mask.

    Shape: one bottom (..., H, W) -> (..., H*s, W*s); two bottoms (N, C, H,
    W) -> (N, C, upsample_h, upsample_w).

    Mirrors: src/caffe/layers/upsample_layer.cpp (brocolli-caffe and
    alexgkendall/caffe-segnet)
    """

    min_bottom = 1
    max_bottom = 2

    def setup(self, bottom, top):
        p = self.param.upsample_param
        self.segnet = len(bottom) == 2
        if self.segnet:
            if p.HasField("upsample_h") != p.HasField("upsample_w"):
                raise LayerError(self, "give both upsample_h and upsample_w")
            self.scale = p.scale if p.HasField("scale") else 2
            sw = p.scale_w if p.HasField("scale_w") else self.scale
            self.scale_hw = (self.scale, sw)
            for flag, s in ((p.pad_out_h, self.scale_hw[0]), (p.pad_out_w, sw)):
                if flag and s != 2:
                    raise LayerError(self, "pad_out_h / pad_out_w need scale 2")
        else:
            for f in ("upsample_h", "upsample_w", "scale_w", "pad_out_h", "pad_out_w"):
                if p.HasField(f):
                    raise LayerError(self, f"upsample_param.{f} needs SegNet's "
                                     f"mask bottom (2 bottoms), got 1 bottom")
            self.scale = p.scale
            self.dims = p.dims_num
        if self.scale < 1:
            raise LayerError(self, f"scale must be >= 1, got {self.scale}")

    def reshape(self, bottom, top):
        s = bottom[0].shape
        if self.segnet:
            self._check_mask(bottom)
            p = self.param.upsample_param
            if p.HasField("upsample_h"):
                oh, ow = p.upsample_h, p.upsample_w
            else:
                oh = s[2] * self.scale_hw[0] - int(p.pad_out_h)
                ow = s[3] * self.scale_hw[1] - int(p.pad_out_w)
            top[0].reshape((s[0], s[1], oh, ow))
            return
        if len(s) != self.dims or self.dims < 3:
            raise LayerError(self, f"dims_num {self.dims} needs a {self.dims}-D "
                             f"bottom (at least 3), got shape {s}")
        k = self.dims - 2
        top[0].reshape(s[:-k] + tuple(d * self.scale for d in s[-k:]))

    def forward(self, bottom, top):
        if self.segnet:
            return super().forward(bottom, top)
        y = bottom[0].data
        for ax in range(bottom[0].num_axes - self.dims + 2, bottom[0].num_axes):
            y = np.repeat(y, self.scale, axis=ax)
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if self.segnet:
            return super().backward(top, propagate_down, bottom)
        if propagate_down[0]:
            s, k = bottom[0].shape, self.dims - 2
            split = s[:-k] + sum(((d, self.scale) for d in s[-k:]), ())
            axes = tuple(range(len(s) - k + 1, len(split), 2))
            bottom[0].diff[...] = top[0].diff.reshape(split).sum(axis=axes)


@register("MaxUnPool")
class MaxUnPoolLayer(_Unpool):
    """SegNet-style unpooling onto a (dst_h, dst_w) plane (brocolli-caffe).

    top[n, c].flat[mask[n, c, h, w]] = x[n, c, h, w], zero elsewhere;
    backward gathers the top diff at the mask.

    Shape: (N, C, H, W) data and mask -> (N, C, dst_h, dst_w).

    Supports max_unpool_param.{dst_h, dst_w} (both required).

    Mirrors: src/caffe/layers/max_unpool_layer.cpp (brocolli-caffe)
    """

    exact_num_bottom = 2

    def setup(self, bottom, top):
        p = self.param.max_unpool_param
        if not (p.dst_h > 0 and p.dst_w > 0):
            raise LayerError(self, f"max_unpool_param.dst_h and dst_w are "
                             f"required (> 0), got {p.dst_h} and {p.dst_w}")
        self.dst = (p.dst_h, p.dst_w)

    def reshape(self, bottom, top):
        self._check_mask(bottom)
        top[0].reshape(bottom[0].shape[:2] + self.dst)


# -- bilinear ---------------------------------------------------------------

def _interp_matrix(src, dst, coords, offset=0, size=None):
    """(dst, size) matrix of 1-D linear interpolation at `coords`.

    Coordinates are clamped to [0, src-1]; the neighbours are floor(coord)
    (at most src-2) and the next one; `offset` shifts into a wider axis of
    `size` entries (Interp's cropping).
    """
    size = src if size is None else size
    coords = np.clip(coords, 0, src - 1)
    lo = np.minimum(np.floor(coords).astype(np.int64), max(src - 2, 0))
    hi = np.minimum(lo + 1, src - 1)
    lam = coords - lo
    A = np.zeros((dst, size))
    rows = np.arange(dst)
    np.add.at(A, (rows, lo + offset), 1 - lam)
    np.add.at(A, (rows, hi + offset), lam)
    return A


def _align_corners(src, dst):
    ratio = np.float32((src - 1) / (dst - 1)) if dst > 1 else np.float32(0)
    return (ratio * np.arange(dst, dtype=np.float32)).astype(np.float64)


class _Bilinear(Layer):
    """y = A_h @ x @ A_w^T per (n, c) plane; dx = A_h^T @ dy @ A_w."""

    exact_num_top = 1

    def _set_matrices(self, Ah, Aw):
        self._Ah, self._Aw = Ah.astype(self.dtype), Aw.astype(self.dtype)

    def forward(self, bottom, top):
        top[0].data[...] = self._Ah @ bottom[0].data @ self._Aw.T

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self._Ah.T @ top[0].diff @ self._Aw
        # NOTE(caffe): the size bottom gets no gradient (propagate_down[1:]
        # is ignored, as Crop does).


@register("BilinearInterpolate")
class BilinearInterpolateLayer(_Bilinear):
    """Bilinear resize (brocolli-caffe), like PyTorch's interpolate.

    align_corners: source coordinate (src-1)/(dst-1) * i; otherwise
    src/dst * (i + 0.5) - 0.5; clamped to [0, src-1], neighbours floor (at
    most src-2) and floor + 1.

    Shape: (N, C, H, W) -> (N, C, dst_h, dst_w), or (int(H * scale_factor),
    int(W * scale_factor)); give one of the two, not both.

    Supports bilinear_interpolate_param.{dst_h, dst_w, scale_factor,
    align_corners}.

    Mirrors: src/caffe/layers/bilinear_interpolate_layer.cpp (brocolli-caffe)
    """

    exact_num_bottom = 1

    def setup(self, bottom, top):
        p = self.param.bilinear_interpolate_param
        has_dst = p.HasField("dst_h") or p.HasField("dst_w")
        if has_dst == p.HasField("scale_factor"):
            raise LayerError(self, "give either dst_h/dst_w or scale_factor "
                             "(exactly one of them)")
        if has_dst and not (p.dst_h > 0 and p.dst_w > 0):
            raise LayerError(self, f"dst_h and dst_w must both be > 0, got "
                             f"{p.dst_h} and {p.dst_w}")
        self.p = p

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise LayerError(self, f"needs a 4-D bottom, got {bottom[0].shape}")
        N, C, H, W = bottom[0].shape
        p = self.p
        if p.HasField("scale_factor"):
            s = np.float32(p.scale_factor)
            oh, ow = int(np.float32(H) * s), int(np.float32(W) * s)
        else:
            oh, ow = p.dst_h, p.dst_w
        if oh < 1 or ow < 1:
            raise LayerError(self, f"output size {oh}x{ow} from input {H}x{W}")
        mats = []
        for src, dst in ((H, oh), (W, ow)):
            if p.align_corners:
                c = _align_corners(src, dst)
            else:
                ratio = np.float32(src / dst)
                c = (ratio * (np.arange(dst, dtype=np.float32) + np.float32(0.5))
                     - np.float32(0.5)).astype(np.float64)
            mats.append(_interp_matrix(src, dst, c))
        self._set_matrices(*mats)
        top[0].reshape((N, C, oh, ow))


@register("Interp")
class InterpLayer(_Bilinear):
    """DeepLab / PSPNet bilinear resize with align-corners coordinates.

    The input is first cropped by -pad_beg / -pad_end (only non-positive
    pads), giving H_eff = H + pad_beg + pad_end; then source coordinate
    (H_eff-1)/(H_out-1) * i.

    Shape: H_out = (shrink) (H_eff-1)/shrink_factor + 1, (zoom) H_eff +
    (H_eff-1)*(zoom_factor-1), both applied shrink first, (height, width)
    when both are given, or bottom[1]'s H, W with two bottoms; same for W.

    Supports interp_param.{height, width, zoom_factor, shrink_factor,
    pad_beg, pad_end}.

    Mirrors: src/caffe/layers/interp_layer.cpp (DeepLab v2 / PSPNet)
    """

    min_bottom = 1
    max_bottom = 2

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def setup(self, bottom, top):
        p = self.param.interp_param
        if p.pad_beg > 0 or p.pad_end > 0:
            raise self.unsupported("interp_param.pad_beg/pad_end > 0 (only "
                                   "cropping, pads <= 0)", (p.pad_beg, p.pad_end))
        if p.shrink_factor < 1 or p.zoom_factor < 1:
            raise LayerError(self, "shrink_factor and zoom_factor must be >= 1")
        self.p = p

    def _out_size(self, bottom, h, w):
        p = self.p
        shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
        if shrink or zoom:
            if shrink:
                h, w = (h - 1) // p.shrink_factor + 1, (w - 1) // p.shrink_factor + 1
            if zoom:
                h, w = h + (h - 1) * (p.zoom_factor - 1), w + (w - 1) * (p.zoom_factor - 1)
            return h, w
        if p.HasField("height") and p.HasField("width"):
            return p.height, p.width
        if len(bottom) == 2:
            return bottom[1].shape[2], bottom[1].shape[3]
        raise LayerError(self, "set zoom_factor, shrink_factor, height and "
                         "width, or give a second bottom for the size")

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise LayerError(self, f"needs a 4-D bottom, got {bottom[0].shape}")
        N, C, H, W = bottom[0].shape
        p = self.p
        he, we = H + p.pad_beg + p.pad_end, W + p.pad_beg + p.pad_end
        if he < 1 or we < 1:
            raise LayerError(self, f"cropping {p.pad_beg}, {p.pad_end} leaves "
                             f"nothing of a {H}x{W} input")
        oh, ow = self._out_size(bottom, he, we)
        if oh < 1 or ow < 1:
            raise LayerError(self, f"output size {oh}x{ow} must be positive")
        self._set_matrices(
            _interp_matrix(he, oh, _align_corners(he, oh), -p.pad_beg, H),
            _interp_matrix(we, ow, _align_corners(we, ow), -p.pad_beg, W))
        top[0].reshape((N, C, oh, ow))


# -- regions of interest ----------------------------------------------------

def _c_round(v):
    """C's round(): halves away from zero (NumPy rounds halves to even)."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _check_rois(layer, data, rois):
    if data.num_axes != 4:
        raise LayerError(layer, f"bottom[0] must be (N, C, H, W), got {data.shape}")
    if rois.count % 5 or rois.shape[-1] != 5:
        raise LayerError(layer, f"bottom[1] must hold (R, 5) rois [batch, x1, "
                         f"y1, x2, y2], got shape {rois.shape}")
    r = rois.data.reshape(-1, 5)
    b = r[:, 0].astype(np.int64)
    if len(b) and (b.min() < 0 or b.max() >= data.shape[0]):
        raise LayerError(layer, f"roi batch index {int(b.max())} outside the "
                         f"batch of {data.shape[0]}")
    return r.astype(np.float64), b


@register("ROIPooling")
class ROIPoolingLayer(Layer):
    """Fast R-CNN max pooling of each region into a pooled_h x pooled_w grid.

    Region corners are round(coord * spatial_scale); its size max(end -
    start + 1, 1); bin (ph, pw) spans rows [floor(ph * bh), ceil((ph+1) *
    bh)) + start (clipped to the map), bh = height / pooled_h, likewise for
    columns.  Each bin takes the max (first in row-major order); an empty
    bin gives 0.  Backward adds the top diff at each bin's argmax.

    Shape: bottoms (N, C, H, W) and rois (R, 5) [batch, x1, y1, x2, y2];
    top (R, C, pooled_h, pooled_w).

    Supports roi_pooling_param.{pooled_h, pooled_w, spatial_scale}.

    Mirrors: src/caffe/layers/roi_pooling_layer.cpp (rbgirshick/caffe-fast-rcnn)
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def setup(self, bottom, top):
        p = self.param.roi_pooling_param
        if p.pooled_h < 1 or p.pooled_w < 1:
            raise LayerError(self, f"pooled_h and pooled_w must be > 0, got "
                             f"{p.pooled_h} and {p.pooled_w}")
        self.ph, self.pw, self.scale = p.pooled_h, p.pooled_w, p.spatial_scale

    def reshape(self, bottom, top):
        _check_rois(self, bottom[0], bottom[1])
        R = bottom[1].count // 5
        top[0].reshape((R, bottom[0].shape[1], self.ph, self.pw))

    def _bins(self, start, end, pooled, size):
        length = max(end - start + 1, 1)
        bin_size = np.float32(length) / np.float32(pooled)
        k = np.arange(pooled, dtype=np.float32)
        lo = np.floor(k * bin_size).astype(np.int64) + start
        hi = np.ceil((k + 1) * bin_size).astype(np.int64) + start
        return np.clip(lo, 0, size), np.clip(hi, 0, size)

    def forward(self, bottom, top):
        x = bottom[0].data
        _, C, H, W = x.shape
        rois, batch = _check_rois(self, bottom[0], bottom[1])
        corners = _c_round(rois[:, 1:] * np.float32(self.scale)).astype(np.int64)
        out = top[0].data
        self._argmax = np.full(out.shape, -1, np.int64)
        hh, ww = np.arange(H), np.arange(W)
        for r in range(len(rois)):
            x1, y1, x2, y2 = corners[r]
            hs, he = self._bins(y1, y2, self.ph, H)
            ws, we = self._bins(x1, x2, self.pw, W)
            mh = (hh >= hs[:, None]) & (hh < he[:, None])      # (ph, H)
            mw = (ww >= ws[:, None]) & (ww < we[:, None])      # (pw, W)
            plane = x[batch[r]].astype(np.float64)
            # Max over each bin's columns, then over its rows.
            cols = np.where(mw[None, None], plane[:, :, None, :], -np.inf)
            cmax, carg = cols.max(axis=3), cols.argmax(axis=3)  # (C, H, pw)
            rows = np.where(mh[None, :, :, None], cmax[:, None], -np.inf)
            rarg = rows.argmax(axis=2)                          # (C, ph, pw)
            val = np.take_along_axis(rows, rarg[:, :, None], axis=2)[:, :, 0]
            warg = np.take_along_axis(carg, rarg, axis=1)
            empty = ~(mh.any(axis=1)[:, None] & mw.any(axis=1)[None, :])
            out[r] = np.where(empty, 0, val)
            self._argmax[r] = np.where(empty, -1, rarg * W + warg)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _, batch = _check_rois(self, bottom[0], bottom[1])
            N, C, H, W = bottom[0].shape
            dx = np.zeros((N, C, H * W), np.float64)
            ok = self._argmax >= 0
            r, c, _, _ = np.nonzero(ok)
            np.add.at(dx, (batch[r], c, self._argmax[ok]), top[0].diff[ok])
            bottom[0].diff[...] = dx.reshape(N, C, H, W)
        # NOTE(caffe): the rois get no gradient; propagate_down[1] is ignored.


@register("PSROIPooling")
class PSROIPoolingLayer(Layer):
    """R-FCN position-sensitive average pooling.

    Region [round(x1), round(x2) + 1) * spatial_scale (rows likewise), at
    least 0.1 wide; bin (i, j) of a k x k grid (k = group_size) spans
    [floor(i * bh + y1), ceil((i+1) * bh + y1)) clipped to the map, and
    averages input channel (c * k + i) * k + j; an empty bin gives 0.
    Computed with a summed-area table; backward spreads diff / area over each
    bin through a 2-D difference array.

    Shape: bottoms (N, output_dim * k * k, H, W) and rois (R, 5); top (R,
    output_dim, k, k).

    Supports psroi_pooling_param.{spatial_scale, output_dim, group_size}.

    Mirrors: src/caffe/layers/psroi_pooling_layer.cu (daijifeng001/caffe-rfcn)
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def setup(self, bottom, top):
        p = self.param.psroi_pooling_param
        if p.output_dim < 1 or p.group_size < 1:
            raise LayerError(self, f"output_dim and group_size must be > 0, "
                             f"got {p.output_dim} and {p.group_size}")
        self.dim, self.k, self.scale = p.output_dim, p.group_size, p.spatial_scale

    def reshape(self, bottom, top):
        _check_rois(self, bottom[0], bottom[1])
        need = self.dim * self.k * self.k
        if bottom[0].shape[1] != need:
            raise LayerError(self, f"output_dim {self.dim} x group_size^2 "
                             f"{self.k * self.k} = {need} channels expected, "
                             f"got bottom shape {bottom[0].shape}")
        top[0].reshape((bottom[1].count // 5, self.dim, self.k, self.k))

    def _geometry(self, bottom):
        rois, batch = _check_rois(self, bottom[0], bottom[1])
        H, W = bottom[0].shape[2:]
        s, k = np.float32(self.scale), self.k
        r = _c_round(rois[:, 1:]).astype(np.float32)
        x1, y1 = r[:, 0] * s, r[:, 1] * s
        x2, y2 = (r[:, 2] + 1) * s, (r[:, 3] + 1) * s
        bw = np.maximum(x2 - x1, np.float32(0.1)) / np.float32(k)
        bh = np.maximum(y2 - y1, np.float32(0.1)) / np.float32(k)
        g = np.arange(k, dtype=np.float32)
        hs = np.clip(np.floor(g * bh[:, None] + y1[:, None]), 0, H).astype(np.int64)
        he = np.clip(np.ceil((g + 1) * bh[:, None] + y1[:, None]), 0, H).astype(np.int64)
        ws = np.clip(np.floor(g * bw[:, None] + x1[:, None]), 0, W).astype(np.int64)
        we = np.clip(np.ceil((g + 1) * bw[:, None] + x1[:, None]), 0, W).astype(np.int64)
        # Broadcast to (R, dim, k, k): rows vary with i, columns with j.
        sh = (len(rois), 1, k, 1)
        sw = (len(rois), 1, 1, k)
        chan = (np.arange(self.dim)[:, None, None] * k + np.arange(k)[:, None]) * k \
            + np.arange(k)
        return (batch[:, None, None, None], chan[None], hs.reshape(sh),
                he.reshape(sh), ws.reshape(sw), we.reshape(sw))

    def forward(self, bottom, top):
        b, c, hs, he, ws, we = self._geometry(bottom)
        x = bottom[0].data.astype(np.float64)
        S = np.zeros(x.shape[:2] + (x.shape[2] + 1, x.shape[3] + 1))
        S[:, :, 1:, 1:] = x.cumsum(axis=2).cumsum(axis=3)
        total = S[b, c, he, we] - S[b, c, hs, we] - S[b, c, he, ws] + S[b, c, hs, ws]
        area = (he - hs) * (we - ws)
        empty = (he <= hs) | (we <= ws)
        top[0].data[...] = np.where(empty, 0, total / np.where(empty, 1, area))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            b, c, hs, he, ws, we = self._geometry(bottom)
            N, C, H, W = bottom[0].shape
            empty = (he <= hs) | (we <= ws)
            v = np.where(empty, 0, top[0].diff / np.where(empty, 1, (he - hs) * (we - ws)))
            shape = v.shape
            D = np.zeros((N, C, H + 1, W + 1))
            for rows, cols, sign in ((hs, ws, 1), (hs, we, -1), (he, ws, -1), (he, we, 1)):
                idx = tuple(np.broadcast_to(a, shape) for a in (b, c, rows, cols))
                np.add.at(D, idx, sign * v)
            bottom[0].diff[...] = D.cumsum(axis=2).cumsum(axis=3)[:, :, :H, :W]
        # NOTE(caffe): the rois get no gradient; propagate_down[1] is ignored.
