"""Shape layers: Concat, Slice, Flatten, Reshape, Tile.

Flatten and Reshape (and Concat with one bottom, Slice with one top) make the
top a view of the bottom's data, as Caffe's ShareData does.  The view is
re-made at every reshape and forward because the bottom's producer may have
reallocated its array.  Gradients are copied back (reshaped) in backward.
"""

import math

import numpy as np

from ..errors import LayerError
from ..layer import Layer, register


def _share_reshaped(top, bottom, shape):
    """Make `top` a view of `bottom`'s data with `shape` (no copy)."""
    top.reshape(shape)
    top.share_data(bottom)


def _no_in_place(layer, bottom, top):
    if top[0] is bottom[0]:
        raise LayerError(layer, "does not allow in-place computation (top "
                         f"'{layer.param.top[0]}' is its bottom)")


def _legacy_axis(layer, bottom, param, legacy_field, kind):
    """The canonical axis from `axis` or the legacy `<kind>_dim` field."""
    if param.HasField(legacy_field):
        if param.HasField("axis"):
            raise LayerError(layer, f"{kind}_param: give either axis or "
                             f"{legacy_field}, not both")
        axis = getattr(param, legacy_field)
        if axis >= bottom.num_axes:
            raise LayerError(layer, f"{kind}_param.{legacy_field} {axis} is out "
                             f"of range for a {bottom.num_axes}-D bottom of "
                             f"shape {bottom.shape}")
        return axis
    return layer.canonical_axis(bottom, param.axis, f"{kind}_param.axis")


@register("Concat", v1="CONCAT")
class ConcatLayer(Layer):
    """Joins its bottoms along one axis.

    Gradient: each bottom receives its slice of the top's diff.

    Shape: every bottom must have the same number of axes and the same size
    on every axis but `axis`; the top's size there is the sum of theirs.  A
    single bottom is passed through (the top shares its data).

    Supported concat_param fields: axis (default 1, may be negative) or the
    legacy concat_dim (non-negative), not both.

    Mirrors: src/caffe/layers/concat_layer.cpp.
    """

    min_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        p = self.param.concat_param
        axis = _legacy_axis(self, bottom[0], p, "concat_dim", "concat")
        ref = bottom[0].shape
        for i, b in enumerate(bottom[1:], 1):
            if b.num_axes != len(ref) or \
                    b.shape[:axis] + b.shape[axis + 1:] != ref[:axis] + ref[axis + 1:]:
                raise LayerError(self, f"every bottom must have the shape of "
                                 f"bottom 0 except on axis {axis}: bottom 0 is "
                                 f"{ref}, bottom {i} is {b.shape}")
        self.axis = axis
        self.sizes = [b.shape[axis] for b in bottom]
        shape = list(ref)
        shape[axis] = sum(self.sizes)
        if len(bottom) == 1:
            _no_in_place(self, bottom, top)
            _share_reshaped(top[0], bottom[0], shape)
        else:
            top[0].reshape(shape)

    def batch_separable(self, bottom):
        return len(bottom) > 1 and self.axis >= 1  # one bottom: a shared view

    def forward(self, bottom, top):
        if len(bottom) == 1:
            top[0].share_data(bottom[0])
            return
        np.concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        start = 0
        for b, size, prop in zip(bottom, self.sizes, propagate_down):
            if prop:
                index = [slice(None)] * self.axis + [slice(start, start + size)]
                np.copyto(b.diff, dy[tuple(index)])
            start += size


