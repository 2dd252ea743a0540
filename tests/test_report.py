"""The live training report, protonet.vis, and the report seen in a real
browser (Debian's headless Chromium: no console errors, no network
requests, charts drawn; the screenshot is kept as a test artifact)."""

import io as _stdio
import json
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

import protonet
from protonet import cli, vis
from protonet.report import ReportError, TrainingReport

NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 6 dim: 3 dim: 8 dim: 8 } shape { dim: 6 }
    data_filler { type: "gaussian" std: 1 }
    data_filler { type: "constant" value: 1 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3
    weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label"
  top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label"
  top: "loss" }
"""
SOLVER = (f"net_param {{ {NET} }} test_iter: 1 test_interval: 5 "
          "max_iter: 10 display: 5 base_lr: 0.05 momentum: 0.9 "
          'lr_policy: "step" gamma: 0.1 stepsize: 5 random_seed: 3 '
          "snapshot_after_train: false")


def _train_with_report(directory, **options):
    solver = protonet.get_solver(SOLVER)
    report = solver.add_report(directory, **options)
    solver.solve()
    report.write(finished=True)
    return solver, report


# -- vis -----------------------------------------------------------------------

def test_vis_square_tiles_and_normalises():
    data = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    grid = vis.vis_square(data, padsize=1, padval=1.0)
    # 5 tiles -> a 3x3 grid of (2+1)x(3+1) cells without the last padding.
    assert grid.shape == (3 * 3 - 1, 3 * 4 - 1)
    assert grid.min() == 0.0 and grid.max() == 1.0
    np.testing.assert_allclose(grid[:2, :3], data[0] / 29, rtol=1e-6)
    np.testing.assert_allclose(grid[3:5, 4:7], data[4] / 29, rtol=1e-6)  # row 1, column 1
    assert (grid[2, :] == 1.0).all()              # padding row


def test_vis_square_colour_and_constant():
    grid = vis.vis_square(np.ones((4, 2, 2, 3)))
    assert grid.shape == (5, 5, 3) and np.allclose(grid[:2, :2], 0.5)
    with pytest.raises(vis.VisError, match=r"got shape \(2, 2\)"):
        vis.vis_square(np.ones((2, 2)))


def test_filters_and_activations_of_a_net():
    net = protonet.get_solver(SOLVER).net
    net.forward()
    w = net.params["conv1"][0].data
    colour = vis.filters(net, "conv1")
    assert colour.shape == (2 * 4 - 1, 2 * 4 - 1, 3)     # 4 RGB filters
    # BGR weights shown as RGB: the first tile's red is the weights' channel 2.
    lo, hi = w.min(), w.max()
    np.testing.assert_allclose(colour[:3, :3, 0], (w[0, 2] - lo) / (hi - lo),
                               rtol=1e-5)
    grey = vis.filters(net, "conv1", channel=1)
    assert grey.ndim == 2
    maps = vis.activations(net, "conv1", image=2)
    assert maps.shape == (2 * 7 - 1, 2 * 7 - 1)
    with pytest.raises(vis.VisError, match="no layer 'nope' with parameters"):
        vis.filters(net, "nope")
    with pytest.raises(vis.VisError, match="4-D convolution weights"):
        vis.filters(net, "ip")
    with pytest.raises(vis.VisError, match="image 9 out of range"):
        vis.activations(net, "conv1", image=9)


def test_png_bytes_decode_to_the_grid():
    Image = pytest.importorskip("PIL.Image")
    grid = np.linspace(0, 1, 6 * 4 * 3).reshape(6, 4, 3)
    img = Image.open(_stdio.BytesIO(vis.png_bytes(grid, scale=2)))
    assert img.size == (8, 12) and img.mode == "RGB"
    pixels = np.asarray(img)
    np.testing.assert_array_equal(pixels[::2, ::2], np.round(grid * 255))
    grey = Image.open(_stdio.BytesIO(vis.png_bytes(grid[..., 0])))
    assert grey.mode == "L"


# -- the report ----------------------------------------------------------------

def test_report_records_training(tmp_path):
    solver, report = _train_with_report(tmp_path / "rep")
    assert [it for it, *_ in report.loss] == list(range(10))
    assert [t[0] for t in report.tests] == [0, 5, 10]
    assert set(report.tests[-1][2][0]) == {"accuracy", "loss"}
    assert [(it, lr) for it, _, lr in report.lr] == \
        [(0, pytest.approx(0.05)), (5, pytest.approx(0.005))]
    assert [it for it, _ in report.layer_stats] == [0, 5]
    stats = report.layer_stats[-1][1]
    assert set(stats) == {"conv1[0]", "conv1[1]", "ip[0]", "ip[1]"}
    w = solver.net.params["conv1"][0].data
    assert stats["conv1[0]"]["ratio"] > 0 and stats["conv1[0]"]["weight"] > 0
    assert np.linalg.norm(w) != stats["conv1[0]"]["weight"]  # before updates
    assert 0 <= report.relu_zero[-1][1]["relu1"] <= 1
    page = (tmp_path / "rep" / "index.html").read_text()
    for title in ("train loss", "test net #0: accuracy", "learning rate",
                  "update / weight ratio", "filters of conv1",
                  "activation maps", "net summary", "net drawing"):
        assert title in page, title
    assert "(finished)" in page and 'http-equiv="refresh"' not in page


def test_report_flags_dead_relus_and_exploding_gradients(tmp_path):
    solver = protonet.get_solver(SOLVER)
    report = TrainingReport(solver, tmp_path)
    report.layer_stats = [(5, {"a[0]": {"weight": 1.0, "grad": 1e4,
                                        "ratio": 0.5},
                               "b[0]": {"weight": 1.0, "grad": 0.0,
                                        "ratio": 1e-9}})]
    report.relu_zero = [(5, {"relu1": 0.97})]
    report.lr = [(0, 0.0, 0.1)]
    assert report.flags() == [
        "exploding gradient (|grad|/|w| > 1000) at iteration 5: a[0]",
        "update/weight ratio above 0.1 (about 1e-3 is healthy) at "
        "iteration 5: a[0]",
        "vanishing gradient (exactly zero) at iteration 5: b[0]",
        "update/weight ratio below 1e-06 (about 1e-3 is healthy) at "
        "iteration 5: b[0]",
        "ReLU outputs >= 90% zero (dead units?) at iteration 5: relu1 (97%)"]
    # Many blobs with one problem make one line; tiny updates after the
    # rate dropped are expected, and said so.
    report.layer_stats = [(9, {f"c{i}[0]": {"weight": 1.0, "grad": 1e-3,
                                            "ratio": 1e-8} for i in range(6)})]
    report.relu_zero = []
    report.lr = [(0, 0.0, 0.1), (5, 0.1, 0.01)]
    assert report.flags() == [
        "update/weight ratio below 1e-06 (expected after the learning rate "
        "dropped) at iteration 9: c0[0], c1[0], c2[0], c3[0] and 2 more"]


def test_report_leaves_out_frozen_parameters(tmp_path):
    """BatchNorm's statistics (lr_mult 0) are not trained: no gradient
    statistics, no 'vanishing gradient' flag for them."""
    bn = ('layer { name: "bn1" type: "BatchNorm" bottom: "conv1" '
          'top: "conv1" param { lr_mult: 0 } param { lr_mult: 0 } '
          'param { lr_mult: 0 } }\n')
    net = NET.replace('layer { name: "relu1"', bn + 'layer { name: "relu1"')
    solver = protonet.get_solver(SOLVER.replace(NET, net))
    report = solver.add_report(tmp_path)
    solver.step(1)
    assert set(report.layer_stats[-1][1]) == {"conv1[0]", "conv1[1]",
                                              "ip[0]", "ip[1]"}


def test_report_directory_errors(tmp_path):
    solver = protonet.get_solver(SOLVER)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ReportError, match="cannot create it"):
        TrainingReport(solver, blocker / "rep")


def test_cli_train_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.prototxt").write_text(SOLVER)
    assert cli.main(["train", "--solver", "s.prototxt", "--report", "rep",
                     "-report_layers", "data,ip"]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "protonet training report: tiny" in page
    # The chosen blobs' maps (ip is not 4-D: left out), not conv1's.
    assert "data, test image 0" in page and "conv1, test image" not in page
    assert cli.main(["train", "--solver", "s.prototxt", "--report", "rep",
                     "--report-layers", "nope"]) == 1


# -- in a real browser -------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = os.environ.get("PROTONET_TEST_ARTIFACTS",
                           os.path.join(tempfile.gettempdir(),
                                        "protonet-test-artifacts"))


def _browse(url, workdir):
    """Load `url` in headless Chromium; returns (dom, console lines, page
    network requests, screenshot path)."""
    netlog = os.path.join(workdir, "netlog.json")
    shot = os.path.join(workdir, "shot.png")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={workdir}/profile",
             "--enable-logging=stderr", "--v=0", f"--log-net-log={netlog}",
             "--window-size=1280,2000"]
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True,
                         text=True, timeout=120)
    subprocess.run(flags[:-2] + [f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    with open(netlog) as f:
        log = json.load(f)
    kinds = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    # Chromium's own background fetches have no origin; the page's do.
    requests = [e["params"].get("url") for e in log["events"]
                if kinds[e["type"]] == "URL_REQUEST_START_JOB"
                and e["params"].get("initiator") not in (None, "not an origin")]
    return dom.stdout, console, requests, shot


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not "
                    "installed (.ci/run installs it)")
def test_browser_check_catches_a_bad_page(tmp_path):
    """The checks below can fail: a page with a script error and a remote
    image is caught by both."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="http://127.0.0.1:9/x.png">'
                   "<script>undefined_fn()</script></body></html>")
    _, console, requests, _ = _browse(bad.as_uri(), str(tmp_path))
    assert any("undefined_fn" in line for line in console)
    assert requests == ["http://127.0.0.1:9/x.png"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not "
                    "installed (.ci/run installs it)")
