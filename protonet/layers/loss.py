"""Loss layers, and Accuracy.

Every loss layer writes a 0-axis top (shape ()) whose diff is the loss weight,
set once at setup (see `protonet.layer.LossLayer`); backward reads that weight
from `top[0].diff`, as Caffe does, so it scales every bottom gradient.

Label bottoms hold class indices stored as floats; like Caffe's
`static_cast<int>`, they are truncated towards zero.
"""

import numpy as np

from ..errors import LayerError
from ..layer import Layer, LossLayer, register
from ..ops import softmax
from ..proto import caffe_pb2

_NORM = caffe_pb2.LossParameter
# NOTE(caffe): SoftmaxWithLoss clips probabilities at FLT_MIN before the log
# (whatever Dtype is); the other probability losses use kLOG_THRESHOLD.
_FLT_MIN = float(np.finfo(np.float32).tiny)
_LOG_THRESHOLD = 1e-20


# -- helpers shared by the label losses ---------------------------------------
def _normalization(layer, default=_NORM.VALID):
    """The NormalizationMode of `loss_param`, honouring the legacy `normalize`.

    `normalization` wins when set; otherwise `normalize: true` means VALID and
    `normalize: false` BATCH_SIZE; with neither, `default`.
    """
    lp = layer.param.loss_param
    if lp.HasField("normalization"):
        return lp.normalization
    if lp.HasField("normalize"):
        return _NORM.VALID if lp.normalize else _NORM.BATCH_SIZE
    return default


def _normalizer(mode, outer, inner, valid_count):
    """Caffe's LossLayer::GetNormalizer: the divisor of the summed loss."""
    if mode == _NORM.FULL:
        n = outer * inner
    elif mode == _NORM.VALID:
        n = valid_count
    elif mode == _NORM.BATCH_SIZE:
        n = outer
    else:  # NONE
        n = 1
    # NOTE(caffe): never divide by less than one (e.g. all labels ignored).
    return max(1.0, float(n))


def _ignore_label(layer, param):
    return param.ignore_label if param.HasField("ignore_label") else None


def _read_labels(layer, label_blob, shape, num_classes, ignore):
    """Integer labels reshaped to `shape`, and the mask of counted labels.

    Raises:
        LayerError: a label that is not ignored lies outside [0, num_classes).
    """
    lab = label_blob.data.reshape(shape).astype(np.int64)
    valid = np.ones(shape, bool) if ignore is None else lab != ignore
    bad = valid & ((lab < 0) | (lab >= num_classes))
    if bad.any():
        raise LayerError(layer, f"label {int(lab[bad][0])} is out of range: "
                         f"expected a class in [0, {num_classes})"
                         + ("" if ignore is None else
                            f" or ignore_label {ignore}"))
    return np.where(valid, lab, 0), valid


def _split_axis(layer, bottom, label_blob, axis):
    """(outer, C, inner) around `axis`; checks the label count."""
    axis = layer.canonical_axis(bottom, axis)
    outer = bottom.count_range(0, axis)
    inner = bottom.count_range(axis + 1)
    if label_blob.count != outer * inner:
        raise LayerError(layer, f"number of labels must match the number of "
                         f"predictions: with axis {axis}, a prediction of "
                         f"shape {bottom.shape} needs {outer * inner} labels "
                         f"(outer x inner), got label shape "
                         f"{label_blob.shape}")
    return axis, outer, bottom.shape[axis], inner


def _no_label_backward(layer, propagate_down, first=1):
    for i in range(first, len(propagate_down)):
        if propagate_down[i]:
            raise LayerError(layer, f"cannot backpropagate to bottom {i} "
                             "(labels / constant input)")


def _loss_weight(top):
    return float(top[0].diff)


def _num(blob):
    return blob.shape[0] if blob.num_axes else 1


