"""Per-layer size, memory, parameter and compute figures of a net.

    from protonet.summary import summarize, format_table
    s = summarize("zoo/vgg16/deploy.prototxt")
    print(format_table(s))

Conventions (the ones of the cs231n "VGGNet in detail" table):

* Output shapes and activation counts are per image: the batch axis is
  dropped.  Memory is counted in float32 (4 bytes a value).
* An in-place layer (ReLU, Dropout, BatchNorm... whose top is its bottom)
  writes into its bottom's memory: its output is counted once, at the layer
  that created the blob, and the in-place row shows 0 activations.  A Split
  layer's tops share the bottom's data: 0 as well.
* The forward memory per image is the sum of every distinct blob, the input
  included.  Training keeps a diff of the same size next to each blob, so
  its figure is twice that (solver history and workspace not included).
* Weights and biases are separate columns: the lecture's per-layer figures
  count weights only, the totals include biases.  For layers whose second
  blob is not a bias (BatchNorm's mean/variance/scale factor, PReLU, ...)
  every blob is counted under weights.  A parameter shared with an earlier
  layer is counted once.
* Multiply-adds are those of Convolution, Deconvolution and InnerProduct
  (one multiply-add per weight per output position); elementwise, pooling
  and normalisation layers are not counted, as in the papers.

Note: the often-quoted "24M activations / 93 MB per image" for VGG-16 comes
from an arithmetic slip in the course notes; adding its own rows gives about
15.2M values (58 MiB in float32, input included), which is what this prints.
"""

import dataclasses

import numpy as np

from .errors import ProtonetError
from .proto import caffe_pb2

BYTES_PER_VALUE = 4  # float32

# Layers whose blobs are (weights, bias): the bias goes to its own column.
_BIAS_LAYERS = {"Convolution", "Deconvolution", "InnerProduct", "Scale",
                "Embed", "ConvolutionDepthwise", "DepthwiseConvolution"}
_MAC_LAYERS = {"Convolution", "Deconvolution", "InnerProduct",
               "ConvolutionDepthwise", "DepthwiseConvolution"}


@dataclasses.dataclass
class LayerSummary:
    """One layer's row.

    Attributes:
        name, type: the layer's name and type.
        shape: its first top's shape without the batch axis (C, H, W for
            images); () for a scalar loss.
        activations: values this layer adds to memory per image (0 in place
            or for Split).
        memory: activations * 4 bytes.
        weights, biases: parameter counts (see the module docstring).
        macs: multiply-adds per image.
        note: 'in place' / 'shares bottom' / '' .
    """
    name: str
    type: str
    shape: tuple
    activations: int
    memory: int
    weights: int
    biases: int
    macs: int
    note: str = ""

    @property
    def params(self):
        return self.weights + self.biases


class Summary(list):
    """The list of `LayerSummary` rows, with totals as attributes.

    Attributes:
        batch: the batch size the figures below were multiplied by.
        activations: total values per image (input included).
        forward_bytes: activations * 4 (one image, inference).
        training_bytes: 2 * forward_bytes (data + diff).
        params: total parameters (weights + biases).
        param_bytes: params * 4.
        macs: total multiply-adds per image.
        batch_forward_bytes: forward_bytes * batch.
    """

    def __init__(self, rows, batch=1):
        super().__init__(rows)
        self.batch = batch
        self.activations = sum(r.activations for r in rows)
        self.forward_bytes = self.activations * BYTES_PER_VALUE
        self.training_bytes = 2 * self.forward_bytes
        self.weights = sum(r.weights for r in rows)
        self.biases = sum(r.biases for r in rows)
        self.params = self.weights + self.biases
        self.param_bytes = self.params * BYTES_PER_VALUE
        self.macs = sum(r.macs for r in rows)
        self.batch_forward_bytes = self.forward_bytes * batch

    def row(self, name):
        """The row of layer `name`."""
        for r in self:
            if r.name == name:
                return r
        raise KeyError(f"no layer named '{name}' in the summary")


def _load_net(net_or_path, batch, input_shapes=None):
    from . import io as _io
    from .net import TEST, Net
    from .summary_inputs import parse_input_shapes, stand_in_inputs
    if isinstance(net_or_path, Net):
        return net_or_path
    if isinstance(net_or_path, caffe_pb2.NetParameter):
        param = caffe_pb2.NetParameter()
        param.CopyFrom(net_or_path)
    else:
        param = _io.read_net(str(net_or_path))
    if isinstance(input_shapes, (list, tuple)):
        input_shapes = parse_input_shapes(input_shapes)
    # Data layers that read files become Input layers of their shapes, so
    # a train_val net needs neither its databases nor its mean file.
    stand_in_inputs(param, TEST, batch, input_shapes or {})
    # Build at the requested batch: the per-image figures do not depend on
    # it, and batch 1 keeps big nets cheap.
    for lp in param.layer:
        if lp.type == "Input":
            for shape in lp.input_param.shape:
                if len(shape.dim):
                    shape.dim[0] = batch
    for shape in param.input_shape:
        if len(shape.dim):
            shape.dim[0] = batch
    if len(param.input_dim) >= 4:
        for i in range(0, len(param.input_dim), 4):
            param.input_dim[i] = batch
    return Net(param, phase=TEST)


