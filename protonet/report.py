"""A live training report: one self-contained HTML page.

`TrainingReport(solver, directory)` watches a solver through its callbacks
and rewrites `directory/index.html` (atomically) at every display and test
interval, so a browser refresh shows progress. The page fetches nothing:
charts are inline SVG (protonet.charts), pictures are inline PNG.

It shows:
- train loss, raw and smoothed, against iteration and wall time;
- every test output against iteration and wall time;
- the learning rate (log scale) with the iterations where it changed;
- per layer: weight and gradient L2 norms, and the ratio of the update to
  the weights (the lecture's check: about 1e-3), with flags for dead ReLUs
  (fraction of zero activations), vanishing and exploding gradients;
- the first convolution's filters, and activation maps of the first test
  images at a few layers;
- the net's summary table and a drawing of the train net.
"""

import math
import os
import time

import numpy as np

from . import io as _io
from . import vis
from .errors import ProtonetError
from .lr_policy import learning_rate
from .report_page import render_page

# Flags (thresholds of the lecture's rules of thumb).
DEAD_RELU_FRACTION = 0.9        # a ReLU whose outputs are >= 90 % zeros
RATIO_HIGH, RATIO_LOW = 1e-1, 1e-6   # update/weight ratio far from ~1e-3
GRAD_EXPLODING = 1e3            # gradient norm / weight norm


class ReportError(ProtonetError):
    """The report directory cannot be written."""


def _norm(a):
    """L2 norm of a float32 blob without a float64 copy of it."""
    a = np.asarray(a).reshape(-1)
    return math.sqrt(float(np.dot(a, a))) if a.size else 0.0