def test_report_in_a_real_browser(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    _train_with_report(tmp_path / "rep")
    page = tmp_path / "rep" / "index.html"
    dom, console, requests, shot = _browse(page.as_uri(), str(tmp_path))
    assert console == [] and requests == []
    lines = re.findall(r'<polyline [^>]*data-points="(\d+)" data-label="([^"]*)"',
                       dom)
    by_label = {}
    for n, label in lines:
        by_label.setdefault(label, []).append(int(n))
    # Each curve is drawn against iteration and against wall time.
    assert by_label["loss (raw)"] == [10, 10]
    assert by_label["test net #0: accuracy"] == [3, 3]
    assert by_label["learning rate"] == [3, 3]      # 2 rates + the end point
    assert by_label["conv1"] == [2, 2, 2]           # |w|, |grad|, ratio
    assert dom.count("data:image/png;base64,") >= 2  # filters + maps
    os.makedirs(ARTIFACTS, exist_ok=True)
    kept = os.path.join(ARTIFACTS, "training_report.png")
    shutil.copy(shot, kept)
    pixels = np.asarray(Image.open(kept).convert("L"), dtype=np.float64)
    assert pixels.shape[1] == 1280 and pixels.std() > 20   # not blank


def test_update_ratio_is_the_step_taken_over_the_weights(tmp_path):
    solver = protonet.get_solver(SOLVER)
    report = solver.add_report(tmp_path, stats_every=1)
    before = {}
    solver.add_callback(lambda: None, lambda: before.update(
        {k: solver.net.params[k][0].data.copy() for k in ("conv1", "ip")}))
    solver.step(2)
    stats = report.layer_stats[-1][1]
    for k in ("conv1", "ip"):
        w0, w1 = before[k].astype(np.float64), solver.net.params[k][0].data
        want = np.linalg.norm(w1 - w0) / np.linalg.norm(w0)
        assert stats[f"{k}[0]"]["ratio"] == pytest.approx(want, rel=1e-4)
