"""Line charts as self-contained SVG (no plotting library, no network).

Used by the training report and by `protonet plot`. A chart is a list of
`Series` drawn on shared axes; the SVG scales to its container (viewBox),
so it reads on a laptop and on a phone.
"""

import html
import math
from dataclasses import dataclass, field

# Colour-blind-safe palette (Okabe & Ito).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00",
           "#56B4E9", "#000000", "#F0E442")

_W, _H = 640, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 62, 16, 30, 44


@dataclass
class Series:
    """One line: x and y values (NaN/inf points are left out), a label."""

    label: str
    x: list
    y: list
    color: str = None
    dashed: bool = False
    width: float = 1.6
    steps: bool = False         # draw as a step function (learning rates)
    points: list = field(default_factory=list)   # (x, y) marks, e.g. lr changes


def _finite_pairs(s, log_y):
    out = []
    for x, y in zip(s.x, s.y):
        x, y = float(x), float(y)
        if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y):
            out.append((x, y))
    return out


def nice_ticks(lo, hi, n=5):
    """Round tick values covering [lo, hi] (about n of them, never more
    than 4n)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    if not math.isfinite(raw) or raw <= 0:
        return [lo]
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    if last - first > 4 * n:    # the range is below float resolution
        return [lo, hi]
    return [0.0 if k == 0 else k * step for k in range(first, last + 1)]


def _fmt(v):
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.6g}"


class _Axes:
    def __init__(self, pairs, log_y, y_range, top=_TOP):
        self.top = top
        xs = [p[0] for ps in pairs for p in ps] or [0.0, 1.0]
        ys = [p[1] for ps in pairs for p in ps] or [0.0, 1.0]
        self.log_y = log_y
        self.x0, self.x1 = min(xs), max(xs)
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1.0
        if log_y:
            lo, hi = math.log10(min(ys)), math.log10(max(ys))
            self.y0, self.y1 = math.floor(lo), max(math.ceil(hi), math.floor(lo) + 1)
        else:
            lo, hi = y_range if y_range else (min(ys), max(ys))
            pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
            self.y0, self.y1 = (lo, hi) if y_range else (lo - pad, hi + pad)

    def px(self, x):
        return _LEFT + (x - self.x0) / (self.x1 - self.x0) * (_W - _LEFT - _RIGHT)

    def py(self, y):
        v = math.log10(y) if self.log_y else y
        frac = (v - self.y0) / (self.y1 - self.y0)
        return _H - _BOTTOM - frac * (_H - self.top - _BOTTOM)

    def y_ticks(self):
        if self.log_y:
            return [10.0 ** e for e in range(int(self.y0), int(self.y1) + 1)]
        return [t for t in nice_ticks(self.y0, self.y1) if self.y0 <= t <= self.y1]


def _path(ax, pairs, steps):
    pts = []
    for i, (x, y) in enumerate(pairs):
        if steps and i:
            pts.append(f"{ax.px(x):.1f},{ax.py(pairs[i - 1][1]):.1f}")
        pts.append(f"{ax.px(x):.1f},{ax.py(y):.1f}")
    return " ".join(pts)


def _grid(ax, x_label, y_label):
    e = html.escape
    out = []
    for t in nice_ticks(ax.x0, ax.x1, 6):
        if ax.x0 <= t <= ax.x1:
            x = ax.px(t)
            out.append(f'<line x1="{x:.1f}" y1="{ax.top}" x2="{x:.1f}" '
                       f'y2="{_H - _BOTTOM}" class="grid"/>'
                       f'<text x="{x:.1f}" y="{_H - _BOTTOM + 16}" '
                       f'text-anchor="middle">{_fmt(t)}</text>')
    for t in ax.y_ticks():
        y = ax.py(t)
        out.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_W - _RIGHT}" '
                   f'y2="{y:.1f}" class="grid"/>'
                   f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<text x="{(_W + _LEFT) / 2:.0f}" y="{_H - 8}" '
               f'text-anchor="middle" class="label">{e(x_label)}</text>')
    out.append(f'<text transform="translate(14,{(_H - _BOTTOM + ax.top) / 2:.0f}) '
               f'rotate(-90)" text-anchor="middle" class="label">'
               f'{e(y_label)}</text>')
    return out


def _legend_places(series):
    """(x, y) of each legend entry, wrapping to new rows; and the top of
    the plot area below them."""
    places, x, y = [], _LEFT, 14
    for s in series:
        width = 30 + 7 * len(s.label)
        if x > _LEFT and x + width > _W - _RIGHT:
            x, y = _LEFT, y + 15
        places.append((x, y))
        x += width
    return places, y + 16


def _legend(series, places):
    out = []
    for s, (x, y) in zip(series, places):
        label = html.escape(s.label)
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        out.append(f'<line x1="{x}" y1="{y}" x2="{x + 18}" y2="{y}" '
                   f'stroke="{s.color}" stroke-width="2.5"{dash}/>'
                   f'<text x="{x + 22}" y="{y + 4}">{label}</text>')
    return out


def line_chart(series, title="", x_label="iteration", y_label="",
               log_y=False, y_range=None):
    """An SVG document string drawing `series` on one pair of axes.

    Args:
        series: Series to draw (colours from PALETTE where not given).
        log_y: logarithmic y axis (non-positive values are left out).
        y_range: fixed (lo, hi) for the y axis, e.g. (0, 1) for accuracy.
    """
    for i, s in enumerate(series):
        s.color = s.color or PALETTE[i % len(PALETTE)]
    pairs = [_finite_pairs(s, log_y) for s in series]
    places, top = _legend_places(series)
    ax = _Axes(pairs, log_y, y_range, max(_TOP, top))
    body = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" '
            f'class="chart" role="img" data-series="{len(series)}">',
            f'<title>{html.escape(title)}</title>',
            "<style>text{font:11px sans-serif;fill:#333}.label{font-size:12px}"
            ".grid{stroke:#e4e4e4;stroke-width:1}</style>",
            f'<rect x="{_LEFT}" y="{ax.top}" width="{_W - _LEFT - _RIGHT}" '
            f'height="{_H - ax.top - _BOTTOM}" fill="#fff" stroke="#bbb"/>']
    body += _grid(ax, x_label, y_label)
    for s, ps in zip(series, pairs):
        if not ps:
            continue
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        body.append(f'<polyline fill="none" stroke="{s.color}" '
                    f'stroke-width="{s.width}"{dash} data-points="{len(ps)}" '
                    f'data-label="{html.escape(s.label)}" '
                    f'points="{_path(ax, ps, s.steps)}"/>')
        for x, y in s.points:
            if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y):
                body.append(f'<circle cx="{ax.px(x):.1f}" cy="{ax.py(y):.1f}" '
                            f'r="3.5" fill="{s.color}"/>')
    body += _legend(series, places)
    body.append("</svg>")
    return "\n".join(body)


def smooth(values, weight=0.9):
    """Exponential moving average with bias correction (TensorBoard's
    smoothing): the first points are not pulled towards zero."""
    out, avg, norm = [], 0.0, 0.0
    for v in values:
        v = float(v)
        if not math.isfinite(v):
            out.append(v)
            continue
        avg = weight * avg + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(avg / norm)
    return out