@register("Slice", v1="SLICE")
class SliceLayer(Layer):
    """Cuts its bottom along one axis into several tops.

    Without slice_point the axis is split into len(top) equal parts; with
    len(top) - 1 increasing slice points, top i covers
    [point_{i-1}, point_i) (point_{-1} = 0, the last ends at the axis size).
    Gradient: the tops' diffs are put back side by side.

    Shape: tops equal the bottom except on `axis`.  A single top is passed
    through (it shares the bottom's data).

    Supported slice_param fields: axis (default 1, may be negative) or the
    legacy slice_dim (non-negative), not both; slice_point.

    Mirrors: src/caffe/layers/slice_layer.cpp.
    """

    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        p = self.param.slice_param
        x = bottom[0]
        axis = _legacy_axis(self, x, p, "slice_dim", "slice")
        dim = x.shape[axis]
        points = list(p.slice_point)
        if points:
            if len(points) != len(top) - 1:
                raise LayerError(self, f"slice_param.slice_point must give "
                                 f"len(top) - 1 = {len(top) - 1} points, got "
                                 f"{len(points)}")
            bounds = [0] + points + [dim]
            if any(a >= b for a, b in zip(bounds, bounds[1:])):
                raise LayerError(self, f"slice points {points} must increase "
                                 f"strictly within (0, {dim}) (axis {axis} of "
                                 f"bottom shape {x.shape})")
        else:
            if dim % len(top):
                raise LayerError(self, f"cannot split axis {axis} of size {dim} "
                                 f"(bottom shape {x.shape}) into {len(top)} "
                                 "equal parts; give slice_point")
            step = dim // len(top)
            bounds = list(range(0, dim + 1, step))
        self.axis = axis
        self.bounds = bounds
        for t, lo, hi in zip(top, bounds, bounds[1:]):
            shape = list(x.shape)
            shape[axis] = hi - lo
            if len(top) == 1:
                _no_in_place(self, bottom, top)
                _share_reshaped(t, x, shape)
            else:
                t.reshape(shape)

    def _index(self, lo, hi):
        return tuple([slice(None)] * self.axis + [slice(lo, hi)])

    def forward(self, bottom, top):
        if len(top) == 1:
            top[0].share_data(bottom[0])
            return
        x = bottom[0].data
        for t, lo, hi in zip(top, self.bounds, self.bounds[1:]):
            np.copyto(t.data, x[self._index(lo, hi)])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        for t, lo, hi in zip(top, self.bounds, self.bounds[1:]):
            np.copyto(dx[self._index(lo, hi)], t.diff)


class _ViewLayer(Layer):
    """One bottom, one top viewing the bottom's data in another shape."""

    exact_num_bottom = 1
    exact_num_top = 1

    def top_shape(self, bottom):
        raise NotImplementedError

    def setup(self, bottom, top):
        _no_in_place(self, bottom, top)

    def reshape(self, bottom, top):
        _share_reshaped(top[0], bottom[0], self.top_shape(bottom[0]))

    def forward(self, bottom, top):
        top[0].share_data(bottom[0])

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            np.copyto(bottom[0].diff, top[0].diff.reshape(bottom[0].shape))


@register("Flatten", v1="FLATTEN")
class FlattenLayer(_ViewLayer):
    """Merges the axes axis..end_axis (inclusive) into one; no data copy.

    Shape: (d0, ..., d_{axis-1}, prod(d_axis..d_end_axis), d_{end_axis+1}, ...);
    the default (axis 1, end_axis -1) gives (N, C*H*W).

    Supported flatten_param fields: axis, end_axis (both may be negative).

    Mirrors: src/caffe/layers/flatten_layer.cpp.
    """

    def top_shape(self, x):
        p = self.param.flatten_param
        start = self.canonical_axis(x, p.axis, "flatten_param.axis")
        end = self.canonical_axis(x, p.end_axis, "flatten_param.end_axis")
        if end < start:
            raise LayerError(self, f"flatten_param.end_axis ({p.end_axis}) "
                             f"comes before axis ({p.axis}) for bottom shape "
                             f"{x.shape}")
        return x.shape[:start] + (x.count_range(start, end + 1),) + \
            x.shape[end + 1:]


