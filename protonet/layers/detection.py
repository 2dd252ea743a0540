"""SSD layers (weiliu89/caffe, branch ssd): Normalize, Permute, PriorBox,
DetectionOutput (the losses are in detection_loss.py).

Priors travel as a (1, 2, P*4) blob: channel 0 the boxes [xmin, ymin, xmax,
ymax] in normalised image coordinates, channel 1 their four variances.
Location predictions are (N, P*L*4) with L = 1 (share_location) or
num_classes; confidences are (N, P*C).  Box arithmetic lives in
`protonet.bbox`.

Mirrors: src/caffe/layers/{normalize,permute,prior_box,detection_output}_layer.cpp
of weiliu89/caffe (ssd).
"""

import math

import warnings

import numpy as np

from .. import bbox
from ..errors import LayerError, UnsupportedError
from ..layer import Layer, register
from ..proto import caffe_pb2

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)


@register("Normalize")
class NormalizeLayer(Layer):
    """L2 normalisation with a learned scale (SSD's conv4_3_norm, ParseNet).

    across_spatial: n = sqrt(sum_{c,h,w} x^2 + eps) per image; otherwise
    n = sqrt(sum_c x^2 + eps) per location.  y = scale * x / n, scale one
    value (channel_shared) or one per channel.

    Gradient (Caffe's formula, g = top diff):
    dx = scale * (g - x * S / n^2) / n with S = sum of x*g over the same
    region as n; dscale += sum(y * g) / scale (per channel or in total).

    NOTE(caffe): with channel_shared false the bottom gradient ignores the
    other channels' scales (S sums x*g, not x*g*scale); it is exact only when
    every scale is equal.  We copy it.  eps is added inside the sqrt.

    Shape: top has the bottom's shape (N, C, ...), at least 2 axes.

    Supports norm_param.{across_spatial, scale_filler (default constant 1),
    channel_shared, eps}.

    Mirrors: src/caffe/layers/normalize_layer.cpp
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.norm_param
        if bottom[0].num_axes < 2:
            raise LayerError(self, f"bottom must have at least 2 axes, got "
                             f"shape {bottom[0].shape}")
        self.across_spatial = p.across_spatial
        self.channel_shared = p.channel_shared
        self.eps = p.eps
        filler = p.scale_filler if p.HasField("scale_filler") else \
            caffe_pb2.FillerParameter(type="constant", value=1.0)
        shape = () if self.channel_shared else (bottom[0].shape[1],)
        self.add_param_blob(shape, filler)
        self._x = None

    def reshape(self, bottom, top):
        C = bottom[0].shape[1]
        if not self.channel_shared and self.blobs[0].count != C:
            raise LayerError(self, f"scale blob has {self.blobs[0].count} "
                             f"values but the bottom has {C} channels")
        top[0].reshape(bottom[0].shape)

    def _view(self, a):
        N, C = a.shape[:2]
        return a.reshape(N, C, -1)

    def _scale(self):
        s = self.blobs[0].data
        return s.reshape(()) if self.channel_shared else s.reshape(1, -1, 1)

    def forward(self, bottom, top):
        if not bottom[0].count:  # empty batch/axis: nothing to compute
            return
        x = self._view(bottom[0].data)
        axes = (1, 2) if self.across_spatial else (1,)
        self._norm = np.sqrt(np.sum(x * x, axis=axes, keepdims=True)
                             + self.dtype.type(self.eps))
        # Keep the input when in place: backward needs it.
        self._x = x.copy() if top[0] is bottom[0] else x
        y = self._view(top[0].data)
        np.divide(x, self._norm, out=y)
        y *= self._scale()

    def backward(self, top, propagate_down, bottom):
        if not bottom[0].count:  # empty batch/axis: nothing to compute
            return
        g = self._view(top[0].diff)
        y = self._view(top[0].data)
        x, n, scale = self._x, self._norm, self._scale()
        if self.param_propagate_down[0]:
            yg = y * g
            if self.channel_shared:
                self.blobs[0].diff[...] += np.sum(yg) / scale
            else:
                self.blobs[0].diff[...] += yg.sum(axis=(0, 2)) / \
                    self.blobs[0].data
        if propagate_down[0]:
            axes = (1, 2) if self.across_spatial else (1,)
            s = np.sum(x * g, axis=axes, keepdims=True)
            dx = (g - x * (s / (n * n))) / n
            dx *= scale
            self._view(bottom[0].diff)[...] = dx


@register("Permute")
class PermuteLayer(Layer):
    """Reorders the axes: top = transpose(bottom, order).

    Axes missing from permute_param.order are appended in increasing order
    (order 0, 3 on 4 axes = 0, 3, 1, 2).  Backward applies the inverse
    permutation to the top diff.

    Shape: top.shape[i] = bottom.shape[order[i]].

    Mirrors: src/caffe/layers/permute_layer.cpp
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        n = bottom[0].num_axes
        order = []
        for o in self.param.permute_param.order:
            if o >= n:
                raise LayerError(self, f"order {o} is out of range for a "
                                 f"{n}-D bottom of shape {bottom[0].shape}")
            if o in order:
                raise LayerError(self, f"order {o} is given twice")
            order.append(int(o))
        self.order = tuple(order + [i for i in range(n) if i not in order])
        self.inverse = tuple(np.argsort(self.order))

    def reshape(self, bottom, top):
        if bottom[0].num_axes != len(self.order):
            raise LayerError(self, f"order {self.order} needs a "
                             f"{len(self.order)}-D bottom, got shape "
                             f"{bottom[0].shape}")
        top[0].reshape(tuple(bottom[0].shape[i] for i in self.order))

    def forward(self, bottom, top):
        top[0].data[...] = np.transpose(bottom[0].data, self.order)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = np.transpose(top[0].diff, self.inverse)


