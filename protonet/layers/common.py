"""Common layers: graph plumbing, inner products, element-wise arithmetic."""

import numpy as np

from ..layer import Layer, register


@register("Split", v1="SPLIT")
class SplitLayer(Layer):
    """Copies one bottom to several tops (sharing its data); backward sums
    the tops' diffs.  Inserted by the net wherever a blob fans out.

    Mirrors: src/caffe/layers/split_layer.cpp.
    """

    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        for t in top:
            if t is not bottom[0]:
                t.reshape(bottom[0].shape)
                t.share_data(bottom[0])

    def forward(self, bottom, top):
        for t in top:
            if t.data is not bottom[0].data:
                t.share_data(bottom[0])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if len(top) == 1:
            np.copyto(dx, top[0].diff)
            return
        np.add(top[0].diff, top[1].diff, out=dx)
        for t in top[2:]:
            dx += t.diff


@register("Silence", v1="SILENCE")
class SilenceLayer(Layer):
    """Consumes bottoms so they are not net outputs; no tops.

    Backward sets the bottoms' diffs to zero.

    Mirrors: src/caffe/layers/silence_layer.cpp.
    """

    min_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, p in zip(bottom, propagate_down):
            if p:
                b.diff[...] = 0
