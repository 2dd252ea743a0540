"""Affine layers: Scale (y = x * s [+ b]) and Bias (y = x + b).

Both broadcast an operand -- a learned parameter blob or a second bottom --
over bottom[0]: the operand's shape must equal bottom[0].shape[axis:axis+k]
for its k axes, so bottom[0] is viewed as (outer, D, inner) with
outer = prod(shape[:axis]), D = operand.count, inner = prod(shape[axis+k:]).
A 0-axis (scalar) operand always uses axis 0, whatever `axis` says.
"""

import numpy as np

from .. import threads
from ..errors import LayerError
from ..layer import Layer, register
from ..proto import caffe_pb2


def _learned_shape(layer, bottom, axis, num_axes, field):
    """Shape bottom.shape[axis:axis+num_axes] of a learned operand blob
    (num_axes -1: up to the last axis)."""
    axis = layer.canonical_axis(bottom, axis, f"{field}.axis")
    if num_axes < -1:
        raise LayerError(layer, f"{field}.num_axes must be >= 0, or -1 to "
                         f"extend to the end of bottom[0]; got {num_axes}")
    if num_axes >= 0 and axis + num_axes > bottom.num_axes:
        raise LayerError(layer, f"{field}: a blob of {num_axes} axes starting "
                         f"at axis {axis} extends past bottom[0]'s shape "
                         f"{bottom.shape}")
    end = bottom.num_axes if num_axes == -1 else axis + num_axes
    return bottom.shape[axis:end]


def _learned_operand_separable(layer, bottom):
    """Bias/Scale split over the batch when the operand is a learned blob
    that does not span the batch axis (a scalar, or `outer` covers axis 0);
    a second bottom is not sliced with the batch."""
    return len(bottom) == 1 and (layer.blobs[0].count == 1 or
                                 layer.dims[0] >= bottom[0].shape[0])


def _broadcast_dims(layer, bottom, operand_shape, axis, what):
    """(outer, D, inner) of bottom for an operand of `operand_shape` applied
    from `axis`; checks the shapes agree."""
    k = len(operand_shape)
    axis = 0 if k == 0 else layer.canonical_axis(bottom, axis)
    if bottom.shape[axis:axis + k] != tuple(operand_shape):
        raise LayerError(layer, f"{what} of shape {tuple(operand_shape)} does "
                         f"not match bottom[0] shape {bottom.shape} at axes "
                         f"{axis}..{axis + k - 1}")
    outer = int(np.prod(bottom.shape[:axis], dtype=np.int64))
    D = int(np.prod(operand_shape, dtype=np.int64))
    inner = int(np.prod(bottom.shape[axis + k:], dtype=np.int64))
    return outer, D, inner


@register("Bias")
class BiasLayer(Layer):
    """Adds a bias broadcast over bottom[0]: y = x + b.

    The bias is a learned blob (one bottom; shape bottom[0].shape[axis:
    axis+num_axes], filled by `filler`, default constant 0) or bottom[1]
    (any shape matching bottom[0] from `axis`).

    Gradients: dx = dy; db = sum of dy over the outer and inner axes
    (accumulated into the parameter, assigned to bottom[1]).

    Shape:
        top: bottom[0].shape.

    Fields: bias_param.axis, num_axes (-1 = to the end; 0 = scalar), filler.
    May run in place.

    Mirrors: src/caffe/layers/bias_layer.cpp
    """

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.bias_param
        if len(bottom) == 1:
            shape = _learned_shape(self, bottom[0], p.axis, p.num_axes,
                                   "bias_param")
            self.add_param_blob(shape, p.filler if p.HasField("filler") else None)

    def batch_separable(self, bottom):
        return _learned_operand_separable(self, bottom)

    def reshape(self, bottom, top):
        b = bottom[1] if len(bottom) > 1 else self.blobs[0]
        self.dims = _broadcast_dims(self, bottom[0], b.shape,
                                    self.param.bias_param.axis, "bias")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        b = bottom[1] if len(bottom) > 1 else self.blobs[0]
        outer, D, inner = self.dims
        x = bottom[0].data.reshape(outer, D, inner)
        y = top[0].data.reshape(outer, D, inner)
        np.add(x, b.data.reshape(1, D, 1), out=y)

    def backward(self, top, propagate_down, bottom):
        outer, D, inner = self.dims
        dy = top[0].diff
        if len(bottom) == 1:
            if self.param_propagate_down[0]:
                db = dy.reshape(outer, D, inner).sum(axis=(0, 2))
                self.blobs[0].diff += db.reshape(self.blobs[0].shape)
        elif propagate_down[1]:
            db = dy.reshape(outer, D, inner).sum(axis=(0, 2))
            bottom[1].diff[...] = db.reshape(bottom[1].shape)
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].diff[...] = dy


