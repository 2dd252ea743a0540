"""Draw a net as a Graphviz graph: pycaffe's `caffe.draw`, same names, same
signatures, same labels.

Mirrors: python/caffe/draw.py (BVLC master).

    from protonet import draw, io
    draw.draw_net_to_file(io.read_net("deploy.prototxt"), "net.svg")

The graph is pycaffe's: a layer is a `record` box named by its label
(`get_layer_label`: name, `(type)`, kernel / stride / pad of convolution and
pooling, lr multipliers with `display_lrm`), coloured by
`choose_color_by_layertype` (in-place layers green); bottom blobs are grey
octagons, blobs that are only tops plain ellipses; edges go bottom blob ->
layer -> top blob, the layer's outgoing edges labelled by `get_edge_label`.
NOTE(caffe): as in pycaffe, a node is named by its label, so two layers with
the same label (e.g. the TRAIN and TEST `Data` layers of one name) are drawn
as one box unless `phase` selects one of them.

`get_pydot_graph` needs pydot (or pydotplus, tried first as pycaffe does):
`pip install protonet[draw]`.  `to_dot` writes the same graph as plain dot
text with no dependency, and `draw_net` / `draw_net_to_file` render that
through Graphviz's `dot` program (or the graphviz / pydot packages).
`.dot`, `.gv` and `.raw` files get the dot text itself.
"""

import os
import shutil
import subprocess

from .errors import ProtonetError
from .proto import caffe_pb2

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED",
                       "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90",
                      "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
_LEARNING = ("Convolution", "Deconvolution", "InnerProduct")
_TEXT_FORMATS = ("dot", "gv", "raw")


class DrawError(ProtonetError, ValueError):
    """The net cannot be drawn as asked (pycaffe raises ValueError)."""


def require_pydot():
    """pydotplus or pydot (pycaffe's order), or a ProtonetError saying how
    to install it."""
    try:
        import pydotplus as pydot
    except ImportError:
        try:
            import pydot
        except ImportError:
            raise ProtonetError(
                "get_pydot_graph needs the pydot package; install it with "
                "`pip install protonet[draw]` (or `pip install pydot`). "
                "draw.to_dot and draw_net_to_file('x.dot') need nothing") \
                from None
    return pydot


def get_pooling_types_dict():
    """Pooling method number -> name (0: 'MAX', 1: 'AVE', 2: 'STOCHASTIC')."""
    desc = caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR
    return {v.number: k for k, v in desc.values_by_name.items()}


def get_edge_label(layer):
    """The label of a layer's outgoing edges: 'Batch N' for Data, num_output
    for Convolution / Deconvolution / InnerProduct, else '""' (empty)."""
    if layer.type == "Data":
        return "Batch " + str(layer.data_param.batch_size)
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer):
    """(weights, bias) lr multipliers of a Convolution / Deconvolution /
    InnerProduct layer (1.0 when not given).

    Raises:
        DrawError: (a ValueError) for another layer type or > 2 params.
    """
    if layer.type not in _LEARNING:
        raise DrawError(f"{layer.type} layers do not have a learning rate "
                        "multiplier")
    params = layer.param
    if len(params) > 2:
        raise DrawError(f"layer '{layer.name}': could not parse the learning "
                        f"rate multiplier ({len(params)} param entries, "
                        "expected at most 2)")
    mults = [p.lr_mult for p in params] + [1.0] * (2 - len(params))
    return mults[0], mults[1]


def get_layer_label(layer, rankdir, display_lrm=False):
    """The text of a layer's node, in double quotes, exactly as pycaffe.

    Parts are separated by a space when the graph is vertical (rankdir TB /
    BT) and by a dot newline (backslash n) otherwise.
    """
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    parts = [layer.name]
    if layer.type == "Pooling":
        pool = get_pooling_types_dict()[layer.pooling_param.pool]
        parts.append(f"({layer.type} {pool})")
    else:
        parts.append(f"({layer.type})")
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        if layer.type == "Pooling":
            p = layer.pooling_param
            kernel, stride, pad = p.kernel_size, p.stride, p.pad
        else:
            p = layer.convolution_param
            kernel = p.kernel_size[0] if len(p.kernel_size) else 1
            stride = p.stride[0] if len(p.stride) else 1
            pad = p.pad[0] if len(p.pad) else 0
        parts.append(separator.join([f"kernel size: {int(kernel)}",
                                     f"stride: {int(stride)}",
                                     f"pad: {int(pad)}"]))
    if display_lrm and layer.type in _LEARNING:
        lrm0, lrm1 = get_layer_lr_mult(layer)
        if any([lrm0, lrm1]):
            parts.append(f"lr mult: {lrm0:.1f}, {lrm1:.1f}")
    return '"%s"' % separator.join(parts)


def choose_color_by_layertype(layertype):
    """The fill colour of a layer's node."""
    if layertype in ("Convolution", "Deconvolution"):
        return "#FF5050"
    if layertype == "Pooling":
        return "#FF9900"
    if layertype == "InnerProduct":
        return "#CC33FF"
    return "#6495ED"


def _as_net_param(net):
    if isinstance(net, caffe_pb2.NetParameter):
        return net
    if isinstance(net, (str, os.PathLike)):
        from . import io as _io
        return _io.read_net(str(net))
    param = getattr(net, "param", None)  # a protonet.Net
    if isinstance(param, caffe_pb2.NetParameter):
        return param
    raise ProtonetError(f"draw: expected a NetParameter, a prototxt path or "
                        f"a Net, got {type(net).__name__}")