# -- SoftmaxWithLoss ----------------------------------------------------------
@register("SoftmaxWithLoss", v1="SOFTMAX_LOSS")
class SoftmaxWithLossLayer(LossLayer):
    """Multinomial logistic loss of the softmax of the scores.

    With p = softmax(x) along `axis` and labels y at every (outer, inner)
    position: loss = -sum_valid log(max(p[y], FLT_MIN)) / normaliser;
    d loss / dx = (p - onehot(y)) * loss_weight / normaliser, zero at ignored
    positions.

    Shape:
        bottom[0]: scores (..., C, ...) with C at `softmax_param.axis`.
        bottom[1]: labels, outer x inner values (any shape of that count).
        top[0]: () loss.  top[1] (optional): the probabilities, like bottom[0].

    Supports `softmax_param.axis`, `loss_param.ignore_label`,
    `loss_param.normalization` (FULL, VALID, BATCH_SIZE, NONE) and the legacy
    `loss_param.normalize` (false = BATCH_SIZE when `normalization` is unset).

    Mirrors: src/caffe/layers/softmax_loss_layer.cpp.
    """

    exact_num_top = None
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        self.ignore = _ignore_label(self, self.param.loss_param)
        self.mode = _normalization(self)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.axis, self.outer, self.C, self.inner = _split_axis(
            self, bottom[0], bottom[1], self.param.softmax_param.axis)
        self.prob = np.empty((self.outer, self.C, self.inner), self.dtype)
        if len(top) > 1:
            top[1].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.prob.shape)
        softmax(x, axis=1, out=self.prob)
        self.lab, self.valid = _read_labels(
            self, bottom[1], (self.outer, self.inner), self.C, self.ignore)
        p = np.take_along_axis(self.prob, self.lab[:, None, :], axis=1)[:, 0]
        loss = -np.sum(np.log(np.maximum(p, _FLT_MIN))[self.valid])
        self.norm = _normalizer(self.mode, self.outer, self.inner,
                                int(self.valid.sum()))
        top[0].data[...] = loss / self.norm
        if len(top) > 1:
            top[1].data[...] = self.prob.reshape(bottom[0].shape)

    def backward(self, top, propagate_down, bottom):
        _no_label_backward(self, propagate_down)
        if not propagate_down[0]:
            return
        dx = bottom[0].diff.reshape(self.prob.shape)
        np.copyto(dx, self.prob)
        o, i = np.nonzero(self.valid)
        dx[o, self.lab[o, i], i] -= 1
        dx *= self.valid[:, None, :]
        dx *= _loss_weight(top) / self.norm


# -- EuclideanLoss ------------------------------------------------------------
@register("EuclideanLoss", v1="EUCLIDEAN_LOSS")
class EuclideanLossLayer(LossLayer):
    """Half the mean squared distance: loss = sum((a - b)^2) / (2 N).

    Gradients: da = (a - b) * w / N and db = -(a - b) * w / N (w = loss
    weight); both bottoms are differentiable.

    Shape:
        bottom[0], bottom[1]: (N, ...) with equal counts past axis 0.
        top[0]: ().

    Mirrors: src/caffe/layers/euclidean_loss_layer.cpp.
    """

    def allow_force_backward(self, bottom_index):
        return True

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise LayerError(self, f"inputs must have the same dimension, got "
                             f"shapes {bottom[0].shape} and {bottom[1].shape}")
        self.diff = np.empty(bottom[0].shape, self.dtype)

    def forward(self, bottom, top):
        np.subtract(bottom[0].data, bottom[1].data.reshape(self.diff.shape),
                    out=self.diff)
        d = self.diff.reshape(-1)
        top[0].data[...] = np.dot(d, d) / _num(bottom[0]) / 2

    def backward(self, top, propagate_down, bottom):
        scale = _loss_weight(top) / _num(bottom[0])
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                np.multiply(self.diff.reshape(bottom[i].shape), sign * scale,
                            out=bottom[i].diff)


