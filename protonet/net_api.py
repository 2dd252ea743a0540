"""pycaffe's Python-level Net API, as a mixin of `protonet.Net`.

Mirrors: python/caffe/pycaffe.py (which adds these to the C++ Net the same
way) and the low-level names _caffe.cpp binds: keyword inputs and diffs,
forward/backward over named ranges, forward_all in batch-sized chunks, the
name-keyed views of the graph.  The engine itself (building, forward_from_to,
backward_from_to, parameters) is in protonet/net.py.
"""

import collections

import numpy as np

from .errors import NetError


class PycaffeNetMixin:
    """Methods pycaffe scripts call on a Net; needs the engine attributes
    of `protonet.Net` (layers, blobs, _blob_names, top_ids, ...)."""

    @property
    def layer_names(self):
        return list(self._layer_names)

    @property
    def inputs(self):
        return [self._blob_names[i] for i in self.input_ids]

    @property
    def outputs(self):
        return list(self._output_names)

    @property
    def top_names(self):
        return collections.OrderedDict(
            (n, [self._blob_names[i] for i in ids])
            for n, ids in zip(self._layer_names, self.top_ids))

    @property
    def bottom_names(self):
        return collections.OrderedDict(
            (n, [self._blob_names[i] for i in ids])
            for n, ids in zip(self._layer_names, self.bottom_ids))

    def forward_prefilled(self):
        return self.forward_from_to()

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.forward: optional input arrays by name; returns a
        dict of the output blobs (or `blobs`) after running start..end."""
        blobs = list(blobs or [])
        start_i = self.layer_index(start) if start is not None else 0
        if end is not None:
            end_i = self.layer_index(end)
            outputs = set(self.top_names[end] + blobs)
        else:
            end_i = len(self.layers) - 1
            outputs = set(self.outputs + blobs)
        for name in blobs:
            if name not in self.blobs:
                raise NetError(f"forward(blobs=...): no blob named '{name}' "
                               f"(blobs: {', '.join(self.blobs)})")
        if kwargs:
            unknown = sorted(set(kwargs) - set(self.inputs))
            if unknown:
                raise NetError(f"forward(): {', '.join(repr(u) for u in unknown)} "
                               f"is not an input of the net (inputs: "
                               f"{', '.join(self.inputs) or 'none'})")
            for name, arr in kwargs.items():
                self.set_input(name, arr)
        self.forward_from_to(start_i, end_i, keep=outputs)
        return {o: self.blobs[o].data for o in outputs}

    def set_input(self, name, arr):
        blob = self.blobs[name]
        arr = np.asarray(arr)
        if arr.shape != blob.shape:
            if arr.ndim == blob.num_axes and arr.shape[1:] == blob.shape[1:]:
                raise NetError(f"input '{name}': got batch of {arr.shape[0]} "
                               f"but the blob holds {blob.shape[0]}; call "
                               f"net.blobs['{name}'].reshape(...) and "
                               "net.reshape() first")
            raise NetError(f"input '{name}': expected shape {blob.shape}, "
                           f"got {arr.shape}")
        blob.data[...] = arr

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.backward: optional top diffs by name; returns a dict
        of the input diffs (or `diffs`)."""
        diffs = list(diffs or [])
        start_i = self.layer_index(start) if start is not None \
            else len(self.layers) - 1
        if end is not None:
            end_i = self.layer_index(end)
            outputs = set(self.bottom_names[end] + diffs)
        else:
            end_i = 0
            outputs = set(self.inputs + diffs)
        for name, arr in kwargs.items():
            if name not in self.outputs:
                raise NetError(f"backward(): '{name}' is not an output of the "
                               f"net (outputs: {', '.join(self.outputs)})")
            blob = self.blobs[name]
            arr = np.asarray(arr)
            if arr.shape != blob.shape:
                raise NetError(f"backward(): diff for '{name}' must have shape "
                               f"{blob.shape}, got {arr.shape}")
            blob.diff[...] = arr
        self.backward_from_to(start_i, end_i)
        return {o: self.blobs[o].diff for o in outputs}

    def forward_all(self, blobs=None, **kwargs):
        """pycaffe's Net.forward_all: run inputs of any length through the
        net in chunks of its batch size; returns {output: all items}.

        The last chunk is padded with zeros and the padding dropped from the
        outputs, as pycaffe does.
        """
        out, _ = self._run_all(blobs, None, kwargs, backward=False)
        return out

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """pycaffe's Net.forward_backward_all: `kwargs` hold inputs (by input
        name) and output diffs (by output name); returns (outputs, diffs)."""
        return self._run_all(blobs, diffs, kwargs, backward=True)

    def _run_all(self, blobs, diffs, kwargs, backward):
        blobs, diffs = list(blobs or []), list(diffs or [])
        unknown = sorted(set(kwargs) - set(self.inputs) - set(self.outputs))
        if unknown:
            raise NetError(f"{', '.join(repr(u) for u in unknown)} is neither "
                           f"an input ({', '.join(self.inputs)}) nor an output "
                           f"({', '.join(self.outputs)}) of the net")
        outs = list(dict.fromkeys(self.outputs + blobs))
        douts = list(dict.fromkeys(self.inputs + diffs))
        if not kwargs:
            f = {k: v.copy() for k, v in self.forward(blobs=blobs).items()}
            if not backward:
                return f, None
            return f, {k: v.copy() for k, v in self.backward(diffs=diffs).items()}
        lengths = {len(v) for v in kwargs.values()}
        if len(lengths) != 1:
            raise NetError(f"inputs differ in length ({sorted(lengths)})")
        total = lengths.pop()
        batch = self.blobs[next(iter(kwargs))].shape[0]
        got = {n: [] for n in outs}
        dgot = {n: [] for n in douts}
        for start in range(0, total, batch):
            keep = min(batch, total - start)
            chunk = {}
            for name, arr in kwargs.items():
                part = np.asarray(arr[start:start + batch])
                if len(part) < batch:
                    pad = np.zeros((batch - len(part),) + part.shape[1:],
                                   part.dtype)
                    part = np.concatenate([part, pad])
                chunk[name] = part
            f = self.forward(blobs=blobs, **{k: v for k, v in chunk.items()
                                             if k in self.inputs})
            for n in outs:
                got[n].append(np.array(f[n][:keep]))
            if backward:
                d = self.backward(diffs=diffs, **{k: v for k, v in chunk.items()
                                                  if k in self.outputs})
                for n in douts:
                    dgot[n].append(np.array(d[n][:keep]))
        out = {n: np.concatenate(v) for n, v in got.items()}
        if not backward:
            return out, None
        return out, {n: np.concatenate(v) for n, v in dgot.items()}

    def set_input_arrays(self, data, labels, layer_index=0):
        """pycaffe's Net.set_input_arrays for a MemoryData layer."""
        layer = self.layers[layer_index]
        if not hasattr(layer, "set_input_arrays"):
            raise NetError(f"layer {layer_index} ('{layer.name}', {layer.type}) "
                           "is not a MemoryData layer")
        layer.set_input_arrays(data, labels)

    # pycaffe's low-level bindings (_caffe.cpp): layer indices, blob ids.
    def _forward(self, start, end):
        return self.forward_from_to(start, end)

    def _backward(self, start, end):
        self.backward_from_to(start, end)

    @property
    def _inputs(self):
        return list(self.input_ids)

    @property
    def _outputs(self):
        return [self._blob_names.index(n) for n in self._output_names]

    def _bottom_ids(self, i):
        return list(self.bottom_ids[i])

    def _top_ids(self, i):
        return list(self.top_ids[i])