def _included(layer, phase):
    """pycaffe's phase filter (an include rule without a phase counts as
    TRAIN, the field's default)."""
    if phase is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise DrawError(f"layer {layer.name} has both include and exclude "
                        "specified.")
    included = not len(layer.include)
    for rule in layer.include:
        included = included or rule.phase == phase
    for rule in layer.exclude:
        included = included and not rule.phase == phase
    return included


def _graph(caffe_net, rankdir, label_edges, phase, display_lrm):
    """pycaffe's nodes {key: (name, attrs)} and edges [(key, key, label)]."""
    if rankdir not in ("LR", "TB", "BT", "RL"):
        raise DrawError(f"rankdir must be LR, TB, BT or RL, got {rankdir!r}")
    nodes, edges = {}, []
    for layer in _as_net_param(caffe_net).layer:
        if not _included(layer, phase):
            continue
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        key = f"{layer.name}_{layer.type}"
        if len(layer.bottom) == 1 and len(layer.top) == 1 and \
                layer.bottom[0] == layer.top[0]:
            nodes[key] = (label, dict(NEURON_LAYER_STYLE))
        else:
            nodes[key] = (label, dict(LAYER_STYLE_DEFAULT, fillcolor=
                                      choose_color_by_layertype(layer.type)))
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = (bottom, dict(BLOB_STYLE))
            edges.append((bottom + "_blob", key, '""'))
        for top in layer.top:
            nodes[top + "_blob"] = (top, {})
            edges.append((key, top + "_blob",
                          get_edge_label(layer) if label_edges else '""'))
    return nodes, edges


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None,
                    display_lrm=False):
    """The net as a pydot graph (pycaffe's signature).

    Args:
        caffe_net: NetParameter (a prototxt path or protonet.Net also work).
        rankdir: 'LR', 'TB', 'BT' or 'RL'.
        label_edges: label the layers' outgoing edges.
        phase: caffe_pb2.TRAIN / TEST to keep only that phase's layers;
            None for all.
        display_lrm: add the lr multipliers of learning layers.
    """
    pydot = require_pydot()
    param = _as_net_param(caffe_net)
    nodes, edges = _graph(param, rankdir, label_edges, phase, display_lrm)
    graph = pydot.Dot(param.name if param.name else "Net",
                      graph_type="digraph", rankdir=rankdir)
    made = {key: pydot.Node(name, **attrs)
            for key, (name, attrs) in nodes.items()}
    for node in made.values():
        graph.add_node(node)
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(made[src], made[dst], label=label))
    return graph


def _id(text):
    """A dot ID: kept when already quoted (pycaffe's labels), else quoted."""
    text = str(text)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text
    return '"' + text.replace('"', '\\"') + '"'


def _attrs(d):
    return "[" + ", ".join(f"{k}={_id(v)}" for k, v in d.items()) + "]"


def to_dot(net, rankdir="LR", label_edges=True, phase=None,
           display_lrm=False):
    """The Graphviz dot source of the graph `get_pydot_graph` builds, with
    no dependency (arguments as get_pydot_graph's)."""
    param = _as_net_param(net)
    nodes, edges = _graph(param, rankdir, label_edges, phase, display_lrm)
    lines = [f"digraph {_id(param.name or 'Net')} {{",
             f"rankdir={rankdir};"]
    for name, attrs in nodes.values():
        lines.append(f"{_id(name)} {_attrs(attrs)};" if attrs else
                     f"{_id(name)};")
    for src, dst, label in edges:
        lines.append(f"{_id(nodes[src][0])} -> {_id(nodes[dst][0])} "
                     f"{_attrs(dict(label=label))};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot_source, ext="png"):
    """Render dot source to bytes in format `ext` (svg, png, pdf, ...).

    Raises:
        DrawError: no way to render (names what to install).
    """
    ext = ext.lstrip(".").lower()
    if ext in _TEXT_FORMATS:
        return dot_source.encode()
    exe = shutil.which("dot")
    if exe is not None:
        proc = subprocess.run([exe, f"-T{ext}"], input=dot_source.encode(),
                              capture_output=True, check=False)
        if proc.returncode != 0:
            raise DrawError(f"Graphviz dot -T{ext} failed: "
                            f"{proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout
    try:
        import graphviz
        return graphviz.Source(dot_source).pipe(format=ext)
    except ImportError:
        pass
    except Exception as e:  # graphviz.ExecutableNotFound and friends
        raise DrawError(f"rendering to .{ext} failed ({e}); install the "
                        "Graphviz 'dot' program (apt-get install graphviz, "
                        "brew install graphviz or conda install graphviz), "
                        "or write a .dot file") from None
    raise DrawError(f"cannot render .{ext}: Graphviz's 'dot' program was not "
                    "found on PATH. Install Graphviz (apt-get install "
                    "graphviz, brew install graphviz or conda install "
                    "graphviz), or write a .dot file (no dependency) and "
                    "render it elsewhere")


def draw_net(caffe_net, rankdir="LR", ext="png", phase=None,
             display_lrm=False):
    """The net drawn in format `ext`, as bytes (pycaffe's signature; rankdir
    defaults to 'LR' here)."""
    return render(to_dot(caffe_net, rankdir, phase=phase,
                         display_lrm=display_lrm), ext)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None,
                     display_lrm=False):
    """Draw the net into `filename`, in the format named by its extension
    (.dot, .gv and .raw get the dot text, which needs no dependency)."""
    filename = str(filename)
    ext = filename[filename.rfind(".") + 1:] if "." in \
        os.path.basename(filename) else "png"
    from .outpath import check_output_file, writing
    check_output_file(filename, "drawing")
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with writing(filename, "drawing"), open(filename, "wb") as f:
        f.write(data)