@register("PriorBox")
class PriorBoxLayer(Layer):
    """Default boxes of one feature map (SSD's anchors).

    Per location (h, w), centre ((w + offset) * step_w, (h + offset) *
    step_h), and per min_size s: a square of side s, then (with max_size m)
    a square of side sqrt(s*m), then for each aspect ratio ar != 1 a box of
    width s*sqrt(ar) and height s/sqrt(ar).  Aspect ratios: 1, then each
    given ratio once (duplicates within 1e-6 dropped), followed by 1/ar when
    flip.  Coordinates are divided by the image size; clip limits them to
    [0, 1].  Variances: one value for all four coordinates, four values, or
    0.1 by default.

    NOTE(caffe): every min_size / max_size is truncated to an int before use.
    The image size is img_h/img_w (or img_size), else bottom[1]'s H, W; the
    step is step_h/step_w (or step), else image size / feature size (float).

    Shape: bottoms (N, C, H, W) feature map and (N, C', H', W') image; top
    (1, 2, H * W * num_priors * 4).  Only the bottoms' shapes are read.

    Supports every prior_box_param field.

    Mirrors: src/caffe/layers/prior_box_layer.cpp
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.prior_box_param
        if not p.min_size:
            raise LayerError(self, "prior_box_param needs at least one min_size")
        if any(not 0 < s < np.inf for s in p.min_size):
            raise LayerError(self, f"min_size must be positive and finite, got "
                             f"{list(p.min_size)}")
        if any(not np.isfinite(s) for s in p.max_size):
            raise LayerError(self, f"max_size must be finite, got "
                             f"{list(p.max_size)}")
        self.min_sizes = [int(s) for s in p.min_size]
        ratios = [1.0]
        for ar in p.aspect_ratio:
            if any(abs(ar - r) < 1e-6 for r in ratios):
                continue
            ratios.append(float(np.float32(ar)))
            if p.flip:
                ratios.append(1.0 / ratios[-1])
        self.aspect_ratios = ratios
        self.max_sizes = []
        if p.max_size:
            if len(p.max_size) != len(p.min_size):
                raise LayerError(self, f"{len(p.max_size)} max_size for "
                                 f"{len(p.min_size)} min_size values")
            for lo, hi in zip(p.min_size, p.max_size):
                if hi <= lo:
                    raise LayerError(self, f"max_size {hi} must exceed "
                                     f"min_size {lo}")
            self.max_sizes = [int(s) for s in p.max_size]
        self.num_priors = len(ratios) * len(self.min_sizes) + len(self.max_sizes)
        if len(p.variance) > 1 and len(p.variance) != 4:
            raise LayerError(self, f"give 1 or 4 variances, got {len(p.variance)}")
        if any(v <= 0 for v in p.variance):
            raise LayerError(self, f"variances must be positive, got {list(p.variance)}")
        self.variance = list(p.variance) or [0.1]
        if p.HasField("img_h") or p.HasField("img_w"):
            if p.HasField("img_size"):
                raise LayerError(self, "give img_size or img_h/img_w, not both")
            self.img_h, self.img_w = p.img_h, p.img_w
        else:
            self.img_h = self.img_w = p.img_size
        if p.HasField("step_h") or p.HasField("step_w"):
            if p.HasField("step"):
                raise LayerError(self, "give step or step_h/step_w, not both")
            self.step_h, self.step_w = p.step_h, p.step_w
        else:
            self.step_h = self.step_w = p.step
        self.offset, self.clip = p.offset, p.clip

    def reshape(self, bottom, top):
        for b in bottom:
            if b.num_axes != 4:
                raise LayerError(self, f"bottoms must be 4-D (N, C, H, W), "
                                 f"got shapes {bottom[0].shape} and {bottom[1].shape}")
        H, W = bottom[0].shape[2:]
        top[0].reshape((1, 2, H * W * self.num_priors * 4))

    def _box_sizes(self):
        """(num_priors, 2) widths and heights in Caffe's prior order."""
        sizes = []
        for k, s in enumerate(self.min_sizes):
            sizes.append((s, s))
            if self.max_sizes:
                side = math.sqrt(s * self.max_sizes[k])
                sizes.append((side, side))
            for ar in self.aspect_ratios[1:]:
                r = float(np.sqrt(np.float32(ar)))
                sizes.append((s * r, s / r))
        return np.array(sizes, np.float64)

    def forward(self, bottom, top):
        H, W = bottom[0].shape[2:]
        img_h, img_w = self.img_h, self.img_w
        if img_h == 0 or img_w == 0:
            img_h, img_w = bottom[1].shape[2:]
        f32 = np.float32
        if self.step_h == 0 or self.step_w == 0:
            step_h, step_w = f32(img_h) / f32(H), f32(img_w) / f32(W)
        else:
            step_h, step_w = f32(self.step_h), f32(self.step_w)
        cx = ((np.arange(W, dtype=f32) + f32(self.offset)) * step_w).astype(np.float64)
        cy = ((np.arange(H, dtype=f32) + f32(self.offset)) * step_h).astype(np.float64)
        wh = self._box_sizes()
        half_w, half_h = wh[:, 0] / 2, wh[:, 1] / 2
        boxes = np.empty((H, W, len(wh), 4))
        boxes[..., 0] = (cx[None, :, None] - half_w) / img_w
        boxes[..., 1] = (cy[:, None, None] - half_h) / img_h
        boxes[..., 2] = (cx[None, :, None] + half_w) / img_w
        boxes[..., 3] = (cy[:, None, None] + half_h) / img_h
        if self.clip:
            np.clip(boxes, 0, 1, out=boxes)
        out = top[0].data
        out[0, 0] = boxes.reshape(-1)
        out[0, 1].reshape(-1, len(self.variance))[...] = self.variance

    def backward(self, top, propagate_down, bottom):
        """No gradient (Caffe's backward is empty)."""


