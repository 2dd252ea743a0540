"""Turn a built protonet Net into an ONNX model.

The net's layers are walked in order; each becomes ONNX nodes through the
converter registered for its type (convert_*.py).  Weights come from the
net's parameter blobs and shapes from its blobs, so anything protonet builds
can be exported.  Caffe blob names are kept for the graph inputs and
outputs; a blob rewritten in place gets a fresh name for every version but
the last.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, shape_inference

from ..errors import ProtonetError
from . import convert_elem, convert_fork, convert_nn, convert_shape  # noqa: F401
from .graph import CONVERTERS, Graph, LayerContext, NotExportable, value_info

DEFAULT_OPSET = 17
# Layers that no ONNX operator reproduces exactly; cut the graph before them.
_CUT_HINT = {"DetectionOutput", "ROIPooling", "PSROIPooling", "Proposal"}
_MAX_OPSET = 21
_EXTERNAL_BYTES = 1 << 30


def _selected_layers(net, outputs):
    """Indices of the layers the `outputs` blobs need, in order."""
    needed, keep = set(outputs), []
    for i in range(len(net.layers) - 1, -1, -1):
        tops = [net._blob_names[t] for t in net.top_ids[i]]
        if needed.intersection(tops):
            keep.append(i)
            needed.update(net._blob_names[b] for b in net.bottom_ids[i])
    return keep[::-1]


def _check_outputs(net, outputs):
    known = set(net._blob_names)
    for name in outputs:
        if name not in known:
            raise ProtonetError(f"ONNX export: no blob named '{name}' in net "
                                f"'{net.name}' (blobs: {', '.join(net._blob_names)})")


def _unsupported(layer, bottoms):
    why = f"no exact ONNX form: the exporter has no converter for type {layer.type}"
    if layer.type in _CUT_HINT:
        why += (" (its output has no exact ONNX operator); export the graph up "
                f"to its inputs with outputs={','.join(bottoms)}")
    elif layer.type == "Python":
        why += " (a Python layer's code cannot be exported)"
    elif layer.type in ("LSTM", "RNN"):
        why += (" (Caffe's recurrent layers reset their state wherever the "
                "`cont` input is 0; ONNX's LSTM / RNN cannot)")
    return NotExportable(layer, why)


class _Exporter:
    def __init__(self, net, outputs, opset, dynamic):
        self.net, self.opset, self.dynamic = net, opset, dynamic
        self.outputs = list(outputs)
        self.g = Graph(opset)
        self.layers = _selected_layers(net, self.outputs)
        self.current = {}      # Caffe blob name -> ONNX name of its value now
        self.inputs = []
        self._plan_names()

    def _plan_names(self):
        """The last writer of each blob among the exported layers gives it
        the Caffe name; graph inputs keep theirs."""
        net = self.net
        self.last_writer, self.input_names = {}, set()
        for i in self.layers:
            for t in net.top_ids[i]:
                self.last_writer[net._blob_names[t]] = i
                if net.layers[i].type == "Input":
                    self.input_names.add(net._blob_names[t])
        for name in self.last_writer:
            self.g.reserve(name)

    def _top_name(self, i, name):
        if self.last_writer[name] == i and name not in self.input_names:
            return name
        return self.g.fresh(f"{name}/{self.net._layer_names[i]}")

    def run(self):
        net = self.net
        for i in self.layers:
            layer = net.layers[i]
            bnames = [net._blob_names[b] for b in net.bottom_ids[i]]
            tnames = [net._blob_names[t] for t in net.top_ids[i]]
            if layer.type == "Input":
                for name, blob in zip(tnames, net.top_vecs[i]):
                    self.current[name] = name
                    self.inputs.append(value_info(name, blob.shape, self.dynamic))
                continue
            fn = CONVERTERS.get(layer.type)
            if fn is None:
                raise _unsupported(layer, bnames)
            tops = [self._top_name(i, n) for n in tnames]
            ctx = LayerContext(
                self.g, layer, [self.current[b] for b in bnames],
                [tuple(b.shape) for b in net.bottom_vecs[i]], tops,
                [tuple(t.shape) for t in net.top_vecs[i]], self.dynamic,
                lambda i=i: self._forward_layer(i))
            try:
                fn(ctx)
            except ProtonetError:
                raise
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                raise NotExportable(layer, f"export failed: {e!r}") from e
            for j, name in enumerate(tnames):
                alias = ctx.aliases.get(j)
                if alias is not None and tops[j] in self.outputs:
                    self.g.op("Identity", [alias], [tops[j]], hint=layer.name)
                    alias = None
                self.current[name] = alias if alias is not None else tops[j]
        return self._model()

    def _forward_layer(self, i):
        """The layer's tops after a forward of its own (PriorBox reads only
        its bottoms' shapes)."""
        layer = self.net.layers[i]
        layer.forward(self.net.bottom_vecs[i], self.net.top_vecs[i])
        return [t.data.copy() for t in self.net.top_vecs[i]]

    def _model(self):
        outs = []
        for name in self.outputs:
            value = self.current.get(name)
            if value is None or name in self.input_names:
                raise ProtonetError(f"ONNX export: output '{name}' is a graph "
                                    "input (ONNX needs distinct input and "
                                    "output names); choose another blob")
            if value != name:
                self.g.op("Identity", [value], [name], hint=name)
            outs.append(value_info(name, self.net.blobs[name].shape, self.dynamic))
        graph = helper.make_graph(self.g.nodes, self.net.name or "protonet",
                                  self.inputs, outs, self.g.initializers)
        from .. import __version__
        model = helper.make_model(
            graph, producer_name="protonet", producer_version=__version__,
            doc_string=f"Caffe net '{self.net.name}' exported by protonet",
            opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = min(model.ir_version, 10)
        return model


def _resize_inputs(net, batch, input_shapes):
    """Reshape the net's inputs for export; returns the old shapes."""
    old = {n: tuple(net.blobs[n].shape) for n in net.inputs}
    shapes = dict(input_shapes or {})
    for name in shapes:
        if name not in old:
            raise ProtonetError(f"ONNX export: '{name}' is not an input of net "
                                f"'{net.name}' (inputs: {', '.join(net.inputs)})")
    if isinstance(batch, int):
        if batch < 1:
            raise ProtonetError(f"ONNX export: batch must be >= 1, got {batch}")
        for n, s in old.items():
            shapes.setdefault(n, (batch,) + tuple(shapes.get(n, s))[1:])
    if shapes:
        for n, s in shapes.items():
            net.blobs[n].reshape(tuple(int(d) for d in s))
        net.reshape()
    return old if shapes else None


def build_model(net, outputs=None, opset=DEFAULT_OPSET, batch=None,
                input_shapes=None):
    """The ONNX ModelProto of `net` (see `export`)."""
    if not DEFAULT_OPSET <= opset <= _MAX_OPSET:
        raise ProtonetError(f"ONNX export: opset must be in {DEFAULT_OPSET}.."
                            f"{_MAX_OPSET} (onnxruntime's range for the ops "
                            f"used), got {opset}")
    if batch not in (None, "dynamic") and not isinstance(batch, int):
        raise ProtonetError(f"ONNX export: batch must be an int or 'dynamic', "
                            f"got {batch!r}")
    if not outputs:
        # An input no layer reads is one of Caffe's outputs, not the graph's.
        outputs = [o for o in net.outputs if o not in net.inputs]
    _check_outputs(net, outputs)
    old = _resize_inputs(net, batch, input_shapes)
    try:
        model = _Exporter(net, outputs, opset, batch == "dynamic").run()
    finally:
        if old:
            for n, s in old.items():
                net.blobs[n].reshape(s)
            net.reshape()
    validate(model, net if old is None else None)
    return model


def _light_copy(model, limit=4096):
    """`model` with every initializer above `limit` elements turned into a
    graph input of the same shape: the checker and shape inference see the
    same graph without serialising the weights twice more."""
    light = onnx.ModelProto()
    light.ir_version, light.producer_name = model.ir_version, model.producer_name
    light.opset_import.extend(model.opset_import)
    g = model.graph
    big = [t for t in g.initializer if np.prod(t.dims) > limit]
    small = [t for t in g.initializer if np.prod(t.dims) <= limit]
    inputs = list(g.input) + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                              for t in big]
    light.graph.CopyFrom(helper.make_graph(list(g.node), g.name, inputs,
                                           list(g.output), small))
    return light


