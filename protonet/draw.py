"""Draw a net as a Graphviz graph (pycaffe's `caffe.draw`).

The dot source is written here as plain text, so `.dot` output needs
nothing; svg/png/pdf are rendered by Graphviz's `dot` executable (or through
the `graphviz` / `pydot` Python packages when installed, which call it too).

    from protonet import draw, io
    draw.draw_net_to_file(io.read_net("deploy.prototxt"), "net.svg")

Layers are boxes (convolution red, pooling orange, inner product purple,
others blue) labelled with their name and type, plus kernel / stride / pad
for convolution and pooling; blobs are grey octagons; edges go bottom blob
-> layer -> top blob (an in-place layer points back at its own bottom).

Mirrors: python/caffe/draw.py
"""

import os
import shutil
import subprocess

from .errors import ProtonetError
from .proto import caffe_pb2

LAYER_STYLE = {"shape": "box", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050",
          "Pooling": "#FF9900", "InnerProduct": "#CC33FF"}
DEFAULT_COLOR = "#6495ED"


class DrawError(ProtonetError):
    """The graph cannot be rendered in the requested format."""


def _quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') \
        .replace("\n", "\\n") + '"'


def _attrs(d):
    return "[" + ", ".join(f"{k}={_quote(v)}" for k, v in d.items()) + "]"


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


def _spatial(p, name, default):
    value = getattr(p, name)
    if hasattr(value, "__len__"):
        return value[0] if len(value) else default
    return value if p.HasField(name) else default


def layer_label(layer, rankdir="LR", display_lrm=False):
    """The text shown in a layer's box."""
    sep = "\n" if rankdir in ("TB", "BT") else " "
    lines = [layer.name, f"({layer.type})"]
    if layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        k = _spatial(p, "kernel_size", p.kernel_h or 1)
        s = _spatial(p, "stride", p.stride_h or 1)
        pad = _spatial(p, "pad", p.pad_h)
        lines.append(f"kernel size: {k}{sep}stride: {s}{sep}pad: {pad}")
    elif layer.type == "Pooling":
        p = layer.pooling_param
        pool = caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)
        lines.append(f"pool: {pool}{sep}kernel size: {p.kernel_size or p.kernel_h}"
                     f"{sep}stride: {p.stride}{sep}pad: {p.pad}")
    if display_lrm and layer.param:
        lr = [p.lr_mult if p.HasField("lr_mult") else 1 for p in layer.param]
        decay = [p.decay_mult if p.HasField("decay_mult") else 1
                 for p in layer.param]
        lines.append(f"lr mult: {', '.join(map(str, lr))}{sep}decay mult: "
                     f"{', '.join(map(str, decay))}")
    return "\n".join(lines)


def edge_label(layer):
    """Output count shown on a layer's outgoing edges."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return ""


def _included(layer, phase):
    if phase is None:
        return True
    included = not layer.include
    for rule in layer.include:
        if not rule.HasField("phase") or rule.phase == phase:
            included = True
    for rule in layer.exclude:
        if rule.HasField("phase") and rule.phase == phase:
            included = False
    return included


def to_dot(net, rankdir="LR", label_edges=True, phase=None,
           display_lrm=False):
    """The Graphviz dot source of a net (a string).

    Args:
        net: NetParameter, prototxt path or protonet.Net.
        rankdir: 'LR', 'TB', 'BT' or 'RL'.
        label_edges: write output counts on the edges.
        phase: TRAIN / TEST to draw only that phase's layers; None for all.
        display_lrm: add the lr / decay multipliers to the layer labels.
    """
    param = _as_net_param(net)
    if rankdir not in ("LR", "TB", "BT", "RL"):
        raise DrawError(f"rankdir must be LR, TB, BT or RL, got {rankdir!r}")
    name = param.name or "Net"
    lines = [f"digraph {_quote(name)} {{", f"  graph {_attrs(dict(rankdir=rankdir))};"]
    blobs, edges = {}, []
    for i, layer in enumerate(param.layer):
        if not _included(layer, phase):
            continue
        node = f"layer{i}"
        style = dict(LAYER_STYLE, fillcolor=COLORS.get(layer.type,
                                                       DEFAULT_COLOR))
        style["label"] = layer_label(layer, rankdir, display_lrm)
        lines.append(f"  {_quote(node)} {_attrs(style)};")
        for bottom in layer.bottom:
            blobs.setdefault(bottom, f"blob_{bottom}")
            edges.append((blobs[bottom], node, ""))
        label = edge_label(layer) if label_edges else ""
        for top in layer.top:
            blobs.setdefault(top, f"blob_{top}")
            edges.append((node, blobs[top], label))
    for blob, node in blobs.items():
        lines.append(f"  {_quote(node)} {_attrs(dict(BLOB_STYLE, label=blob))};")
    for src, dst, label in edges:
        attrs = f" {_attrs(dict(label=label))}" if label else ""
        lines.append(f"  {_quote(src)} -> {_quote(dst)}{attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot_source, ext="png"):
    """Render dot source to bytes in format `ext` (svg, png, pdf, ...).

    Raises:
        DrawError: no way to render (names what to install).
    """
    ext = ext.lstrip(".").lower()
    if ext in ("dot", "gv"):
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
    try:
        import pydot
        graphs = pydot.graph_from_dot_data(dot_source)
        return graphs[0].create(format=ext)
    except ImportError:
        pass
    except Exception as e:
        raise DrawError(f"rendering to .{ext} with pydot failed ({e}); "
                        "install the Graphviz 'dot' program (apt-get install "
                        "graphviz), or write a .dot file") from None
    raise DrawError(f"cannot render .{ext}: Graphviz's 'dot' program was not "
                    "found on PATH. Install Graphviz (apt-get install "
                    "graphviz, brew install graphviz or conda install "
                    "graphviz), or write a .dot file (no dependency) and "
                    "render it elsewhere")


def draw_net(caffe_net, rankdir="LR", ext="png", phase=None,
             display_lrm=False):
    """The net drawn in format `ext`, as bytes."""
    return render(to_dot(caffe_net, rankdir, phase=phase,
                         display_lrm=display_lrm), ext)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None,
                     display_lrm=False):
    """Draw the net into `filename`; the format comes from its extension
    (.dot / .gv need no dependency)."""
    from .outpath import check_output_file, writing
    check_output_file(filename, "drawing")
    ext = os.path.splitext(str(filename))[1].lstrip(".") or "png"
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with writing(filename, "drawing"), open(filename, "wb") as f:
        f.write(data)
