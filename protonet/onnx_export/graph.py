"""The ONNX graph under construction and the context one layer converts in.

`Graph` collects nodes and initializers with unique names; `LayerContext`
hands a converter its layer, the ONNX names and static shapes of its bottoms
and the names its tops must get, and helpers that respect a dynamic batch
axis.  Converters live in the `convert_*` modules and register with
`@converter("Type", ...)`.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..errors import UnsupportedError

CONVERTERS = {}


def converter(*types):
    """Register `fn(ctx)` as the ONNX form of the Caffe layer `types`."""
    def deco(fn):
        for t in types:
            if t in CONVERTERS:
                raise ValueError(f"two ONNX converters for layer type {t}")
            CONVERTERS[t] = fn
        return fn
    return deco


class NotExportable(UnsupportedError):
    """A layer (or one of its settings) has no exact ONNX form."""


class Graph:
    """Nodes, initializers and a name pool for one ONNX graph."""

    def __init__(self, opset):
        self.opset = opset
        self.nodes = []
        self.initializers = []
        self._names = set()

    def reserve(self, name):
        self._names.add(name)
        return name

    def fresh(self, hint):
        """A name not used yet, `hint` itself when free."""
        name, k = hint, 1
        while name in self._names:
            name, k = f"{hint}_{k}", k + 1
        return self.reserve(name)

    def const(self, hint, value, dtype=np.float32):
        """An initializer holding `value` (cast to `dtype`)."""
        arr = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, hint, values):
        return self.const(hint, np.asarray(values, np.int64), np.int64)

    def op(self, op_type, inputs, outputs=None, hint=None, n_out=1, **attrs):
        """Add a node; returns its output name (or list when n_out > 1)."""
        hint = hint or op_type
        if outputs is None:
            outputs = [self.fresh(f"{hint}_out" if n_out == 1 else f"{hint}_out{i}")
                       for i in range(n_out)]
        node = helper.make_node(op_type, list(inputs), list(outputs),
                                name=self.fresh(f"{hint}/{op_type}"), **attrs)
        self.nodes.append(node)
        return outputs[0] if len(outputs) == 1 else list(outputs)


class LayerContext:
    """What a converter sees of one Caffe layer.

    Attributes:
        layer: the built protonet layer (its attributes hold the resolved
            geometry: kernel, pad, axis ...); `layer.param` its LayerParameter.
        x: ONNX names of the bottoms; shapes: their static shapes.
        top_shapes: static shapes of the tops; tops: the ONNX names the
            converter must give its outputs (via `out(i)`).
        dynamic: True when axis 0 of the graph inputs is symbolic.
    """

    def __init__(self, graph, layer, x, shapes, tops, top_shapes, dynamic,
                 top_data):
        self.g, self.layer, self.param = graph, layer, layer.param
        self.x, self.shapes = x, shapes
        self.tops, self.top_shapes = tops, top_shapes
        self.dynamic = dynamic
        self.top_data = top_data      # callable: the layer's forward result
        self.aliases = {}             # top index -> existing ONNX name

    @property
    def name(self):
        return self.layer.name

    def out(self, i=0):
        return self.tops[i]

    def alias(self, i, value):
        """Top i is `value` itself (Split, Dropout in TEST, ...)."""
        self.aliases[i] = value

    def op(self, op_type, inputs, top=None, **attrs):
        """A node; `top` = i writes top i, None a fresh intermediate."""
        outputs = None if top is None else [self.tops[top]]
        return self.g.op(op_type, inputs, outputs, hint=self.name, **attrs)

    def const(self, value, hint="c", dtype=np.float32):
        return self.g.const(f"{self.name}/{hint}", value, dtype)

    def ints(self, values, hint="shape"):
        return self.g.ints(f"{self.name}/{hint}", values)

    def fail(self, why):
        return NotExportable(self.layer, f"no exact ONNX form: {why}")

    def reshape(self, value, in_shape, out_shape, top=None, keeps_batch=None):
        """Reshape to the static `out_shape`, keeping a symbolic batch.

        With a dynamic batch the target's axis 0 is written as 0 (copy the
        input's axis 0), which is only right when the layer keeps the batch
        on axis 0 (`keeps_batch`; by default: both shapes start alike)."""
        target = list(out_shape)
        if keeps_batch is None:
            keeps_batch = bool(in_shape and target and in_shape[0] == target[0])
        if self.dynamic:
            if not keeps_batch:
                raise self.fail(f"it moves the batch axis ({tuple(in_shape)} -> "
                                f"{tuple(out_shape)}); export with a fixed --batch")
            target[0] = 0
        return self.op("Reshape", [value, self.ints(target)], top=top)

    def no_batch_axis(self, axis, what):
        if self.dynamic and axis == 0:
            raise self.fail(f"{what} along the batch axis; export with a fixed "
                            "--batch")


def value_info(name, shape, dynamic):
    """A float32 graph input/output of `shape` (axis 0 symbolic if dynamic)."""
    dims = list(shape)
    if dynamic and dims:
        dims[0] = "N"
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)