@register("Scale")
class ScaleLayer(Layer):
    """Multiplies bottom[0] by a scale broadcast over it: y = x * s [+ b].

    The scale is a learned blob (one bottom; shape bottom[0].shape[axis:
    axis+num_axes], filled by `filler`, default constant 1) or bottom[1].
    With `bias_term` a learned bias of the scale's shape is added (filled by
    `bias_filler`, default constant 0); it is the last parameter blob.

    Gradients: dx = dy * s; ds = sum of dy * x over the outer and inner axes
    (accumulated into the parameter, assigned to bottom[1]); db = sum of dy.

    Shape:
        top: bottom[0].shape.

    Fields: scale_param.axis, num_axes (-1 = to the end; 0 = scalar), filler,
    bias_term, bias_filler. May run in place (bottom[0] is saved for the
    scale gradient).

    Mirrors: src/caffe/layers/scale_layer.cpp
    """

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.scale_param
        if len(bottom) == 1:
            shape = _learned_shape(self, bottom[0], p.axis, p.num_axes,
                                   "scale_param")
            filler = p.filler if p.HasField("filler") else \
                caffe_pb2.FillerParameter(type="constant", value=1.0)
            self.add_param_blob(shape, filler)
        self.bias_index = None
        if p.bias_term:
            # NOTE(caffe): Caffe builds an inner Bias layer on bottom[0] whose
            # num_axes is the scale's (bottom[1]'s axis count with 2 bottoms).
            num_axes = bottom[1].num_axes if len(bottom) > 1 else p.num_axes
            shape = _learned_shape(self, bottom[0], p.axis, num_axes,
                                   "scale_param")
            self.add_param_blob(shape, p.bias_filler
                                if p.HasField("bias_filler") else None)
            self.bias_index = len(self.blobs) - 1
        self.saved_bottom = None

    def _scale(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def batch_separable(self, bottom):
        return _learned_operand_separable(self, bottom)

    def reshape(self, bottom, top):
        axis = self.param.scale_param.axis
        self.dims = _broadcast_dims(self, bottom[0], self._scale(bottom).shape,
                                    axis, "scale")
        if self.bias_index is not None:
            self.bias_dims = _broadcast_dims(
                self, bottom[0], self.blobs[self.bias_index].shape, axis, "bias")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        outer, D, inner = self.dims
        x = bottom[0].data
        if top[0] is bottom[0] and not self.forward_only:
            # In place: keep x for the scale gradient.
            if self.saved_bottom is None or self.saved_bottom.shape != x.shape:
                self.saved_bottom = np.empty_like(x)
            self.saved_bottom[...] = x
        y = top[0].data.reshape(outer, D, inner)
        x3 = x.reshape(outer, D, inner)
        scale = self._scale(bottom).data.reshape(1, D, 1)
        bias = None
        if self.bias_index is not None:
            bo, bD, bi = self.bias_dims
            yb = top[0].data.reshape(bo, bD, bi)
            bias = self.blobs[self.bias_index].data.reshape(1, bD, 1)
        if bias is not None and (bo, bD, bi) == (outer, D, inner):
            def part(s):  # y = x * scale + bias, outer rows over threads
                np.multiply(x3[s], scale, out=y[s])
                y[s] += bias
            threads.over_rows(outer, part, x.size)
            return
        np.multiply(x3, scale, out=y)
        if bias is not None:
            yb += bias

    def backward(self, top, propagate_down, bottom):
        outer, D, inner = self.dims
        dy = top[0].diff
        if self.bias_index is not None and \
                self.param_propagate_down[self.bias_index]:
            bo, bD, bi = self.bias_dims
            bias = self.blobs[self.bias_index]
            bias.diff += dy.reshape(bo, bD, bi).sum(axis=(0, 2)).reshape(bias.shape)
        learned = len(bottom) == 1
        scale = self._scale(bottom)
        if (learned and self.param_propagate_down[0]) or \
                (not learned and propagate_down[1]):
            x = self.saved_bottom if top[0] is bottom[0] else bottom[0].data
            ds = np.einsum("odi,odi->d", dy.reshape(outer, D, inner),
                           x.reshape(outer, D, inner)).reshape(scale.shape)
            if learned:
                scale.diff += ds
            else:
                scale.diff[...] = ds
        if propagate_down[0]:
            dx = dy.reshape(outer, D, inner) * scale.data.reshape(1, D, 1)
            bottom[0].diff[...] = dx.reshape(bottom[0].shape)
