"""Fork layers the corpus needs beyond fork.py: SNN's SeLuDropout and
ParseNet's UnPooling, ParseOutput and ParseEvaluate.

These forks' sources are not in the reference set (ParseNet's caffe.proto was
never found; see docs/fork-fields.md), so the semantics below are the ones the
papers and the published prototxts imply, and each docstring says which parts
are unverified.
"""

import numpy as np

from .. import rng as _rng
from ..errors import LayerError
from ..layer import Layer, NeuronLayer, register
from ..proto import caffe_pb2


@register("SeLuDropout")
class SeLuDropoutLayer(NeuronLayer):
    """Alpha dropout (Klambauer et al. 2017), the dropout of SELU nets.

    TRAIN: keep each element with probability q = 1 - dropout_ratio, set the
    dropped ones to alpha' (the SELU's negative saturation, default -1.7581),
    then apply the affine map that restores zero mean and unit variance:
    y = a * (x * m + alpha' * (1 - m)) + b with
    a = (q + alpha'^2 q (1 - q))^-1/2 and b = -a (1 - q) alpha';
    dx = dy * a * m.  TEST: y = x, dx = dy.

    Shape: top has the bottom's shape; may run in place.  Supports
    selu_dropout_param.{dropout_ratio, alpha}.  Masks come from protonet's
    generator (`protonet.rng`).

    Mirrors: src/caffe/layers/selu_dropout_layer.cpp (soeaver/caffe SNN;
    unverified against its source: the formulas are the paper's).
    """

    def setup(self, bottom, top):
        p = self.param.selu_dropout_param
        if not 0 <= p.dropout_ratio < 1:
            raise LayerError(self, "selu_dropout_param.dropout_ratio must be "
                             f"in [0, 1), got {p.dropout_ratio}")
        q, alpha = 1.0 - p.dropout_ratio, p.alpha
        self.q, self.alpha = q, alpha
        self.a = (q + alpha * alpha * q * (1 - q)) ** -0.5
        self.b = -self.a * (1 - q) * alpha

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self._mask = np.empty(bottom[0].shape, self.dtype)

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.phase != caffe_pb2.TRAIN:
            if y is not x:
                y[...] = x
            return
        m = self._mask
        np.less(_rng.generator().random(m.shape, dtype=np.float32), self.q, out=m)
        # x * m + alpha * (1 - m) == (x - alpha) * m + alpha.
        y[...] = self.a * ((x - self.alpha) * m + self.alpha) + self.b

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        if self.phase != caffe_pb2.TRAIN:
            if bottom[0].diff is not dy:
                bottom[0].diff[...] = dy
            return
        bottom[0].diff[...] = dy * self._mask * self.dtype.type(self.a)


@register("UnPooling")
class UnPoolingLayer(Layer):
    """ParseNet's global unpooling: replicate a pooled map back to a size.

    With two bottoms and unpool REP, bottom[0] (N, C, 1, 1) -- the global
    context feature -- is repeated over the spatial size of bottom[1]
    (N, *, H, W): y[n, c, h, w] = x[n, c, 0, 0];
    dx[n, c] = sum over (h, w) of dy[n, c, h, w].

    Shape: (N, C, H, W) with H, W from bottom[1].  Supports
    unpooling_param.unpool REP without out_kernel_* / out_pad_* (the global
    form ParseNet publishes; out_stride is then unused); MAX / AVE unpooling
    and explicit kernels raise UnsupportedError.

    Mirrors: src/caffe/layers/unpooling_layer.cpp (ParseNet, weiliu89/caffe
    fcn branch; unverified against its source).
    """

    exact_num_bottom = 2
    exact_num_top = 1
    force_backward_ok = False

    def setup(self, bottom, top):
        p = self.param.unpooling_param
        if p.unpool != caffe_pb2.UnPoolingParameter.REP:
            raise self.unsupported("unpooling_param.unpool",
                                   caffe_pb2.UnPoolingParameter.UnPoolMethod.Name(p.unpool))
        # The global form has no kernel (out_stride is then meaningless).
        for field in ("out_kernel_size", "out_kernel_h", "out_kernel_w",
                      "out_pad", "out_pad_h", "out_pad_w"):
            if getattr(p, field):
                raise self.unsupported(f"unpooling_param.{field}",
                                       getattr(p, field))

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottom, top):
        x, ref = bottom[0].shape, bottom[1].shape
        if len(x) != 4 or x[2:] != (1, 1) or len(ref) != 4 or ref[0] != x[0]:
            raise LayerError(self, "expects bottom[0] (N, C, 1, 1) and "
                             f"bottom[1] (N, *, H, W); got {x} and {ref}")
        top[0].reshape(x[:2] + ref[2:])

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.sum(axis=(2, 3), keepdims=True)


@register("ParseOutput")
class ParseOutputLayer(Layer):
    """The predicted label map: y[n, 0, h, w] = argmax over c of x[n, c, h, w].

    Ties go to the lowest channel.  A second top, when given, holds the
    winning score.

    Shape: (N, 1, H, W) per top.  No backward.

    Mirrors: src/caffe/layers/parse_output_layer.cpp (ParseNet; unverified
    against its source).
    """

    exact_num_bottom = 1
    min_top = 1
    max_top = 2

    def reshape(self, bottom, top):
        s = bottom[0].shape
        if len(s) != 4:
            raise LayerError(self, f"expects a 4-D bottom (N, C, H, W), got {s}")
        for t in top:
            t.reshape((s[0], 1) + s[2:])

    def forward(self, bottom, top):
        x = bottom[0].data
        top[0].data[...] = x.argmax(axis=1)[:, None]
        if len(top) > 1:
            top[1].data[...] = x.max(axis=1, keepdims=True)


@register("ParseEvaluate")
class ParseEvaluateLayer(Layer):
    """Per-class segmentation counts for mean IU / pixel accuracy.

    Bottoms: predicted labels (N, 1, H, W) and ground truth of the same
    shape.  For every class k < num_labels the top holds
    [pixels labelled k in both, pixels predicted k, pixels of ground truth k],
    over pixels whose ground truth is not an ignore_label.

    Shape: (1, num_labels, 1, 3).  Supports parse_evaluate_param.{num_labels,
    ignore_label (repeated)}.  No backward.

    Mirrors: src/caffe/layers/parse_evaluate_layer.cpp (ParseNet; the layout
    of the counts is unverified against its source).
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.parse_evaluate_param
        if p.num_labels < 1:
            raise LayerError(self, "parse_evaluate_param.num_labels must be "
                             f"positive, got {p.num_labels}")
        self.num_labels = p.num_labels
        self.ignore = np.array(sorted(p.ignore_label), dtype=np.int64)

    def reshape(self, bottom, top):
        if bottom[0].shape != bottom[1].shape:
            raise LayerError(self, "predictions and labels must have one "
                             f"shape, got {bottom[0].shape} and {bottom[1].shape}")
        top[0].reshape((1, self.num_labels, 1, 3))

    def forward(self, bottom, top):
        k = self.num_labels
        pred = bottom[0].data.astype(np.int64).ravel()
        gt = bottom[1].data.astype(np.int64).ravel()
        keep = ~np.isin(gt, self.ignore)
        pred, gt = pred[keep], gt[keep]
        both = np.bincount(gt[(pred == gt) & (gt >= 0) & (gt < k)], minlength=k)
        npred = np.bincount(pred[(pred >= 0) & (pred < k)], minlength=k)
        ngt = np.bincount(gt[(gt >= 0) & (gt < k)], minlength=k)
        top[0].data[0, :, 0] = np.stack([both[:k], npred[:k], ngt[:k]], axis=1)
