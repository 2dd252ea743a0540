"""SSD layers (weiliu89/caffe, branch ssd): Normalize, Permute, PriorBox,
DetectionOutput, MultiBoxLoss, SmoothL1Loss.

Priors travel as a (1, 2, P*4) blob: channel 0 the boxes [xmin, ymin, xmax,
ymax] in normalised image coordinates, channel 1 their four variances.
Location predictions are (N, P*L*4) with L = 1 (share_location) or
num_classes; confidences are (N, P*C).  Box arithmetic lives in
`protonet.bbox`.

Mirrors: src/caffe/layers/{normalize,permute,prior_box,detection_output,
multibox_loss,smooth_l1_loss}_layer.cpp of weiliu89/caffe (ssd).
"""

import math

import numpy as np

from .. import bbox
from ..errors import LayerError, UnsupportedError
from ..layer import Layer, LossLayer, register
from ..proto import caffe_pb2

_MBL = caffe_pb2.MultiBoxLossParameter
_NORM = caffe_pb2.LossParameter
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
        if any(s <= 0 for s in p.min_size):
            raise LayerError(self, f"min_size must be positive, got {list(p.min_size)}")
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
    keep_top_k, confidence_threshold}; save_output_param's
    label_map_file / name_size_file are ignored, output_directory
    (writing results) and visualize raise UnsupportedError.

    Mirrors: src/caffe/layers/detection_output_layer.cpp
    """

    exact_num_bottom = 3
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.detection_output_param
        if not p.HasField("num_classes"):
            raise LayerError(self, "detection_output_param.num_classes is required")
        if p.save_output_param.output_directory:
            raise self.unsupported("save_output_param.output_directory",
                                   p.save_output_param.output_directory)
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


def _smooth_l1(d, sigma2=1.0):
    """(f(d), f'(d)) of the smooth L1 function with knee at 1/sigma2."""
    a = np.abs(d)
    small = a < 1.0 / sigma2
    f = np.where(small, 0.5 * sigma2 * d * d, a - 0.5 / sigma2)
    df = np.where(small, sigma2 * d, np.sign(d))
    return f, df


@register("SmoothL1Loss")
class SmoothL1LossLayer(LossLayer):
    """Smooth L1 loss: SSD's 2-bottom form and Fast R-CNN's 4-bottom form.

    d = w_in * (a - b) (w_in = 1 with two bottoms); f(d) = 0.5 * sigma^2 *
    d^2 if |d| < 1/sigma^2, else |d| - 0.5/sigma^2; loss = sum(w_out * f(d))
    / N with N = shape(0).  da = w_out * w_in * f'(d) * top_diff / N,
    db = -da.  With two bottoms and sigma 1 this is weiliu89's layer.

    NOTE(caffe): weiliu89's 3-bottom form (weights) aborts at setup in Caffe
    (ExactNumBottomBlobs 2); we reject it too.

    Shape: bottoms of equal count (N, ...), optional inside / outside
    weights of the same count; top a 0-axis loss.

    Supports smooth_l1_loss_param.sigma (py-faster-rcnn, default 1).

    Mirrors: src/caffe/layers/smooth_l1_loss_layer.cpp (weiliu89 ssd and
    rbgirshick/py-faster-rcnn)
    """

    exact_num_bottom = None
    min_bottom = 2
    max_bottom = 4

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2

    def setup(self, bottom, top):
        if len(bottom) == 3:
            raise LayerError(self, "takes 2 bottoms (predictions, targets) or "
                             "4 (plus inside and outside weights), got 3")
        sigma = self.param.smooth_l1_loss_param.sigma
        self.sigma2 = float(sigma) * float(sigma)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        for i, b in enumerate(bottom[1:], 1):
            if b.count != bottom[0].count:
                raise LayerError(self, f"bottom[{i}] has {b.count} values "
                                 f"(shape {b.shape}), bottom[0] has "
                                 f"{bottom[0].count} (shape {bottom[0].shape})")

    def forward(self, bottom, top):
        d = bottom[0].data - bottom[1].data.reshape(bottom[0].shape)
        if len(bottom) == 4:
            d *= bottom[2].data.reshape(d.shape)
        f, self._df = _smooth_l1(d, self.sigma2)
        if len(bottom) == 4:
            f *= bottom[3].data.reshape(d.shape)
        top[0].data[...] = np.sum(f, dtype=np.float64) / bottom[0].shape[0]

    def backward(self, top, propagate_down, bottom):
        g = self._df * (float(top[0].diff) / bottom[0].shape[0])
        if len(bottom) == 4:
            g = g * bottom[2].data.reshape(g.shape) * \
                bottom[3].data.reshape(g.shape)
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                bottom[i].diff[...] = (sign * g).reshape(bottom[i].shape)
        if any(propagate_down[2:]):
            raise LayerError(self, "cannot backpropagate to the weights")


def _log_softmax_loss(x, labels):
    """Per row -log(max(softmax(x)[label], FLT_MIN)) and softmax(x)."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    p = prob[np.arange(len(x)), labels]
    return -np.log(np.maximum(p, FLT_MIN)), prob


def _sigmoid_ce(x, t):
    """Element-wise sigmoid cross-entropy (Caffe's stable form)."""
    pos = (x >= 0).astype(x.dtype)
    return -(x * (t - pos) - np.log1p(np.exp(x - 2 * x * pos)))


@register("MultiBoxLoss")
class MultiBoxLossLayer(LossLayer):
    """SSD's training loss: match priors to ground truth, mine negatives,
    localisation loss on the matches plus confidence loss.

    Per image, priors are matched to the ground truth boxes
    (`protonet.bbox.match`: bipartite, then per prediction IoU >=
    overlap_threshold).  MAX_NEGATIVE mining keeps, among unmatched priors
    with best IoU < neg_overlap, the int(num_pos * neg_pos_ratio) with the
    highest confidence loss against the background (ties: stable order).
    loss = loc_weight * L_loc / norm + L_conf / norm, where L_loc sums
    SmoothL1 (or 0.5 * d^2 for L2) of (loc - encoded gt) over the matches,
    L_conf sums the softmax (or sigmoid) cross-entropy over the matches and
    mined negatives (every prior with mining_type NONE), and norm is the
    loss_param normalisation (VALID = number of matches), at least 1.  A
    term is only added when its bottom's propagate_down is true.

    NOTE(caffe): with encode_variance_in_target the gt is encoded without
    the variances and both it and the prediction are divided by them; the
    gradient copied back to loc misses the 1/variance chain factor.  With
    LOGISTIC and mining_type NONE, image i's one-hot targets land at flat
    offset i*P + j*C + c (weiliu89 advances the target pointer by P, not
    P*C); we copy both.

    Shape: bottoms loc (N, P*L*4), conf (N, P*C) logits, priors (1, 2, P*4),
    ground truth (1, 1, G, 8) rows [image, label, instance, xmin, ymin,
    xmax, ymax, difficult] (image -1 = padding); top a 0-axis loss.

    Supports every multibox_loss_param field except mining_type HARD_EXAMPLE
    (and its nms_param / sample_size / use_prior_for_nms) and bp_inside.

    Mirrors: src/caffe/layers/multibox_loss_layer.cpp, util/bbox_util.cpp
    """

    exact_num_bottom = 4

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2

    def setup(self, bottom, top):
        p = self.param.multibox_loss_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise LayerError(self, "multibox_loss_param.num_classes (>= 1) "
                             "is required")
        self.p = p
        self.C = p.num_classes
        self.loc_classes = 1 if p.share_location else p.num_classes
        if p.HasField("do_neg_mining"):
            self.mining = _MBL.MAX_NEGATIVE if p.do_neg_mining else _MBL.NONE
        else:
            self.mining = p.mining_type
        if self.mining == _MBL.HARD_EXAMPLE:
            raise self.unsupported("mining_type", "HARD_EXAMPLE")
        if p.bp_inside:
            raise self.unsupported("bp_inside", True)
        if self.mining != _MBL.NONE:
            if not p.share_location:
                raise LayerError(self, "negative mining needs share_location")
            if p.neg_pos_ratio <= 0:
                raise LayerError(self, f"neg_pos_ratio must be > 0, got "
                                 f"{p.neg_pos_ratio}")
        if p.map_object_to_agnostic and self.C != (2 if p.background_label_id >= 0 else 1):
            raise LayerError(self, "map_object_to_agnostic needs num_classes "
                             "2 (1 without background)")
        lp = self.param.loss_param
        if not lp.HasField("normalization") and lp.HasField("normalize"):
            self.normalization = _NORM.VALID if lp.normalize else _NORM.BATCH_SIZE
        else:
            self.normalization = lp.normalization
        pd = list(self.param.propagate_down) or [True, True, False, False]
        self.use_loc, self.use_conf = bool(pd[0]), bool(pd[1])

    def reshape(self, bottom, top):
        if bottom[3].count % 8 or (bottom[3].num_axes == 4 and bottom[3].shape[3] != 8):
            raise LayerError(self, f"ground truth must be (1, 1, G, 8), got "
                             f"shape {bottom[3].shape}")
        _split_priors(self, bottom[2], "bottom[2]")
        _check_counts(self, bottom[0], bottom[1], bottom[2],
                      self.loc_classes, self.C)
        top[0].reshape(())

    def _ground_truth(self, rows):
        """{image: (boxes (G, 4), labels (G,))} (GetGroundTruth)."""
        p, gts = self.p, {}
        for r in rows:
            item = int(r[0])
            if item == -1:
                continue
            label = int(r[1])
            if label == p.background_label_id:
                raise LayerError(self, f"ground truth row {r.tolist()} has "
                                 f"the background label {label}")
            if not p.use_difficult_gt and bool(r[7]):
                continue
            gts.setdefault(item, ([], []))
            gts[item][0].append(r[3:7])
            gts[item][1].append(label)
        return {i: (np.array(b, np.float64), np.array(l, np.int64))
                for i, (b, l) in gts.items()}

    def _match(self, i, gt, priors, var, loc):
        """{label: (indices, overlaps)} for image i, labels in map order."""
        p = self.p
        boxes, labels = gt
        if p.use_prior_for_matching:
            idx, ov = bbox.match(boxes, priors, p.match_type,
                                 p.overlap_threshold, p.ignore_cross_boundary_bbox)
            if p.share_location:
                return {-1: (idx, ov)}
            out = {}
            for c in range(self.loc_classes):
                if c != p.background_label_id:
                    sel = np.where(idx >= 0, labels[np.maximum(idx, 0)] == c, False)
                    out[c] = (np.where(sel, idx, -1), ov)
            return out
        out = {}
        for c in range(self.loc_classes):
            label = -1 if p.share_location else c
            if label == p.background_label_id:
                continue
            pred = bbox.decode(priors, var, p.code_type,
                               p.encode_variance_in_target, loc[i, :, c])
            g = boxes if label == -1 else boxes[labels == label]
            gi = np.arange(len(boxes)) if label == -1 else np.flatnonzero(labels == label)
            idx, ov = bbox.match(g, pred, p.match_type, p.overlap_threshold,
                                 p.ignore_cross_boundary_bbox)
            out[label] = (np.where(idx >= 0, gi[np.maximum(idx, 0)], idx), ov)
        return out

    def _prior_conf_loss(self, conf_i, labels):
        """Per prior confidence loss w.r.t. `labels` (ComputeConfLoss)."""
        if self.p.conf_loss_type == _MBL.SOFTMAX:
            return _log_softmax_loss(conf_i, labels)[0]
        t = (np.arange(self.C)[None, :] == labels[:, None]).astype(conf_i.dtype)
        return _sigmoid_ce(conf_i, t).sum(axis=1)

    def _normalizer(self, N, P, num_matches):
        n = {_NORM.FULL: N * P, _NORM.VALID: num_matches,
             _NORM.BATCH_SIZE: N, _NORM.NONE: 1}[self.normalization]
        return max(1.0, float(n))

    def forward(self, bottom, top):
        p = self.p
        N, P = _check_counts(self, bottom[0], bottom[1], bottom[2],
                             self.loc_classes, self.C)
        priors, var = _split_priors(self, bottom[2], "bottom[2]")
        priors, var = priors.astype(np.float64), var.astype(np.float64)
        loc = bottom[0].data.reshape(N, P, self.loc_classes, 4)
        conf = bottom[1].data.reshape(N, P, self.C).astype(np.float64)
        gts = self._ground_truth(bottom[3].data.reshape(-1, 8).astype(np.float64))
        bg = p.background_label_id
        matches, negatives = [], []
        for i in range(N):
            m = self._match(i, gts[i], priors, var, loc) if i in gts else {}
            neg = np.zeros(0, np.int64)
            if self.mining == _MBL.MAX_NEGATIVE and m:
                labels = np.full(P, bg, np.int64)
                for idx, _ in m.values():
                    hit = (idx > -1) & (labels == bg)
                    labels[hit] = gts[i][1][idx[hit]]
                loss = self._prior_conf_loss(conf[i], labels)
                chosen = []
                for idx, ov in m.values():
                    elig = np.flatnonzero((idx == -1) & (ov < p.neg_overlap))
                    n = min(int(np.sum(idx > -1) * np.float32(p.neg_pos_ratio)),
                            len(elig))
                    order = np.argsort(-loss[elig], kind="stable")[:n]
                    chosen.append(elig[order])
                neg = np.unique(np.concatenate(chosen))
            matches.append(m)
            negatives.append(neg)
        self._matches, self._negatives = matches, negatives
        self._N, self._P = N, P

        # Localisation: gather matched predictions and encoded targets.
        pos = [(i, 0 if p.share_location else label, j, idx[j])
               for i, m in enumerate(matches)
               for label, (idx, _) in m.items()
               for j in np.flatnonzero(idx > -1)]
        self.num_matches = len(pos)
        loc_loss = 0.0
        if pos:
            ii, ll, jj, gg = (np.array(v) for v in zip(*pos))
            pred = loc[ii, jj, ll].astype(np.float64)
            gt_boxes = np.stack([gts[i][0][g] for i, g in zip(ii, gg)])
            target = bbox.encode(priors[jj], var[jj], p.code_type,
                                 p.encode_variance_in_target, gt_boxes)
            if p.encode_variance_in_target:
                if np.any(var[jj] <= 0):
                    raise LayerError(self, "prior variances must be > 0")
                pred, target = pred / var[jj], target / var[jj]
            d = pred - target
            if p.loc_loss_type == _MBL.SMOOTH_L1:
                f, self._loc_grad = _smooth_l1(d)
                loc_loss = float(f.sum())
            else:
                loc_loss, self._loc_grad = 0.5 * float(np.sum(d * d)), d
            self._loc_index = (ii, jj, ll)

        # Confidence: rows and targets.
        rows, targets = self._conf_rows(conf, gts, matches, negatives)
        self._conf_index = rows
        conf_loss = 0.0
        if rows is not None and len(targets):
            x = conf.reshape(-1, self.C)[rows] if self.mining != _MBL.NONE \
                else conf.reshape(-1, self.C)
            if p.conf_loss_type == _MBL.SOFTMAX:
                losses, prob = _log_softmax_loss(x, targets)
                conf_loss = float(losses.sum())
                prob[np.arange(len(x)), targets] -= 1
                self._conf_grad = prob
            else:
                conf_loss = float(_sigmoid_ce(x, targets).sum())
                self._conf_grad = 1 / (1 + np.exp(-x)) - targets
        else:
            self._conf_grad = None
        norm = self._normalizer(N, P, self.num_matches)
        self._norm = norm
        loss = 0.0
        if self.use_loc:
            loss += p.loc_weight * loc_loss / norm
        if self.use_conf:
            loss += conf_loss / norm
        top[0].data[...] = loss

    def _conf_rows(self, conf, gts, matches, negatives):
        """Flat (image*P + prior) rows and their targets (EncodeConfPrediction):
        ints for SOFTMAX, (rows, C) one-hot arrays for LOGISTIC."""
        p, N, P, C = self.p, self._N, self._P, self.C
        bg = p.background_label_id
        logistic = p.conf_loss_type == _MBL.LOGISTIC

        def label_of(i, g):
            return bg + 1 if p.map_object_to_agnostic else int(gts[i][1][g])
        if self.mining == _MBL.NONE:
            if logistic:
                # NOTE(caffe): weiliu89 advances the target pointer by P per
                # image, so image i's targets start at flat offset i*P.
                t = np.full(N * P * C, float(bg))
                for i, m in enumerate(matches):
                    for idx, _ in m.values():
                        for j in np.flatnonzero(idx > -1):
                            t[i * P + j * C + label_of(i, idx[j])] = 1
                return np.arange(N * P), t.reshape(N * P, C)
            t = np.full((N, P), bg, np.int64)
            for i, m in enumerate(matches):
                for idx, _ in m.values():
                    for j in np.flatnonzero(idx > -1):
                        t[i, j] = label_of(i, idx[j])
            return np.arange(N * P), t.reshape(-1)
        rows, labels = [], []
        for i, m in enumerate(matches):
            if i not in gts:
                continue
            pos = sorted((j, k) for k, (idx, _) in enumerate(m.values())
                         for j in np.flatnonzero(idx > -1))
            idxs = list(m.values())
            for j, k in pos:
                rows.append(i * P + j)
                labels.append(label_of(i, idxs[k][0][j]))
            for j in negatives[i]:
                rows.append(i * P + j)
                labels.append(bg)
        rows = np.array(rows, np.int64)
        labels = np.array(labels, np.int64)
        if not logistic:
            return rows, labels
        t = np.full((len(rows), C), float(bg))
        ok = (labels >= 0) & (labels < C)
        t[np.flatnonzero(ok), labels[ok]] = 1
        return rows, t

    def backward(self, top, propagate_down, bottom):
        N, P = self._N, self._P
        scale = float(top[0].diff) / self._norm
        if propagate_down[0]:
            diff = np.zeros((N, P, self.loc_classes, 4), self.dtype)
            if self.num_matches:
                # NOTE(caffe): no 1/variance factor with encode_variance_in_target.
                diff[self._loc_index] = self._loc_grad * (self.p.loc_weight * scale)
            bottom[0].diff[...] = diff.reshape(bottom[0].shape)
        if propagate_down[1]:
            diff = np.zeros((N * P, self.C), self.dtype)
            if self._conf_grad is not None:
                diff[self._conf_index] = self._conf_grad * scale
            bottom[1].diff[...] = diff.reshape(bottom[1].shape)
        if propagate_down[2] or propagate_down[3]:
            raise LayerError(self, "cannot backpropagate to priors or ground truth")
