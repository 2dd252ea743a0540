"""The HTML of the training report (see protonet.report for what it holds).

One page, no network: inline CSS, inline SVG charts, inline PNG pictures.
The x axis of every curve switches between iteration and wall time with two
radio buttons and CSS alone (no script).
"""

import base64
import datetime
import html
import math

from . import charts

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f5f6f8;color:#222}
header{background:#1f2d3d;color:#fff;padding:12px 18px}
header h1{font-size:18px;margin:0}
header p{margin:4px 0 0;color:#c9d3de;font-size:13px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,460px),1fr));
gap:14px;padding:14px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:10px 12px;
min-width:0}
section h2{font-size:15px;margin:2px 0 8px}
section.wide{grid-column:1/-1}
.chart{width:100%;height:auto;display:block}
.pics{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.pics figure{margin:0}.pics figcaption{font-size:12px;color:#555}
img.pix{image-rendering:pixelated;max-width:100%}
table{border-collapse:collapse;font-size:12px;width:100%}
td,th{padding:2px 6px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
td:first-child,th:first-child,td.t,th.t{text-align:left}
.scroll{overflow-x:auto}
.flags li{color:#a33}.ok{color:#2a7a2a}
.toggle{padding:8px 18px;background:#fff;border-bottom:1px solid #dde1e6;font-size:13px}
#x-time:checked~main .x-iter{display:none}
#x-iter:checked~main .x-time{display:none}
@media (max-width:600px){.chart text{font-size:17px}main{padding:6px;gap:8px}}
.toggle label{cursor:pointer;padding:2px 8px;border-radius:4px}
#x-iter:checked~.toggle label[for=x-iter],#x-time:checked~.toggle label[for=x-time]{background:#1f2d3d;color:#fff}
"""


def _esc(text):
    return html.escape(str(text))


def _section(title, body, wide=False):
    cls = ' class="wide"' if wide else ""
    return f"<section{cls}><h2>{_esc(title)}</h2>{body}</section>"


def _both_axes(make):
    """A chart drawn against iteration and against wall time."""
    return (f'<div class="x-iter">{make(0, "iteration")}</div>'
            f'<div class="x-time">{make(1, "wall time (s)")}</div>')


def _loss_chart(r):
    if not r.loss:
        return "<p>No iterations yet.</p>"

    def make(k, label):
        x = [row[k] for row in r.loss]
        raw = [row[2] for row in r.loss]
        series = [charts.Series("loss (raw)", x, raw, color="#9bbbd9", width=1),
                  charts.Series("loss (smoothed)", x, charts.smooth(raw),
                                color="#0072B2", width=2.2)]
        if r.solver.param.average_loss > 1:
            series.append(charts.Series(
                f"average_loss ({r.solver.param.average_loss})", x,
                [row[3] for row in r.loss], color="#D55E00", dashed=True,
                width=1.2))
        return charts.line_chart(series, "train loss", label, "loss")
    return _both_axes(make)


def _test_charts(r):
    if not r.tests:
        return [_section("test outputs", "<p>No test pass yet.</p>")]
    names = []
    for _, _, outs in r.tests:
        for net_id, values in outs.items():
            for name in values:
                if (net_id, name) not in names:
                    names.append((net_id, name))
    out = []
    for net_id, name in names:
        pts = [(it, sec, outs.get(net_id, {}).get(name, math.nan))
               for it, sec, outs in r.tests]
        bounded = all(0 <= v <= 1 for _, _, v in pts if math.isfinite(v))
        y_range = (0, 1) if "accuracy" in name and bounded else None

        def make(k, label, pts=pts, name=name, y_range=y_range):
            return charts.line_chart(
                [charts.Series(f"test net #{net_id}: {name}", [p[k] for p in pts],
                               [p[2] for p in pts],
                               points=[(p[k], p[2]) for p in pts])],
                name, label, name, y_range=y_range)
        last = pts[-1][2]
        out.append(_section(f"test net #{net_id}: {name} (last {last:.4g})",
                            _both_axes(make)))
    return out


def _lr_chart(r):
    if not r.lr:
        return "<p>No iterations yet.</p>"
    end = r.loss[-1] if r.loss else r.lr[-1]

    def make(k, label):
        x = [p[k] for p in r.lr] + [end[k]]
        y = [p[2] for p in r.lr] + [r.lr[-1][2]]
        # Mark the changes of a stepped schedule, not of a smooth one.
        changes = [(p[k], p[2]) for p in r.lr[1:]] if len(r.lr) <= 20 else []
        return charts.line_chart(
            [charts.Series("learning rate", x, y, steps=True, points=changes)],
            "learning rate", label, "rate (log scale)", log_y=True)
    return _both_axes(make)


def _pick(keys, n=8):
    if len(keys) <= n:
        return keys
    step = (len(keys) - 1) / (n - 1)
    return [keys[round(i * step)] for i in range(n)]


def _layer_chart(r, field, title, y_label, reference=None):
    if not r.layer_stats:
        return "<p>No statistics yet.</p>"
    keys = _pick([k for k in r.layer_stats[-1][1] if k.endswith("[0]")])
    its = [it for it, _ in r.layer_stats]
    series = [charts.Series(k[:-3], its,
                            [stats.get(k, {}).get(field, math.nan)
                             for _, stats in r.layer_stats]) for k in keys]
    if reference is not None:
        series.append(charts.Series(f"{reference:g}", [its[0], its[-1]],
                                    [reference, reference], color="#888",
                                    dashed=True, width=1))
    return charts.line_chart(series, title, "iteration", y_label, log_y=True)


def _png(data, alt):
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img class="pix" alt="{_esc(alt)}" src="data:image/png;base64,{b64}">'


def _pictures(r):
    parts = []
    if "filters" in r.pictures:
        name, data = r.pictures["filters"]
        parts.append(_section(f"filters of {name}", _png(data, f"{name} filters")))
    maps = r.pictures.get("activations") or []
    if maps:
        figs = "".join(f"<figure>{_png(d, f'{b} image {i}')}<figcaption>{_esc(b)}"
                       f", test image {i}</figcaption></figure>" for b, i, d in maps)
        parts.append(_section("activation maps (last test pass)",
                              f'<div class="pics">{figs}</div>', wide=True))
    return parts


def _layer_table(r):
    if not r.layer_stats:
        return ""
    it, stats = r.layer_stats[-1]
    zeros = dict(r.relu_zero[-1][1]) if r.relu_zero else {}
    rows = "".join(
        f"<tr><td>{_esc(k)}</td><td>{s['weight']:.4g}</td><td>{s['grad']:.4g}</td>"
        f"<td>{s.get('ratio', math.nan):.3g}</td></tr>" for k, s in stats.items())
    relu = "".join(f"<tr><td>{_esc(n)}</td><td>{f:.1%}</td></tr>"
                   for n, f in zeros.items())
    body = (f'<div class="scroll"><table><tr><th>parameter</th><th>|w|</th>'
            f"<th>|grad|</th><th>|update|/|w|</th></tr>{rows}</table></div>")
    if relu:
        body += (f'<div class="scroll"><table><tr><th>ReLU layer</th>'
                 f"<th>zero outputs</th></tr>{relu}</table></div>")
    return _section(f"layers at iteration {it}", body)


def _flags(r):
    flags = r.flags()
    if not flags:
        return _section("health checks", '<p class="ok">No warnings: '
                        "gradients finite, update/weight ratios in range, "
                        "no dead ReLUs.</p>")
    items = "".join(f"<li>{_esc(f)}</li>" for f in flags)
    return _section("health checks", f'<ul class="flags">{items}</ul>')


def _summary(r):
    from .report_net import net_drawing, summary_table
    return [_section("net summary", summary_table(r.solver.net), wide=True),
            _section("net drawing", net_drawing(r.solver.net), wide=True)]


def render_page(r, finished=False):
    """The whole report page as a string."""
    s = r.solver
    last = r.loss[-1] if r.loss else None
    status = (f"iteration {s.iter} of {s.param.max_iter}" +
              (f", loss {last[3]:.4g}" if last else "") +
              f", {datetime.datetime.now():%Y-%m-%d %H:%M:%S}")
    refresh = "" if finished else '<meta http-equiv="refresh" content="30">'
    sections = [_section("train loss", _loss_chart(r)),
                *_test_charts(r),
                _section("learning rate", _lr_chart(r)),
                _flags(r),
                _section("weight norms |w| (L2)",
                         _layer_chart(r, "weight", "weight norms", "|w|")),
                _section("gradient norms |grad| (L2)",
                         _layer_chart(r, "grad", "gradient norms", "|grad|")),
                _section("update / weight ratio",
                         _layer_chart(r, "ratio", "update/weight", "ratio",
                                      reference=1e-3)),
                _layer_table(r), *_pictures(r), *_summary(r)]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"{refresh}<title>protonet training: {_esc(s.net.name)}</title>"
            f"<style>{_CSS}</style></head><body>"
            f"<header><h1>protonet training report: {_esc(s.net.name)}</h1>"
            f"<p>{_esc(s.type_name or type(s).__name__)} solver, "
            f"{_esc(status)}{'' if not finished else ' (finished)'}</p></header>"
            f'<input type="radio" name="x" id="x-iter" checked hidden>'
            f'<input type="radio" name="x" id="x-time" hidden>'
            f'<div class="toggle">x axis: <label for="x-iter">iteration'
            f'</label> <label for="x-time">wall time</label></div>'
            f"<main>{''.join(sections)}</main></body></html>")
