"""The net's part of the training report: summary table and drawing.

The drawing is Graphviz's (as `protonet draw`) when its `dot` program is
installed; otherwise a built-in one: the layers top to bottom in the net's
order, each box coloured by kind, an arc on the right for every connection
that skips over layers (shortcuts, branches, the label to the loss).
"""

import html
import shutil

from . import draw as _draw
from .summary import summarize

_KIND_COLOURS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050",
                 "InnerProduct": "#CC33FF", "Pooling": "#FF9900",
                 "ReLU": "#BDBDBD", "BatchNorm": "#8FD3F4", "Scale": "#B8E2F2",
                 "Eltwise": "#7AC77A", "Concat": "#7AC77A", "Data": "#5DA5DA",
                 "Input": "#5DA5DA", "HDF5Data": "#5DA5DA"}
_ROW, _BOX_W, _X0 = 30, 300, 10


def summary_table(net):
    """The `protonet summary` figures of `net` as an HTML table."""
    rows = summarize(net)
    body = "".join(
        f"<tr><td>{html.escape(r.name)}</td><td class=\"t\">{html.escape(r.type)}"
        f"</td><td>{'x'.join(map(str, r.shape)) or 'scalar'}</td>"
        f"<td>{r.activations:,}</td><td>{r.params:,}</td><td>{r.macs:,}</td></tr>"
        for r in rows)
    total = (f"<tr><th>total</th><th></th><th></th><th>{rows.activations:,}</th>"
             f"<th>{rows.params:,}</th><th>{rows.macs:,}</th></tr>")
    return ('<div class="scroll"><table><tr><th>layer</th><th class="t">type</th>'
            "<th>output (CxHxW)</th><th>activations</th><th>parameters</th>"
            f"<th>mult-adds</th></tr>{body}{total}</table></div>")


def _builtin_svg(net):
    names, types = net.layer_names, [layer.type for layer in net.layers]
    producer, arcs = {}, []
    for j, (bottoms, tops) in enumerate(zip(net.bottom_names.values(),
                                            net.top_names.values())):
        for b in bottoms:
            i = producer.get(b)
            if i is not None and j - i > 1:
                arcs.append((i, j))
        for t in tops:
            producer[t] = j
    height = _ROW * len(names) + 10
    width = _X0 + _BOX_W + 40 + 12 * min(len(arcs), 20)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" '
           f'viewBox="0 0 {width} {height}" style="max-width:{width}px">',
           "<style>text{font:11px sans-serif}</style>"]
    for k, (i, j) in enumerate(arcs):
        x = _X0 + _BOX_W + 10 + 12 * (k % 20)
        y0, y1 = 5 + _ROW * i + 12, 5 + _ROW * j + 12
        out.append(f'<path d="M{_X0 + _BOX_W},{y0} H{x} V{y1} H{_X0 + _BOX_W}" '
                   f'fill="none" stroke="#7a8a9a" stroke-width="1"/>')
    for k, (name, kind) in enumerate(zip(names, types)):
        y = 5 + _ROW * k
        colour = _KIND_COLOURS.get(kind, "#E0E0E0")
        out.append(f'<rect x="{_X0}" y="{y}" width="{_BOX_W}" height="{_ROW - 6}" '
                   f'rx="4" fill="{colour}" fill-opacity="0.55" stroke="#666"/>'
                   f'<text x="{_X0 + 8}" y="{y + 16}">{html.escape(name)} '
                   f'({html.escape(kind)})</text>')
        if k:
            out.append(f'<line x1="{_X0 + 40}" y1="{y - 6}" x2="{_X0 + 40}" '
                       f'y2="{y}" stroke="#666"/>')
    out.append("</svg>")
    return "\n".join(out)


def net_drawing(net):
    """An inline SVG of the net (Graphviz's if available, else built in)."""
    if shutil.which("dot"):
        try:
            svg = _draw.render(_draw.to_dot(net, rankdir="TB"), "svg").decode()
            start = svg.find("<svg")
            return f'<div class="scroll">{svg[start:]}</div>'
        except _draw.DrawError:
            pass
    return f'<div class="scroll">{_builtin_svg(net)}</div>'
