"""Curves from Caffe training logs: `protonet plot LOG... --out F`.

Any glog training log (protonet's or real Caffe's) gives the train loss,
each test output and the learning rate; several logs are overlaid on the
same axes for comparison. Output by the file's extension:

- `.html`: one self-contained page of inline SVG charts (no dependency);
- `.svg`: the charts stacked in one SVG document (no dependency);
- `.png` (and `.pdf`): drawn with matplotlib (the `[plot]` extra).
"""

import html
import os
from dataclasses import dataclass

from . import charts
from .errors import ProtonetError
from .logparse import read_log


class PlotError(ProtonetError):
    """The plot cannot be made as asked."""


@dataclass
class Chart:
    title: str
    y_label: str
    series: list
    log_y: bool = False
    y_range: tuple = None


def _label(log, many, what):
    name = os.path.basename(log.path)
    return f"{name}: {what}" if many else what


def build_charts(logs, x="iteration"):
    """The charts for parsed logs (TrainingLog objects), x = 'iteration' or
    'seconds'."""
    k = 0 if x == "iteration" else 1
    many = len(logs) > 1
    loss = Chart("train loss", "loss", [])
    rate = Chart("learning rate", "rate (log scale)", [], log_y=True)
    tests = {}
    for log in logs:
        if log.loss:
            loss.series.append(charts.Series(
                _label(log, many, "loss"), [p[k] for p in log.loss],
                [p[2] for p in log.loss]))
        if log.lr:
            rate.series.append(charts.Series(
                _label(log, many, "lr"), [p[k] for p in log.lr],
                [p[2] for p in log.lr], steps=True))
        key = "NumIters" if k == 0 else "Seconds"
        for name in log.test_names():
            rows = [r for r in log.test if name in r]
            chart = tests.setdefault(name, Chart(f"test {name}", name, []))
            chart.series.append(charts.Series(
                _label(log, many, name), [r[key] for r in rows],
                [r[name] for r in rows], points=[(r[key], r[name]) for r in rows]))
    out = [c for c in [loss, *tests.values(), rate] if c.series]
    if not out:
        raise PlotError("nothing to plot: the log(s) have no loss, test "
                        "output or learning-rate lines")
    return out


def _svgs(chart_list, x_label):
    return [charts.line_chart(c.series, c.title, x_label, c.y_label,
                              log_y=c.log_y, y_range=c.y_range)
            for c in chart_list]


def to_html(chart_list, x_label, title):
    parts = "".join(f"<section><h2>{html.escape(c.title)}</h2>{svg}</section>"
                    for c, svg in zip(chart_list, _svgs(chart_list, x_label)))
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>"
            "body{font:14px system-ui,sans-serif;margin:0;background:#f5f6f8}"
            "h1{font-size:18px;margin:0;padding:12px 18px;background:#1f2d3d;color:#fff}"
            "main{display:grid;grid-template-columns:repeat(auto-fill,"
            "minmax(min(100%,460px),1fr));gap:14px;padding:14px}"
            "section{background:#fff;border:1px solid #dde1e6;border-radius:6px;"
            "padding:10px 12px}h2{font-size:15px;margin:2px 0 8px}"
            ".chart{width:100%;height:auto}"
            "@media (max-width:600px){.chart text{font-size:17px}}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><main>{parts}</main></body></html>")


def to_svg(chart_list, x_label):
    """The charts stacked vertically in one SVG document."""
    body, y = [], 0
    for svg in _svgs(chart_list, x_label):
        inner = svg.replace('<svg xmlns="http://www.w3.org/2000/svg"',
                            f'<svg y="{y}" width="640" height="300"', 1)
        body.append(inner)
        y += 310
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="640" height="{y}" '
            f'viewBox="0 0 640 {y}">' + "\n".join(body) + "</svg>")


def to_matplotlib(chart_list, x_label, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError(f"{path}: PNG/PDF output needs matplotlib (pip "
                        "install 'protonet[plot]'); .svg and .html need "
                        "nothing") from None
    fig, axes = plt.subplots(len(chart_list), 1, squeeze=False,
                             figsize=(8, 3.2 * len(chart_list)))
    for ax, c in zip(axes[:, 0], chart_list):
        for i, s in enumerate(c.series):
            colour = s.color or charts.PALETTE[i % len(charts.PALETTE)]
            draw = ax.step if s.steps else ax.plot
            kw = {"where": "post"} if s.steps else {}
            draw(s.x, s.y, label=s.label, color=colour, **kw)
        if c.log_y:
            ax.set_yscale("log")
        ax.set_title(c.title)
        ax.set_xlabel(x_label)
        ax.set_ylabel(c.y_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_logs(paths, out, x="iteration"):
    """Read the logs at `paths` and write their curves to `out`."""
    from . import io as _io
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise PlotError(f"{out}: the output folder {folder} does not exist")
    logs = [read_log(p) for p in paths]
    chart_list = build_charts(logs, x)
    x_label = "iteration" if x == "iteration" else "wall time (s)"
    ext = os.path.splitext(out)[1].lower()
    title = "training curves: " + ", ".join(os.path.basename(p) for p in paths)
    if ext in (".html", ".htm"):
        _io.atomic_write(out, to_html(chart_list, x_label, title).encode())
    elif ext == ".svg":
        _io.atomic_write(out, to_svg(chart_list, x_label).encode())
    elif ext in (".png", ".pdf"):
        to_matplotlib(chart_list, x_label, out)
    else:
        raise PlotError(f"{out}: unknown output format '{ext or '(none)'}' "
                        "(use .html, .svg, .png or .pdf)")
    return out
