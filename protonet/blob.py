"""Blob: an N-D array of data with a same-shaped array of gradients (diff).

Mirrors: include/caffe/blob.hpp.  `data` and `diff` are NumPy arrays; `diff`
is allocated on first use, so nets that never run backward never pay for it.
Reshaping to the same element count keeps the memory (and any sharing);
a different count allocates zero-filled arrays, as Caffe does.

A diff can be cleared lazily (`clear_diff_lazily`, what a solver step does
through `Net.clear_param_diffs(lazy=True)`): it reads as zeros from then on,
but its memory is only zeroed when something reads it, unless a layer that
assigns every element first asks for it with `diff_for_write`
(InnerProduct's weight gradient: CaffeNet's fc weight gradients are no
longer zeroed, then read and added to, in a training step).
"""

import math

import numpy as np

from .errors import ProtonetError
from .limits import check_allocation

MAX_BLOB_AXES = 32


def _as_shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, np.ndarray)):
        shape = tuple(shape[0])
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ProtonetError(f"blob shape must be integers, got {shape!r}") from None
    if len(shape) > MAX_BLOB_AXES:
        raise ProtonetError(f"blob shape {shape} has more than {MAX_BLOB_AXES} axes")
    if any(d < 0 for d in shape):
        raise ProtonetError(f"blob shape {shape} has a negative dimension")
    return shape


class Blob:
    """Data and diff of one named activation or parameter.

    Attributes:
        data: ndarray of `shape` (float32 unless the net was built in float64).
        diff: ndarray of `shape`, the gradient of the loss w.r.t. `data`.
    """

    __slots__ = ("_data", "_diff", "_diff_zero", "dtype", "__weakref__")

    def __init__(self, shape=(), dtype=np.float32):
        self.dtype = np.dtype(dtype)
        shape = _as_shape((shape,)) if not isinstance(shape, tuple) \
            else _as_shape(shape)
        check_allocation(shape, self.dtype.itemsize)
        self._data = np.zeros(shape, self.dtype)
        self._diff = None
        self._diff_zero = False  # a lazy clear is pending (see the module)

    # -- data / diff ------------------------------------------------------
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        """Replace the data array (used to share memory between blobs)."""
        value = np.asarray(value)
        if value.shape != self._data.shape and value.size == self._data.size:
            value = value.reshape(self._data.shape)
        self._data = value
        if self._diff is not None and self._diff.shape != value.shape:
            self._diff = None

    @property
    def diff(self):
        if self._diff is None:
            self._diff = np.zeros(self._data.shape, self.dtype)
            self._diff_zero = False
        elif self._diff_zero:
            self._diff[...] = 0
            self._diff_zero = False
        return self._diff

    @diff.setter
    def diff(self, value):
        self._diff = np.asarray(value)
        self._diff_zero = False

    def clear_diff_lazily(self):
        """Make the diff read as zeros without writing its memory now (see
        the module docstring).  Only for a blob no other Blob shares the
        diff memory of: those would not see the pending clear."""
        if self._diff is not None:
            self._diff_zero = True

    def diff_for_write(self):
        """``(diff, fresh)``: the diff array and whether it is logically all
        zeros with a lazy clear pending.  A caller given ``fresh=True`` must
        assign every element (it takes the clear over); otherwise it adds to
        the array as usual."""
        if self._diff is None or self._diff_zero:
            if self._diff is None:
                self._diff = np.empty(self._data.shape, self.dtype)
            self._diff_zero = False
            return self._diff, True
        return self._diff, False

    @property
    def has_diff(self):
        return self._diff is not None

    # -- shape ------------------------------------------------------------
    @property
    def shape(self):
        return self._data.shape

    @property
    def count(self):
        return self._data.size

    @property
    def num_axes(self):
        return self._data.ndim

    # Legacy 4-D accessors (pycaffe's blob.num etc.).
    def _legacy(self, i):
        if self.num_axes > 4:
            raise ProtonetError(f"legacy accessor on a {self.num_axes}-D blob")
        return self.shape[i] if i < self.num_axes else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def count_range(self, start, end=None):
        end = self.num_axes if end is None else end
        return math.prod(self.shape[start:end])     # Python ints: no wrap

    def canonical_axis(self, axis):
        """Caffe's CanonicalAxisIndex: negative axes count from the end."""
        n = self.num_axes
        if not -n <= axis < max(n, 1):
            raise ProtonetError(f"axis {axis} out of range for a {n}-D blob "
                                f"of shape {self.shape}")
        return axis + n if axis < 0 else axis

    def reshape(self, *shape):
        """Reshape; same element count keeps memory, otherwise zero-filled."""
        shape = _as_shape(shape)
        if shape == self._data.shape:
            return
        count = math.prod(shape)       # Python ints: no int64 wrap-around
        if count == self._data.size:
            self._data = self._data.reshape(shape)
            if self._diff is not None:
                self._diff = self._diff.reshape(shape)
        else:
            check_allocation(shape, self.dtype.itemsize)  # before np.zeros
            self._data = np.zeros(shape, self.dtype)
            self._diff = None
            self._diff_zero = False

    def reshape_like(self, other):
        self.reshape(other.shape)

    def share_data(self, other):
        """Make this blob's data a view of `other`'s (Caffe's ShareData)."""
        self._data = other.data.reshape(self.shape) \
            if other.count == self.count else other.data
        if self._diff is not None and self._diff.shape != self._data.shape:
            self._diff = None

    def rows(self, s, diff=False):
        """A Blob whose data (and, with `diff`, diff) are the views
        ``[s]`` of this one's: no copy (the batch split's slices)."""
        v = Blob.__new__(Blob)
        v.dtype = self.dtype
        v._data = self._data[s]
        v._diff = self.diff[s] if diff else None
        v._diff_zero = False
        return v

    def share_diff(self, other):
        self._diff = other.diff.reshape(self.shape)
        self._diff_zero = False

    def __repr__(self):
        return f"Blob(shape={self.shape}, dtype={self.dtype.name})"