class TrainingReport:
    """Collects a solver's progress and writes the HTML report.

    Args:
        solver: a protonet Solver (SGDSolver, AdamSolver, ...).
        directory: where `index.html` goes (created if missing).
        activation_layers: blob names whose maps to show (default: the
            tops of the first two convolutions of the first test net).
        images: how many test images' activation maps to show.
        stats_every: iterations between per-layer statistics (default:
            the solver's display interval, or 100).
    """

    def __init__(self, solver, directory, activation_layers=None, images=3,
                 stats_every=None):
        self.solver = solver
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, "index.html")
        self._prepare_directory()
        p = solver.param
        self.stats_every = int(stats_every or p.display or 100)
        self.activation_layers = activation_layers
        self.images = int(images)
        self.t0 = time.time()
        self.loss = []          # (iter, seconds, raw loss, smoothed loss)
        self.lr = []            # (iter, seconds, rate)
        self.tests = []         # (iter, seconds, {test net: {output: value}})
        self.layer_stats = []   # (iter, {param name: {...}})
        self.relu_zero = []     # (iter, {layer: fraction of zeros})
        self.pictures = {}
        self._last_tests = None
        self._ratios_due = False
        solver.add_callback(self._on_start, self._on_gradients_ready)
        solver.update_hooks.append(self._after_update)

    def _prepare_directory(self):
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            raise ReportError(f"report directory {self.directory}: cannot "
                              f"create it: {e.strerror}") from None
        if not os.access(self.directory, os.W_OK):
            raise ReportError(f"report directory {self.directory}: not "
                              f"writable")

    # -- observation ----------------------------------------------------
    def _seconds(self):
        return time.time() - self.t0

    def _collect_tests(self):
        """Record the solver's latest test pass, if it is new."""
        s = self.solver
        if s.test_results is self._last_tests or not s.test_results:
            return False
        self._last_tests = s.test_results
        outs = {i: {k: float(np.mean(v)) for k, v in r.items()}
                for i, r in enumerate(s.test_results)}
        self.tests.append((s.iter, self._seconds(), outs))
        self._capture_activations()
        return True

    def _on_start(self):
        if self._collect_tests():
            self.write()

    def _on_gradients_ready(self):
        s = self.solver
        smoothed = float(s.smoothed_loss)
        raw = float(getattr(s, "last_loss", smoothed))
        self.loss.append((s.iter, self._seconds(), raw, smoothed))
        rate, _ = learning_rate(s.param, s.iter, s.current_step,
                                plateau=s.plateau)
        if not self.lr or self.lr[-1][2] != float(rate):
            self.lr.append((s.iter, self._seconds(), float(rate)))
        if s.iter % self.stats_every == 0:
            self._layer_statistics()
            self.write()

    def _params(self):
        """(name[k], blob) of every parameter the solver updates (lr_mult
        > 0): BatchNorm's statistics and frozen layers are left out."""
        net = self.solver.net
        trained = {id(b) for b, lr in zip(net.learnable_params, net.params_lr)
                   if lr > 0}
        for name, blobs in net.params.items():
            for k, blob in enumerate(blobs):
                if id(blob) in trained:
                    yield f"{name}[{k}]", blob

    def _layer_statistics(self):
        iter_size = max(1, self.solver.param.iter_size)
        stats = {key: {"weight": _norm(blob.data),
                       "grad": _norm(blob.diff) / iter_size}
                 for key, blob in self._params()}
        self.layer_stats.append((self.solver.iter, stats))
        self._ratios_due = True
        self.relu_zero.append((self.solver.iter, self._relu_zero_fractions()))
        if "filters" not in self.pictures or self.solver.iter % (
                10 * self.stats_every) == 0:
            self._capture_filters()

    def _after_update(self):
        """Right after the update each diff holds the update the solver
        subtracted (Caffe's contract): its norm over the weights' is the
        update/weight ratio, with no copy of the weights."""
        if not self._ratios_due:
            return
        self._ratios_due = False
        stats = self.layer_stats[-1][1]
        for key, blob in self._params():
            w = stats[key]["weight"]
            stats[key]["ratio"] = _norm(blob.diff) / w if w > 0 else math.nan

    def _relu_zero_fractions(self):
        net = self.solver.net
        out = {}
        for name, layer, tops in zip(net.layer_names, net.layers,
                                     net.top_names.values()):
            if layer.type == "ReLU" and tops:
                a = np.asarray(net.blobs[tops[0]].data)
                if a.size:
                    out[name] = float(np.count_nonzero(a <= 0)) / a.size
        return out

    def _capture_filters(self):
        net = self.solver.net
        for name, layer in zip(net.layer_names, net.layers):
            if layer.type == "Convolution" and name in net.params:
                try:
                    grid = vis.filters(net, name)
                except vis.VisError:
                    continue
                scale = max(1, int(160 // max(grid.shape[:2])))
                self.pictures["filters"] = (name, vis.png_bytes(grid, scale))
                return

    def _activation_blobs(self, net):
        if self.activation_layers:
            missing = [b for b in self.activation_layers if b not in net.blobs]
            if missing:
                raise ReportError(f"report: no blob {', '.join(missing)} in "
                                  f"test net #0 (blobs: "
                                  f"{', '.join(net.blobs)})")
            return list(self.activation_layers)
        names = []
        for layer, tops in zip(net.layers, net.top_names.values()):
            if layer.type == "Convolution" and tops:
                names.append(tops[0])
            if len(names) == 2:
                break
        return names

    def _capture_activations(self):
        if not self.solver.test_nets:
            return
        net = self.solver.test_nets[0]
        maps = []
        for blob in self._activation_blobs(net):
            n = net.blobs[blob].data.shape[0] if net.blobs[blob].data.ndim else 0
            for i in range(min(self.images, n)):
                try:
                    grid = vis.activations(net, blob, image=i, max_maps=32)
                except vis.VisError:
                    break
                scale = max(1, int(120 // max(grid.shape[:2])))
                maps.append((blob, i, vis.png_bytes(grid, scale)))
        self.pictures["activations"] = maps

    # -- output ---------------------------------------------------------
    def flags(self):
        """Human-readable warnings from the latest statistics, one line per
        kind of problem (naming the first few blobs or layers)."""
        kinds = {}

        def add(kind, name):
            kinds.setdefault(kind, []).append(name)
        it = None
        if self.layer_stats:
            it, stats = self.layer_stats[-1]
            for key, s in stats.items():
                w, g, r = s["weight"], s["grad"], s.get("ratio", math.nan)
                if not math.isfinite(g):
                    add("gradient is not finite", key)
                elif w > 0 and g / w > GRAD_EXPLODING:
                    add(f"exploding gradient (|grad|/|w| > {GRAD_EXPLODING:g})",
                        key)
                elif g == 0 and w > 0:
                    add("vanishing gradient (exactly zero)", key)
                if math.isfinite(r) and r > RATIO_HIGH:
                    add(f"update/weight ratio above {RATIO_HIGH:g} (about "
                        "1e-3 is healthy)", key)
                elif math.isfinite(r) and 0 < r < RATIO_LOW:
                    low = self.lr and self.lr[-1][2] < self.lr[0][2]
                    add(f"update/weight ratio below {RATIO_LOW:g}" +
                        (" (expected after the learning rate dropped)" if low
                         else " (about 1e-3 is healthy)"), key)
        if self.relu_zero:
            it, zeros = self.relu_zero[-1]
            for name, frac in zeros.items():
                if frac >= DEAD_RELU_FRACTION:
                    add(f"ReLU outputs >= {DEAD_RELU_FRACTION:.0%} zero (dead "
                        "units?)", f"{name} ({frac:.0%})")
        out = []
        for kind, names in kinds.items():
            shown = ", ".join(names[:4])
            more = f" and {len(names) - 4} more" if len(names) > 4 else ""
            out.append(f"{kind} at iteration {it}: {shown}{more}")
        return out

    def write(self, finished=False):
        """Render the page and replace index.html atomically (`finished`:
        the page stops asking the browser to refresh it)."""
        if finished:
            self._collect_tests()
        page = render_page(self, finished)
        try:
            _io.atomic_write(self.path, page.encode("utf-8"))
        except OSError as e:
            raise ReportError(f"report {self.path}: cannot write it: "
                              f"{e.strerror}") from None
        return self.path

