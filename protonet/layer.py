"""The Layer contract and the layer registry.

Mirrors: include/caffe/layer.hpp and include/caffe/layer_factory.hpp.

A layer is built from its `LayerParameter` only.  The net calls, in order:

* `set_up(bottom, top)` once: checks the number of bottoms and tops, calls
  `setup` (read `self.param.<x>_param`, create and fill `self.blobs`), then
  `reshape`, then sets the loss weights of the tops;
* `reshape(bottom, top)` before every forward: top shapes, scratch buffers;
* `forward(bottom, top)`: writes `top[i].data` (with `self.forward_only`
  set, no backward follows it: state kept only for backward may be skipped);
* `backward(top, propagate_down, bottom)`: assigns `bottom[i].diff` where
  `propagate_down[i]`, and adds into `self.blobs[j].diff` (a layer with
  `lazy_param_clear` may assign one whole right after the solver's clear,
  see `Blob.diff_for_write`).

Subclasses declare their blob counts with the class attributes below and are
registered with `@register("CaffeType", v1="V1_ENUM_NAME")`.
"""

import numpy as np

from .blob import Blob
from .errors import LayerError, UnsupportedError

_REGISTRY = {}
_V1_NAMES = {}


def register(type_name, v1=None, aliases=()):
    """Class decorator adding a layer class to the registry under `type_name`.

    Raises:
        ValueError: the name is already registered (a programming error).
    """
    def deco(cls):
        for name in (type_name, *aliases):
            if name in _REGISTRY:
                raise ValueError(f"layer type {name!r} registered twice "
                                 f"({_REGISTRY[name].__name__} and {cls.__name__})")
            _REGISTRY[name] = cls
        if v1 is not None:
            _V1_NAMES[v1] = type_name
        if getattr(cls, "type", None) is None or cls.__dict__.get("type") is None:
            cls.type = type_name
        return cls
    return deco


def _load_builtin_layers():
    from . import layers  # noqa: F401  (registers every built-in layer)


def layer_type_list():
    """The sorted list of registered layer type names."""
    _load_builtin_layers()
    return sorted(_REGISTRY)


def v1_type_name(enum_name):
    """The V2 type name for a V1 enum name such as 'CONVOLUTION'."""
    _load_builtin_layers()
    return _V1_NAMES.get(enum_name)


def create_layer(param, dtype=np.float32):
    """Instantiate the registered layer for `param.type`.

    Raises:
        LayerError: unknown type; names the layer and lists the known types.
    """
    _load_builtin_layers()
    cls = _REGISTRY.get(param.type)
    if cls is None:
        raise LayerError(None, f"Unknown layer type: '{param.type}' (layer "
                         f"'{param.name}'); known types: "
                         f"{', '.join(sorted(_REGISTRY))}")
    return cls(param, dtype=dtype)