# -- SigmoidCrossEntropyLoss --------------------------------------------------
@register("SigmoidCrossEntropyLoss", v1="SIGMOID_CROSS_ENTROPY_LOSS")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Cross-entropy of sigmoid(x) against targets t in [0, 1].

    Per element, in the overflow-free form:
    l = -(x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0]))); the loss is the
    sum over counted elements / normaliser; dx = (sigmoid(x) - t) * w / norm.

    Shape:
        bottom[0]: scores (N, ...).  bottom[1]: targets of the same count.
        top[0]: ().

    Supports `loss_param.ignore_label` (targets equal to it, after truncation
    to int, are skipped) and `loss_param.normalization`.
    NOTE(caffe): unlike SoftmaxWithLoss, the default without `normalization`
    and `normalize` is BATCH_SIZE (divide by N), BVLC master's behaviour.

    Mirrors: src/caffe/layers/sigmoid_cross_entropy_loss_layer.cpp.
    """

    def setup(self, bottom, top):
        self.ignore = _ignore_label(self, self.param.loss_param)
        self.mode = _normalization(self, default=_NORM.BATCH_SIZE)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise LayerError(self, f"inputs must have the same count, got "
                             f"shapes {bottom[0].shape} and {bottom[1].shape}")
        self.sig = np.empty(bottom[0].shape, self.dtype)

    def forward(self, bottom, top):
        x = bottom[0].data
        t = bottom[1].data.reshape(x.shape)
        pos = (x >= 0).astype(self.dtype)
        per = x * (t - pos) - np.log1p(np.exp(x - 2 * x * pos))
        outer = _num(bottom[0])
        if self.ignore is None:
            self.valid = None
            loss, count = -np.sum(per), x.size
        else:
            self.valid = t.astype(np.int64) != self.ignore
            loss, count = -np.sum(per[self.valid]), int(self.valid.sum())
        self.norm = _normalizer(self.mode, outer, x.size // max(outer, 1),
                                count)
        top[0].data[...] = loss / self.norm
        # sigmoid(x) = 0.5 tanh(0.5 x) + 0.5, exact in float at both tails.
        np.multiply(x, 0.5, out=self.sig)
        np.tanh(self.sig, out=self.sig)
        self.sig *= 0.5
        self.sig += 0.5

    def backward(self, top, propagate_down, bottom):
        _no_label_backward(self, propagate_down)
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        np.subtract(self.sig, bottom[1].data.reshape(dx.shape), out=dx)
        if self.valid is not None:
            dx *= self.valid
        dx *= _loss_weight(top) / self.norm


# -- HingeLoss ----------------------------------------------------------------
@register("HingeLoss", v1="HINGE_LOSS")
class HingeLossLayer(LossLayer):
    """One-vs-all hinge loss for N x K scores and N class labels.

    With s_nk = -x_nk if k = y_n else x_nk and m = max(0, 1 + s):
    L1: loss = sum(m) / N, dx = sign(m) * (-1 at k = y_n) * w / N;
    L2: loss = sum(m^2) / N, dx = 2 m * (-1 at k = y_n) * w / N.

    Shape:
        bottom[0]: (N, ...) scores, flattened to K = count / N classes.
        bottom[1]: N labels.  top[0]: ().

    Supports `hinge_loss_param.norm` (L1, L2).

    Mirrors: src/caffe/layers/hinge_loss_layer.cpp.
    """

    def setup(self, bottom, top):
        self.norm = self.param.hinge_loss_param.norm

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        N = _num(bottom[0])
        if bottom[1].count != N:
            raise LayerError(self, f"expected one label per item ({N}), got "
                             f"label shape {bottom[1].shape} for scores of "
                             f"shape {bottom[0].shape}")
        self.margin = np.empty((N, bottom[0].count // max(N, 1)), self.dtype)

    def forward(self, bottom, top):
        N, K = self.margin.shape
        self.lab, _ = _read_labels(self, bottom[1], (N,), K, None)
        m = self.margin
        m[...] = bottom[0].data.reshape(m.shape)
        rows = np.arange(N)
        m[rows, self.lab] *= -1
        m += 1
        np.maximum(m, 0, out=m)
        loss = np.sum(m) if self.norm == caffe_pb2.HingeLossParameter.L1 \
            else np.dot(m.reshape(-1), m.reshape(-1))
        top[0].data[...] = loss / N

    def backward(self, top, propagate_down, bottom):
        _no_label_backward(self, propagate_down)
        if not propagate_down[0]:
            return
        N, _ = self.margin.shape
        dx = bottom[0].diff.reshape(self.margin.shape)
        scale = _loss_weight(top) / N
        if self.norm == caffe_pb2.HingeLossParameter.L1:
            np.sign(self.margin, out=dx)
            dx *= scale
        else:
            np.multiply(self.margin, 2 * scale, out=dx)
        dx[np.arange(N), self.lab] *= -1


# -- InfogainLoss -------------------------------------------------------------
@register("InfogainLoss", v1="INFOGAIN_LOSS")
class InfogainLossLayer(LossLayer):
    """Infogain-weighted log loss of the softmax of the scores (BVLC master).

    With p = softmax(x) along `axis` (C classes), a C x C matrix H and label
    y at each (outer, inner) position:
    loss = -sum_valid sum_c H[y, c] log(max(p_c, 1e-20)) / normaliser;
    dx_c = (p_c * sum_k H[y, k] - H[y, c]) * w / normaliser (0 where ignored).
    With H = identity this is SoftmaxWithLoss.

    Shape:
        bottom[0]: scores with C at `infogain_loss_param.axis`.
        bottom[1]: outer x inner labels.
        bottom[2] (optional): H, C*C values; else read from
        `infogain_loss_param.source` (a .binaryproto).
        top[0]: ().  top[1] (optional): the probabilities.

    Supports `infogain_loss_param.source` / `axis`, `loss_param.ignore_label`,
    `loss_param.normalization` and `normalize`.  `softmax_param.axis`, if
    given, must equal `infogain_loss_param.axis`.

    Mirrors: src/caffe/layers/infogain_loss_layer.cpp (BVLC master; the
    pre-2017 form took probabilities and had no axis / ignore_label).
    """

    exact_num_bottom = None
    min_bottom = 2
    max_bottom = 3
    exact_num_top = None
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        from ..io import read_binaryproto
        self.ignore = _ignore_label(self, self.param.loss_param)
        self.mode = _normalization(self)
        ip = self.param.infogain_loss_param
        sp = self.param.softmax_param
        if sp.HasField("axis") and sp.axis != ip.axis:
            raise self.unsupported("softmax_param.axis", sp.axis)
        self.H_file = None
        if len(bottom) < 3:
            if not ip.source:
                raise LayerError(self, "infogain matrix source must be "
                                 "specified (infogain_loss_param.source) "
                                 "when there is no third bottom")
            self.H_file = read_binaryproto(ip.source).astype(self.dtype)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.axis, self.outer, self.C, self.inner = _split_axis(
            self, bottom[0], bottom[1], self.param.infogain_loss_param.axis)
        H = self.H_file if self.H_file is not None else bottom[2].data
        if H.size != self.C * self.C:
            raise LayerError(self, f"infogain matrix must have {self.C}x"
                             f"{self.C} = {self.C * self.C} values for "
                             f"{self.C} classes, got shape {H.shape}")
        self.prob = np.empty((self.outer, self.C, self.inner), self.dtype)
        if len(top) > 1:
            top[1].reshape(bottom[0].shape)

    def _H(self, bottom):
        H = self.H_file if self.H_file is not None else bottom[2].data
        return H.reshape(self.C, self.C)

    def forward(self, bottom, top):
        softmax(bottom[0].data.reshape(self.prob.shape), axis=1, out=self.prob)
        self.lab, self.valid = _read_labels(
            self, bottom[1], (self.outer, self.inner), self.C, self.ignore)
        rows = self._H(bottom)[self.lab]                 # (outer, inner, C)
        logp = np.log(np.maximum(self.prob, _LOG_THRESHOLD))
        loss = -np.einsum("oic,oci,oi->", rows, logp, self.valid)
        self.norm = _normalizer(self.mode, self.outer, self.inner,
                                int(self.valid.sum()))
        top[0].data[...] = loss / self.norm
        if len(top) > 1:
            top[1].data[...] = self.prob.reshape(bottom[0].shape)

    def backward(self, top, propagate_down, bottom):
        _no_label_backward(self, propagate_down)
        if not propagate_down[0]:
            return
        H = self._H(bottom)
        rows = H[self.lab].transpose(0, 2, 1)            # (outer, C, inner)
        row_sums = H.sum(axis=1)[self.lab][:, None, :]   # (outer, 1, inner)
        dx = self.prob * row_sums - rows
        dx *= self.valid[:, None, :]
        dx *= _loss_weight(top) / self.norm
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)


# -- MultinomialLogisticLoss --------------------------------------------------
@register("MultinomialLogisticLoss", v1="MULTINOMIAL_LOGISTIC_LOSS")
class MultinomialLogisticLossLayer(LossLayer):
    """Log loss of given probabilities: loss = -sum_n log(max(p[n, y_n],
    1e-20)) / N; dp[n, y_n] = -w / (N max(p[n, y_n], 1e-20)), 0 elsewhere.

    Shape:
        bottom[0]: (N, ...) probabilities, flattened to count / N classes.
        bottom[1]: N labels.  top[0]: ().

    Mirrors: src/caffe/layers/multinomial_logistic_loss_layer.cpp.
    """

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        N = _num(bottom[0])
        if bottom[1].count != N:
            raise LayerError(self, f"expected one label per item ({N}), got "
                             f"label shape {bottom[1].shape} for "
                             f"probabilities of shape {bottom[0].shape}")
        self.N, self.K = N, bottom[0].count // max(N, 1)

    def forward(self, bottom, top):
        self.lab, _ = _read_labels(self, bottom[1], (self.N,), self.K, None)
        p = bottom[0].data.reshape(self.N, self.K)[np.arange(self.N), self.lab]
        self.p = np.maximum(p, _LOG_THRESHOLD)
        top[0].data[...] = -np.sum(np.log(self.p)) / self.N

    def backward(self, top, propagate_down, bottom):
        _no_label_backward(self, propagate_down)
        if not propagate_down[0]:
            return
        dp = bottom[0].diff.reshape(self.N, self.K)
        dp[...] = 0
        dp[np.arange(self.N), self.lab] = -_loss_weight(top) / self.N / self.p


# -- ContrastiveLoss ----------------------------------------------------------
@register("ContrastiveLoss", v1="CONTRASTIVE_LOSS")
class ContrastiveLossLayer(LossLayer):
    """Siamese contrastive loss over pairs (a_n, b_n) with similarity s_n.

    With d_n = ||a_n - b_n||: loss = sum_n L_n / (2 N), where
    L_n = d_n^2 if s_n else max(margin - d_n, 0)^2, or, with legacy_version,
    max(margin - d_n^2, 0) for dissimilar pairs.
    Gradients, with g = w / N (w = loss weight), for a (b gets the negative):
    similar: g (a - b); dissimilar: -g (margin - d) / (d + 1e-4) (a - b) when
    margin > d (legacy: -g (a - b) when margin > d^2), else 0.

    Shape:
        bottom[0], bottom[1]: (N, C) features (or (N, C, 1, 1)), same shape.
        bottom[2]: N similarity labels (non-zero after truncation = similar).
        top[0]: ().

    Supports `contrastive_loss_param.margin` and `legacy_version`.

    Mirrors: src/caffe/layers/contrastive_loss_layer.cpp.
    """

    exact_num_bottom = 3

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        N = _num(bottom[0])
        if bottom[0].shape != bottom[1].shape:
            raise LayerError(self, f"the two feature bottoms must have the "
                             f"same shape, got {bottom[0].shape} and "
                             f"{bottom[1].shape}")
        if bottom[2].count != N:
            raise LayerError(self, f"expected one similarity label per pair "
                             f"({N}), got shape {bottom[2].shape}")
        self.diff = np.empty((N, bottom[0].count // max(N, 1)), self.dtype)

    def forward(self, bottom, top):
        cp = self.param.contrastive_loss_param
        N = self.diff.shape[0]
        np.subtract(bottom[0].data.reshape(self.diff.shape),
                    bottom[1].data.reshape(self.diff.shape), out=self.diff)
        self.dist_sq = np.einsum("nc,nc->n", self.diff, self.diff)
        self.sim = bottom[2].data.reshape(N).astype(np.int64) != 0
        if cp.legacy_version:
            dissim = np.maximum(cp.margin - self.dist_sq, 0)
        else:
            dissim = np.maximum(cp.margin - np.sqrt(self.dist_sq), 0) ** 2
        loss = np.sum(np.where(self.sim, self.dist_sq, dissim))
        top[0].data[...] = loss / N / 2

    def backward(self, top, propagate_down, bottom):
        _no_label_backward(self, propagate_down, first=2)
        cp = self.param.contrastive_loss_param
        N = self.diff.shape[0]
        if cp.legacy_version:
            active = cp.margin - self.dist_sq > 0
            beta = -1.0 * active
        else:
            dist = np.sqrt(self.dist_sq)
            mdist = cp.margin - dist
            # NOTE(caffe): divides by d + 1e-4, not d (~1e-4 relative error).
            beta = np.where(mdist > 0, -mdist / (dist + 1e-4), 0.0)
        coef = np.where(self.sim, 1.0, beta).astype(self.dtype)
        g = _loss_weight(top) / N
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                dx = bottom[i].diff.reshape(self.diff.shape)
                np.multiply(self.diff, (sign * g * coef)[:, None], out=dx)


# -- Accuracy -----------------------------------------------------------------
@register("Accuracy", v1="ACCURACY")
class AccuracyLayer(Layer):
    """Top-k classification accuracy (forward only).

    A position counts as correct when fewer than `top_k` classes score at
    least as high as the true class (BVLC master's `>=` count; the fork
    behind the golden data ranks with partial_sort, which differs on ties
    only). accuracy = correct / counted (0 when nothing is counted).

    Shape:
        bottom[0]: scores with C classes at `accuracy_param.axis`.
        bottom[1]: outer x inner labels.
        top[0]: () accuracy.  top[1] (optional): (C,) per-class accuracy,
        0 for classes absent from the (counted) labels.

    Supports `accuracy_param.top_k`, `axis` and `ignore_label`.

    Mirrors: src/caffe/layers/accuracy_layer.cpp.
    """

    exact_num_bottom = 2
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        ap = self.param.accuracy_param
        self.top_k = ap.top_k
        self.ignore = _ignore_label(self, ap)

    def reshape(self, bottom, top):
        if self.top_k > bottom[0].count // max(bottom[1].count, 1):
            raise LayerError(self, f"top_k ({self.top_k}) must be at most the "
                             f"number of classes; scores {bottom[0].shape}, "
                             f"labels {bottom[1].shape}")
        self.axis, self.outer, self.C, self.inner = _split_axis(
            self, bottom[0], bottom[1], self.param.accuracy_param.axis)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.C,))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.outer, self.C, self.inner)
        lab, valid = _read_labels(self, bottom[1], (self.outer, self.inner),
                                  self.C, self.ignore)
        true_score = np.take_along_axis(x, lab[:, None, :], axis=1)
        # Classes scoring >= the true class, the true class excluded.
        better = np.count_nonzero(x >= true_score, axis=1) - 1
        correct = valid & (better < self.top_k)
        count = int(valid.sum())
        top[0].data[...] = correct.sum() / count if count else 0.0
        if len(top) > 1:
            seen = np.bincount(lab[valid], minlength=self.C)
            hits = np.bincount(lab[correct], minlength=self.C)
            top[1].data[...] = np.divide(hits, seen, out=np.zeros(self.C),
                                         where=seen > 0)