def _split_priors(layer, prior_blob, what):
    """(P, 4) boxes and (P, 4) variances from a (1, 2, P*4) prior blob."""
    s = prior_blob.shape
    if len(s) != 3 or s[0] != 1 or s[1] != 2 or s[2] % 4:
        raise LayerError(layer, f"{what} must be (1, 2, P*4) priors and "
                         f"variances, got shape {s}")
    d = prior_blob.data.reshape(2, -1, 4)
    return d[0], d[1]


def _check_counts(layer, loc, conf, prior, loc_classes, num_classes):
    P = prior.shape[2] // 4 if prior.num_axes == 3 else 0
    N = loc.shape[0]
    if conf.shape[0] != N:
        raise LayerError(layer, f"location and confidence predictions need "
                         f"the same batch size, got shapes {loc.shape} and "
                         f"{conf.shape}")
    if loc.count // max(N, 1) != P * loc_classes * 4:
        raise LayerError(layer, f"{P} priors (prior shape {prior.shape}) need "
                         f"{P * loc_classes * 4} location values per image, "
                         f"got loc shape {loc.shape}")
    if conf.count // max(N, 1) != P * num_classes:
        raise LayerError(layer, f"{P} priors (prior shape {prior.shape}) and "
                         f"{num_classes} classes need {P * num_classes} "
                         f"confidences per image, got conf shape {conf.shape}")
    return N, P