def validate(model, net=None):
    """onnx.checker plus strict shape inference; with `net`, the inferred
    output shapes must be the net's blob shapes."""
    light = _light_copy(model)
    try:
        onnx.checker.check_model(light)
        inferred = shape_inference.infer_shapes(light, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ProtonetError(f"ONNX export produced an invalid model: {e}") from e
    if net is None:
        return
    for out in inferred.graph.output:
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in out.type.tensor_type.shape.dim]
        want = list(net.blobs[out.name].shape)
        if any(d is not None and d != w for d, w in zip(dims, want)) or \
                len(dims) != len(want):
            raise ProtonetError(f"ONNX export: output '{out.name}' infers to "
                                f"shape {dims}, the net's blob is {want}")


def export(net, path=None, outputs=None, opset=DEFAULT_OPSET, batch=None,
           input_shapes=None):
    """Export a protonet Net to ONNX.

    Args:
        net: a built `protonet.Net` (TEST phase), weights loaded.
        path: where to write the .onnx file (None: only return the model).
        outputs: blob names to export up to (default: the net's outputs);
            cuts off layers with no ONNX form, e.g. SSD's DetectionOutput.
        opset: ONNX opset (17 or later).
        batch: None (the net's batch), an int, or "dynamic" (a symbolic
            batch axis "N").
        input_shapes: {input blob: shape} to export at other input shapes.

    Returns:
        the onnx.ModelProto, checked by onnx.checker and strict shape
        inference.

    Raises:
        ProtonetError naming the layer for a layer with no exact ONNX form.
    """
    model = build_model(net, outputs, opset, batch, input_shapes)
    if path is not None:
        save(model, path)
    return model


def save(model, path):
    """Write `model`; weights past protobuf's 2 GB limit go to PATH.data."""
    path = str(path)
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size < _EXTERNAL_BYTES:
        onnx.save(model, path)
        return
    import os
    onnx.save_model(model, path, save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=os.path.basename(path) + ".data")