class Layer:
    """Base class of every layer; see the module docstring for the contract."""

    type = None
    # Blob-count checks (None = no constraint), as Caffe's ExactNumBottomBlobs...
    exact_num_bottom = None
    min_bottom = None
    max_bottom = None
    exact_num_top = None
    min_top = None
    max_top = None
    equal_num_bottom_top = False
    # A loss layer: its first top gets loss_weight 1 unless told otherwise.
    is_loss = False
    # Tops Caffe's net may create automatically when too few are named.
    auto_top_blobs = False
    # Whether backward into bottom i may be forced (False for labels/indices).
    force_backward_ok = True
    # Backward takes every parameter diff from its Blob at each call (never
    # an array kept from before), so the solver may clear them lazily (see
    # Net.clear_param_diffs); with Blob.diff_for_write a diff it assigns
    # whole is then never zeroed (InnerProduct's weight gradient).
    lazy_param_clear = False

    def __init__(self, param, dtype=np.float32):
        self.param = param
        self.name = param.name
        self.phase = param.phase
        self.dtype = np.dtype(dtype)
        self.blobs = []
        self.loss_weights = []
        # Per parameter blob: does this layer compute its gradient?
        self.param_propagate_down = []
        # Set by the net around a forward that no backward can follow (a
        # memory="inference" forward): a layer may skip what only its
        # backward needs (Pooling's argmax, LRN's scale).
        self.forward_only = False

    # -- the contract -----------------------------------------------------
    def setup(self, bottom, top):
        """Read parameters, create and fill `self.blobs` (once)."""

    def reshape(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__}.reshape")

    def forward(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, top, propagate_down, bottom):
        """Default: no gradient (like Caffe's NOT_IMPLEMENTED for data layers)."""
        if any(propagate_down):
            raise UnsupportedError(self, "this layer has no backward pass")

    def allow_force_backward(self, bottom_index):
        return self.force_backward_ok

    def batch_separable(self, bottom):
        """True when image n of every top (and of every bottom diff)
        depends on image n of the bottoms alone, without random numbers, and
        every bottom and top has the batch on axis 0: the net may then run
        this layer as clones on slices of the batch (protonet/batch_split.py).
        Called after `reshape`.  Default: False."""
        return False

    # -- framework --------------------------------------------------------
    def set_up(self, bottom, top):
        self.check_blob_counts(bottom, top)
        self.setup(bottom, top)
        self.reshape(bottom, top)
        self.set_loss_weights(top)
        if len(self.param_propagate_down) != len(self.blobs):
            self.param_propagate_down = [True] * len(self.blobs)

    def check_blob_counts(self, bottom, top):
        nb, nt = len(bottom), len(top)

        def fail(what, want, got):
            raise LayerError(self, f"takes {want} {what} blob(s), got {got}")
        if self.exact_num_bottom is not None and nb != self.exact_num_bottom:
            fail("bottom", self.exact_num_bottom, nb)
        if self.min_bottom is not None and nb < self.min_bottom:
            fail("bottom", f"at least {self.min_bottom}", nb)
        if self.max_bottom is not None and nb > self.max_bottom:
            fail("bottom", f"at most {self.max_bottom}", nb)
        if self.exact_num_top is not None and nt != self.exact_num_top:
            fail("top", self.exact_num_top, nt)
        if self.min_top is not None and nt < self.min_top:
            fail("top", f"at least {self.min_top}", nt)
        if self.max_top is not None and nt > self.max_top:
            fail("top", f"at most {self.max_top}", nt)
        if self.equal_num_bottom_top and nb != nt:
            raise LayerError(self, f"needs as many tops as bottoms, got {nb} "
                             f"bottom(s) and {nt} top(s)")

    def set_loss_weights(self, top):
        """Caffe's SetLossWeights: top diff := loss weight, once at setup."""
        weights = list(self.param.loss_weight)
        if weights and len(weights) != len(top):
            raise LayerError(self, f"loss_weight must be given once per top "
                             f"({len(top)}), got {len(weights)}")
        if not weights:
            weights = [1.0 if (self.is_loss and i == 0) else 0.0
                       for i in range(len(top))]
        self.loss_weights = weights
        for w, t in zip(weights, top):
            if w != 0:
                t.diff[...] = w

    def loss(self, top):
        """The weighted loss of this layer's tops after forward."""
        total = 0.0
        for w, t in zip(self.loss_weights, top):
            if w != 0:
                total += w * float(np.sum(t.data, dtype=np.float64))
        return total

    # -- helpers for subclasses ------------------------------------------
    def new_blob(self, shape):
        return Blob(tuple(shape), self.dtype)

    def add_param_blob(self, shape, filler=None):
        """Append a parameter blob of `shape`, filled by `filler` (a
        FillerParameter; None = constant 0)."""
        from .fillers import fill
        blob = self.new_blob(shape)
        fill(blob, filler, layer=self)
        self.blobs.append(blob)
        return blob

    def canonical_axis(self, blob, axis, field="axis"):
        n = blob.num_axes
        if not -n <= axis < max(n, 1):
            raise LayerError(self, f"{field} {axis} is out of range for a "
                             f"{n}-D bottom of shape {blob.shape}")
        return axis + n if axis < 0 else axis

    def unsupported(self, field, value=None):
        detail = f" = {value!r}" if value is not None else ""
        return UnsupportedError(self, f"unsupported field {field}{detail}")

    def __repr__(self):
        return f"<{type(self).__name__} '{self.name}'>"


class NeuronLayer(Layer):
    """One bottom, one top of the same shape; may run in place."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)


class LossLayer(Layer):
    """Two bottoms (predictions, targets); a scalar loss top.

    NOTE(caffe): the loss top has zero axes (shape ()), and its diff is the
    loss weight, set once at setup.
    """

    exact_num_bottom = 2
    exact_num_top = 1
    is_loss = True

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def reshape(self, bottom, top):
        if bottom[0].shape[0] != bottom[1].shape[0]:
            raise LayerError(self, f"predictions and targets must have the "
                             f"same first dimension, got {bottom[0].shape} and "
                             f"{bottom[1].shape}")
        top[0].reshape(())