@register("DetectionOutput")
class DetectionOutputLayer(Layer):
    """Decodes SSD predictions and keeps the best boxes (inference only).

    Per image and per non-background class: decode the boxes against the
    priors, keep scores > confidence_threshold, stable-sort them descending,
    cut to nms_param.top_k, greedy NMS (drop a box whose IoU with a kept box
    exceeds nms_threshold; eta < 1 lowers the threshold after each kept box
    while it is above 0.5); then keep the keep_top_k best over all classes.

    NOTE(caffe): rows [image, label, score, xmin, ymin, xmax, ymax] come
    grouped by image, then label ascending, then score descending within a
    label (not globally by score).  With no detection at all the top is
    (1, 1, N, 7) with rows [i, -1, -1, -1, -1, -1, -1].  Without nms_param
    NMS still runs with threshold 0.3 (weiliu89; brocolli-caffe skips it).
    Boxes are not clipped.

    Shape: bottoms loc (N, P*L*4), conf (N, P*C) (probabilities), priors
    (1, 2, P*4); top (1, 1, num_kept, 7).

    Supports detection_output_param.{num_classes, share_location,
    background_label_id, nms_param, code_type, variance_encoded_in_target,
    keep_top_k, confidence_threshold}; save_output_param is ignored (an
    output_directory, where the fork writes result files, gives a warning)
    and visualize raises UnsupportedError.

    Mirrors: src/caffe/layers/detection_output_layer.cpp
    """

    exact_num_bottom = 3
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.detection_output_param
        if not p.HasField("num_classes"):
            raise LayerError(self, "detection_output_param.num_classes is required")
        if p.save_output_param.output_directory:
            # The fork writes VOC/COCO result files as a side effect of
            # evaluation; the detections themselves are unaffected.
            warnings.warn(f"DetectionOutput layer '{self.name}': "
                          "save_output_param.output_directory "
                          f"{p.save_output_param.output_directory!r} is "
                          "ignored (protonet does not write result files)",
                          stacklevel=2)
        if p.visualize:
            raise self.unsupported("visualize", True)
        self.num_classes = p.num_classes
        self.share_location = p.share_location
        self.loc_classes = 1 if p.share_location else p.num_classes
        self.background = p.background_label_id
        self.code_type = p.code_type
        self.variance_in_target = p.variance_encoded_in_target
        self.keep_top_k = p.keep_top_k
        self.threshold = p.confidence_threshold \
            if p.HasField("confidence_threshold") else -FLT_MAX
        nms = p.nms_param
        if nms.nms_threshold < 0 or not 0 < nms.eta <= 1:
            raise LayerError(self, f"nms_threshold must be >= 0 and eta in "
                             f"(0, 1], got {nms.nms_threshold} and {nms.eta}")
        self.nms_threshold = nms.nms_threshold
        self.eta = nms.eta
        self.top_k = nms.top_k if nms.HasField("top_k") else -1

    def reshape(self, bottom, top):
        _split_priors(self, bottom[2], "bottom[2]")
        _check_counts(self, bottom[0], bottom[1], bottom[2],
                      self.loc_classes, self.num_classes)
        top[0].reshape((1, 1, 1, 7))

    def forward(self, bottom, top):
        N, P = _check_counts(self, bottom[0], bottom[1], bottom[2],
                             self.loc_classes, self.num_classes)
        priors, var = _split_priors(self, bottom[2], "bottom[2]")
        loc = bottom[0].data.reshape(N, P, self.loc_classes, 4)
        conf = bottom[1].data.reshape(N, P, self.num_classes)
        boxes = bbox.decode(priors, var, self.code_type,
                            self.variance_in_target,
                            np.moveaxis(loc, 2, 1))      # (N, L, P, 4)
        rows = []
        for i in range(N):
            found = []   # (label, kept indices)
            for c in range(self.num_classes):
                if c == self.background:
                    continue
                b = boxes[i, 0 if self.share_location else c]
                keep = bbox.nms(b, conf[i, :, c], self.threshold,
                                self.nms_threshold, self.eta, self.top_k)
                found.append((c, keep))
            total = sum(len(k) for _, k in found)
            if -1 < self.keep_top_k < total:
                labels = np.concatenate([np.full(len(k), c) for c, k in found])
                idx = np.concatenate([k for _, k in found])
                scores = conf[i, idx, labels]
                best = np.argsort(-scores, kind="stable")[:self.keep_top_k]
                found = [(c, idx[best[labels[best] == c]])
                         for c in range(self.num_classes)]
            for c, keep in found:
                if len(keep):
                    b = boxes[i, 0 if self.share_location else c, keep]
                    r = np.empty((len(keep), 7), np.float64)
                    r[:, 0], r[:, 1] = i, c
                    r[:, 2] = conf[i, keep, c]
                    r[:, 3:] = b
                    rows.append(r)
        if rows:
            out = np.concatenate(rows)
        else:
            out = np.full((N, 7), -1.0)
            out[:, 0] = np.arange(N)
        top[0].reshape((1, 1, len(out), 7))
        top[0].data[0, 0] = out

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise UnsupportedError(self, "DetectionOutput has no backward pass")