def _per_image(shape):
    return tuple(shape[1:])


def summarize(net_or_path, batch=1, input_shapes=None):
    """Rows of per-layer figures and the net's totals.

    Args:
        net_or_path: a `protonet.Net`, a NetParameter or a prototxt path
            (built in TEST phase with its inputs' batch set to `batch`).
        batch: batch size for `batch_forward_bytes`; per-image figures do
            not depend on it.
        input_shapes: shapes of data tops the net's files cannot give, as a
            dict (top name, or None for the first data top -> shape) or
            `--input-shape` strings `TOP=N,C,H,W` (see summary_inputs).

    Returns:
        Summary: a list of LayerSummary rows with totals as attributes.
    """
    if int(batch) < 1:
        raise ProtonetError(f"summarize: batch must be >= 1, got {batch}")
    net = _load_net(net_or_path, int(batch), input_shapes)
    seen_params = set()
    rows = []
    for i, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
        ltype = layer.type
        tops, bottoms = net.top_vecs[i], net.bottom_vecs[i]
        top_ids, bottom_ids = net.top_ids[i], net.bottom_ids[i]
        activations, note = 0, ""
        for tid, top in zip(top_ids, tops):
            if tid in bottom_ids:
                note = "in place"
            elif ltype == "Split":
                note = "shares bottom"
            else:
                activations += int(np.prod(_per_image(top.shape), dtype=np.int64))
        weights = biases = 0
        for k, blob in enumerate(layer.blobs):
            if id(blob) in seen_params:
                continue
            seen_params.add(id(blob))
            if k == 1 and ltype in _BIAS_LAYERS:
                biases += blob.count
            else:
                weights += blob.count
        macs = 0
        if ltype in _MAC_LAYERS and layer.blobs:
            w = layer.blobs[0].count
            if ltype == "InnerProduct":
                axis = layer.param.inner_product_param.axis % len(bottoms[0].shape)
                macs = w * int(np.prod(bottoms[0].shape[1:axis], dtype=np.int64))
            elif ltype == "Deconvolution":
                macs = w * int(np.prod(bottoms[0].shape[2:], dtype=np.int64))
            else:
                macs = w * int(np.prod(tops[0].shape[2:], dtype=np.int64))
        shape = _per_image(tops[0].shape) if tops else ()
        rows.append(LayerSummary(name, ltype, shape, activations,
                                 activations * BYTES_PER_VALUE, weights,
                                 biases, macs, note))
    return Summary(rows, int(batch))


def _human(nbytes):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else \
                f"{nbytes:.1f} {unit}"
        nbytes /= 1024


def format_table(rows):
    """A plain-text table of `summarize` rows followed by the totals.

    Shapes are printed in Caffe's order (C x H x W) without the batch axis.
    """
    if not isinstance(rows, Summary):
        rows = Summary(list(rows))
    header = ("layer", "type", "output (CxHxW)", "activations", "memory",
              "weights", "biases", "mult-adds", "")
    lines = []
    for r in rows:
        shape = "x".join(str(d) for d in r.shape) or "scalar"
        lines.append((r.name, r.type, shape, f"{r.activations:,}",
                      _human(r.memory), f"{r.weights:,}", f"{r.biases:,}",
                      f"{r.macs:,}", r.note))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    right = {3, 4, 5, 6, 7}

    def fmt(cells):
        return "  ".join(c.rjust(w) if j in right else c.ljust(w)
                         for j, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [fmt(header), "-" * len(fmt(header))]
    out += [fmt(line) for line in lines]
    out.append("")
    out.append(f"activations per image: {rows.activations:,} (input "
               f"included; in-place and Split outputs counted once)")
    out.append(f"forward memory per image: {_human(rows.forward_bytes)} "
               f"float32; training (data + diff): "
               f"{_human(rows.training_bytes)}")
    if rows.batch != 1:
        out.append(f"forward memory for batch {rows.batch}: "
                   f"{_human(rows.batch_forward_bytes)}")
    out.append(f"parameters: {rows.params:,} ({rows.weights:,} weights + "
               f"{rows.biases:,} biases), {_human(rows.param_bytes)} float32")
    out.append(f"multiply-adds per image: {rows.macs:,}")
    return "\n".join(out)
