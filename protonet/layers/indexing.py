"""Indexing layers: Embed, Filter and BatchReindex.

Each takes integer indices (stored as floats) or a selector in a bottom that
receives no gradient: Caffe aborts when a gradient is forced into it, and so
do these layers (LayerError naming the bottom).
"""

import numpy as np

from ..errors import LayerError
from ..layer import Layer, register


def _no_gradient_to(layer, propagate_down, index, role):
    if propagate_down[index]:
        raise LayerError(layer, f"cannot backpropagate to bottom[{index}] "
                         f"(the {role}); set propagate_down: false for it")


@register("Embed")
class EmbedLayer(Layer):
    """A lookup table: each index i in the bottom becomes row i of the weights.

        top[..., :] = W[idx[...], :] + b

    Gradients: W.diff[i] += sum of dy over the positions holding index i;
    b.diff += sum of dy over all positions; none to the indices.

    Shape:
        bottom: any shape, integer values in [0, input_dim);
        top: bottom.shape + (num_output,). blobs: W (input_dim, num_output),
        b (num_output,) with bias_term.

    Fields: embed_param.input_dim, num_output, bias_term, weight_filler,
    bias_filler (both default constant 0).

    Mirrors: src/caffe/layers/embed_layer.cpp
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def allow_force_backward(self, bottom_index):
        return False

    def setup(self, bottom, top):
        p = self.param.embed_param
        if p.num_output <= 0:
            raise LayerError(self, f"embed_param.num_output must be positive, "
                             f"got {p.num_output}")
        if p.input_dim <= 0:
            raise LayerError(self, f"embed_param.input_dim must be positive, "
                             f"got {p.input_dim}")
        self.K, self.N = p.input_dim, p.num_output
        self.bias_term = p.bias_term
        self.add_param_blob((self.K, self.N), p.weight_filler)
        if self.bias_term:
            self.add_param_blob((self.N,), p.bias_filler)

    def reshape(self, bottom, top):
        top[0].reshape(tuple(bottom[0].shape) + (self.N,))

    def _indices(self, bottom):
        v = bottom[0].data.reshape(-1)
        idx = v.astype(np.int64)
        bad = (idx != v) | (idx < 0) | (idx >= self.K)
        if bad.any():
            raise LayerError(self, f"indices must be integers in [0, "
                             f"{self.K}) (input_dim), got {float(v[bad][0]):g}")
        return idx

    def forward(self, bottom, top):
        idx = self._indices(bottom)
        y = top[0].data.reshape(-1, self.N)
        np.take(self.blobs[0].data, idx, axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        _no_gradient_to(self, propagate_down, 0, "indices")
        dy = top[0].diff.reshape(-1, self.N)
        if self.param_propagate_down[0]:
            np.add.at(self.blobs[0].diff, self._indices(bottom), dy)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)


@register("Filter")
class FilterLayer(Layer):
    """Keeps the items (along axis 0) whose selector value is nonzero.

    The last bottom is the selector (shape (N,) or (N, 1, ...)); top[i] holds
    the kept items of bottom[i], in order.

    Gradients: bottom[i].diff is top[i].diff scattered back to the kept
    items, zero elsewhere; none to the selector.

    Shape:
        bottom[i]: (N, ...); top[i]: (number kept, ...).
        NOTE(caffe): at setup (selector not yet known) the tops get all N
        items; every later reshape uses the selector.

    Fields: none.

    Mirrors: src/caffe/layers/filter_layer.cpp
    """

    min_bottom = 2
    min_top = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index != self.num_bottom - 1

    def setup(self, bottom, top):
        self.num_bottom = len(bottom)
        if len(top) != len(bottom) - 1:
            raise LayerError(self, f"needs one top per filtered bottom "
                             f"({len(bottom) - 1}), got {len(top)}")
        self.first_reshape = True

    def reshape(self, bottom, top):
        sel = bottom[-1]
        if sel.num_axes == 0 or any(d != 1 for d in sel.shape[1:]):
            raise LayerError(self, f"the selector (last bottom) must have shape "
                             f"(N,) or (N, 1, ...), got {sel.shape}")
        for i, b in enumerate(bottom[:-1]):
            if b.num_axes == 0 or b.shape[0] != sel.shape[0]:
                raise LayerError(self, f"bottom[{i}] of shape {b.shape} must "
                                 f"have the selector's first dimension "
                                 f"{sel.shape[0]}")
        self.keep = np.flatnonzero(sel.data.reshape(-1))
        n = len(self.keep)
        if self.first_reshape:
            n = sel.shape[0]
            self.first_reshape = False
        for b, t in zip(bottom, top):
            t.reshape((n,) + tuple(b.shape[1:]))

    def forward(self, bottom, top):
        for b, t in zip(bottom, top):
            np.take(b.data, self.keep, axis=0, out=t.data)

    def backward(self, top, propagate_down, bottom):
        _no_gradient_to(self, propagate_down, len(bottom) - 1, "selector")
        for i, t in enumerate(top):
            if propagate_down[i]:
                dx = bottom[i].diff
                dx[...] = 0
                dx[self.keep] = t.diff


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """Gathers items of bottom[0] along axis 0: top[j] = bottom[0][idx[j]].

    Indices may repeat or leave items out.

    Gradients: bottom[0].diff[i] = sum of top.diff[j] over j with idx[j] = i
    (zero for unused items); none to the indices.

    Shape:
        bottom[0]: (N, ...); bottom[1]: (M,), values in [0, N) (truncated to
        integers, as Caffe's cast does); top: (M, ...).

    Fields: none.

    Mirrors: src/caffe/layers/batch_reindex_layer.cpp
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def reshape(self, bottom, top):
        if bottom[1].num_axes != 1:
            raise LayerError(self, f"bottom[1] (the indices) must be 1-D, got "
                             f"shape {bottom[1].shape}")
        if bottom[0].num_axes == 0:
            raise LayerError(self, "bottom[0] must have at least one axis")
        top[0].reshape((bottom[1].shape[0],) + tuple(bottom[0].shape[1:]))

    def _indices(self, bottom):
        v = bottom[1].data
        N = bottom[0].shape[0]
        bad = ~((v >= 0) & (v < N))
        if bad.any():
            raise LayerError(self, f"index {float(v[bad][0]):g} in bottom[1] "
                             f"is outside the batch [0, {N})")
        return v.astype(np.int64)

    def forward(self, bottom, top):
        np.take(bottom[0].data, self._indices(bottom), axis=0, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        _no_gradient_to(self, propagate_down, 1, "indices")
        if propagate_down[0]:
            dx = bottom[0].diff
            dx[...] = 0
            np.add.at(dx, self._indices(bottom), top[0].diff)