@register("Reshape")
class ReshapeLayer(_ViewLayer):
    """Gives the bottom's data a new shape; no data copy.

    The axes [axis, axis + num_axes) of the bottom are replaced by
    reshape_param.shape, whose dims mean: 0 = copy the bottom's dim at the
    same position (counted from `axis`), -1 = infer from the element count
    (at most one), n > 0 = n.

    NOTE(caffe): a negative `axis` counts insertion points, so -1 means after
    the last axis (start = num_axes + axis + 1), and num_axes: 0 inserts new
    axes without replacing any.

    Shape: bottom.shape[:axis] + new dims + bottom.shape[axis + num_axes:],
    with the same element count as the bottom.

    Supported reshape_param fields: shape, axis, num_axes.

    Mirrors: src/caffe/layers/reshape_layer.cpp.
    """

    def setup(self, bottom, top):
        super().setup(bottom, top)
        dims = list(self.param.reshape_param.shape.dim)
        self.copy_axes = [i for i, d in enumerate(dims) if d == 0]
        inferred = [i for i, d in enumerate(dims) if d == -1]
        bad = [d for d in dims if d < -1]
        if bad or len(inferred) > 1:
            raise LayerError(self, f"reshape_param.shape {dims} may hold "
                             "positive dims, 0 (copy) and at most one -1 "
                             "(infer)")
        self.inferred_axis = inferred[0] if inferred else None
        self.dims = dims

    def top_shape(self, x):
        p = self.param.reshape_param
        n = x.num_axes
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise LayerError(self, f"reshape_param.axis {p.axis} is out of "
                             f"range for a {n}-D bottom of shape {x.shape}")
        if p.num_axes < -1:
            raise LayerError(self, f"reshape_param.num_axes must be >= 0, or "
                             f"-1 for all, got {p.num_axes}")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise LayerError(self, f"reshape_param axis + num_axes = {end} is "
                             f"out of range for a {n}-D bottom of shape "
                             f"{x.shape}")
        new = list(self.dims)
        for i in self.copy_axes:
            if start + i >= n:
                raise LayerError(self, f"reshape_param.shape has a 0 at "
                                 f"position {i} but the bottom {x.shape} has "
                                 f"no axis {start + i} to copy")
            new[i] = x.shape[start + i]
        if self.inferred_axis is not None:
            known = x.count_range(0, start) * x.count_range(end) * \
                math.prod(d for d in new if d != -1)
            if known == 0 or x.count % known:
                raise LayerError(self, f"bottom count {x.count} (shape "
                                 f"{x.shape}) is not divisible by the product "
                                 f"of the specified dims ({known})")
            new[self.inferred_axis] = x.count // known
        shape = x.shape[:start] + tuple(new) + x.shape[end:]
        count = math.prod(shape)    # Python ints: 2^32 x 2^32 is not 0
        if count != x.count:
            raise LayerError(self, f"new shape {shape} has {count} elements "
                             f"but the bottom {x.shape} has {x.count}")
        return shape


@register("Tile")
class TileLayer(Layer):
    """Repeats the bottom `tiles` times along `axis` (whole blocks, like
    np.tile, not element by element).

    Gradient: dx = sum of the top's diff over the tiles.

    Shape: bottom shape with shape[axis] *= tiles.

    Supported tile_param fields: axis (default 1), tiles (required, >= 1).

    Mirrors: src/caffe/layers/tile_layer.cpp.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.tile_param
        if p.tiles < 1:
            raise LayerError(self, f"tile_param.tiles must be at least 1, got "
                             f"{p.tiles}")
        self.tiles = p.tiles
        _no_in_place(self, bottom, top)

    def reshape(self, bottom, top):
        x = bottom[0]
        axis = self.canonical_axis(x, self.param.tile_param.axis,
                                   "tile_param.axis")
        self.outer = x.count_range(0, axis)
        self.inner = x.count_range(axis)
        shape = list(x.shape)
        shape[axis] *= self.tiles
        top[0].reshape(shape)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.outer, 1, self.inner)
        y = top[0].data.reshape(self.outer, self.tiles, self.inner)
        y[...] = x

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = top[0].diff.reshape(self.outer, self.tiles, self.inner)
            np.sum(dy, axis=1, out=bottom[0].diff.reshape(self.outer, self.inner))
