"""Training logs into tables (parse_log.py's) and curves (protonet plot)."""

import os
import re
import shutil

import pytest

from protonet import charts, cli
from protonet.logparse import LogError, parse_log, read_log, save_csv_files
from protonet.plot import PlotError, plot_logs

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_log")
CAFFE_LOG = os.path.join(FIXTURES, "caffe_lenet.log")

# A protonet log: no ' (x iter/s, ...)' in the loss line, two test nets.
PROTONET_LOG = """\
I1207 10:00:00.000001 11 solver.cpp:44] Initializing solver from parameters: 
base_lr: 0.1
I1207 10:00:00.100000 11 solver.cpp:287] Solving tiny
I1207 10:00:00.100100 11 solver.cpp:288] Learning Rate Policy: step
I1207 10:00:00.200000 11 solver.cpp:330] Iteration 0, Testing net (#0)
I1207 10:00:00.300000 11 solver.cpp:397]     Test net output #0: accuracy = 0.1
I1207 10:00:00.300100 11 solver.cpp:330] Iteration 0, Testing net (#1)
I1207 10:00:00.400000 11 solver.cpp:397]     Test net output #0: top5 = 0.5
I1207 10:00:00.500000 11 solver.cpp:218] Iteration 0, loss = 2.5
0/30 [progress bar left on the line]
I1207 10:00:00.500100 11 sgd_solver.cpp:106] Iteration 0, lr = 0.1
I1207 10:00:01.500000 11 solver.cpp:218] Iteration 10, loss = 1.25
I1207 10:00:01.500100 11 sgd_solver.cpp:106] Iteration 10, lr = 0.01
I1207 10:00:02.000000 11 solver.cpp:330] Iteration 20, Testing net (#0)
I1207 10:00:02.100000 11 solver.cpp:397]     Test net output #0: accuracy = 0.9
I1207 10:00:02.100100 11 solver.cpp:330] Iteration 20, Testing net (#1)
I1207 10:00:02.200000 11 solver.cpp:397]     Test net output #0: top5 = 0.99
I1207 10:00:02.500000 11 solver.cpp:218] Iteration 20, loss = 0.5
I1207 10:00:02.500100 11 sgd_solver.cpp:106] Iteration 20, lr = 0.001
"""


def _copy(tmp_path, name="caffe_lenet.log"):
    # parse_log.py takes the year from the file's ctime: a fresh copy.
    dst = tmp_path / name
    shutil.copy(CAFFE_LOG, dst)
    return str(dst)


def test_csv_tables_equal_parse_log_py_on_a_real_caffe_log(tmp_path):
    """The expected files are what Caffe's tools/extra/parse_log.py wrote
    for this log (real Caffe's format: 'Iteration N (x iter/s, y s/100
    iters), loss = ...', '(* 1 = ... loss)', a GPU preamble, a W line)."""
    log = _copy(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    assert cli.main(["plot", log, "--csv", str(out)]) == 0
    for ext in ("train", "test"):
        with open(os.path.join(FIXTURES, f"caffe_lenet.log.{ext}"), "rb") as f:
            expected = f.read()
        with open(out / f"caffe_lenet.log.{ext}", "rb") as f:
            assert f.read() == expected, ext


def test_parse_log_rows_and_columns(tmp_path):
    train, test = parse_log(_copy(tmp_path))
    assert [r["NumIters"] for r in train] == [0, 100, 200, 300, 400, 500]
    assert list(train[0]) == ["NumIters", "Seconds", "LearningRate", "loss"]
    assert list(test[0]) == ["NumIters", "Seconds", "LearningRate",
                             "accuracy", "loss"]
    assert [r["accuracy"] for r in test] == [0.1047, 0.9727, 0.9825]
    # Seconds: from the 'Solving' line to the row's first output line.
    assert test[0]["Seconds"] == pytest.approx(11.561036 - 11.431355)


def test_read_log_keeps_loss_lines_and_rate_changes(tmp_path):
    path = tmp_path / "p.log"
    path.write_text(PROTONET_LOG)
    log = read_log(path)
    assert [(it, loss) for it, _, loss in log.loss] == \
        [(0, 2.5), (10, 1.25), (20, 0.5)]
    assert [(it, lr) for it, _, lr in log.lr] == \
        [(0, 0.1), (10, 0.01), (20, 0.001)]
    # Both test nets' outputs land in one row per iteration (by name).
    assert [(r["accuracy"], r["top5"]) for r in log.test] == \
        [(0.1, 0.5), (0.9, 0.99)]
    assert log.test_names() == ["accuracy", "top5"]


@pytest.mark.parametrize("text", ["", "not a log\n",
                                  "I1207 10:00:00.0 1 x.cpp:1] hello\n"])
def test_not_a_training_log_is_a_clear_error(tmp_path, text):
    path = tmp_path / "x.log"
    path.write_text(text)
    with pytest.raises(LogError, match=r"x\.log: not a Caffe training log"):
        read_log(path)
    assert cli.main(["plot", str(path), "--out", str(tmp_path / "a.svg")]) == 1


def test_missing_log_names_the_file(tmp_path):
    with pytest.raises(LogError, match="nope.log: cannot read"):
        read_log(tmp_path / "nope.log")


def _polylines(svg):
    return re.findall(r'<polyline [^>]*data-points="(\d+)" data-label="([^"]*)"',
                      svg)


def test_plot_svg_overlays_several_logs(tmp_path):
    a = tmp_path / "a.log"
    a.write_text(PROTONET_LOG)
    b = _copy(tmp_path)
    out = tmp_path / "both.svg"
    assert cli.main(["plot", str(a), b, "--out", str(out)]) == 0
    lines = _polylines(out.read_text())
    labels = [label for _, label in lines]
    # loss, accuracy, loss (test), top5 and lr charts, one line per log each.
    assert "a.log: loss" in labels and "caffe_lenet.log: loss" in labels
    assert "a.log: accuracy" in labels and "caffe_lenet.log: accuracy" in labels
    assert "a.log: top5" in labels
    assert dict((lab, int(n)) for n, lab in lines)["caffe_lenet.log: lr"] == 6


def test_plot_html_is_self_contained(tmp_path):
    a = tmp_path / "a.log"
    a.write_text(PROTONET_LOG)
    out = tmp_path / "c.html"
    plot_logs([str(a)], str(out), x="seconds")
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert len(_polylines(page)) == 4       # loss, accuracy, top5, lr
    assert "wall time (s)" in page


def test_plot_png_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    a = tmp_path / "a.log"
    a.write_text(PROTONET_LOG)
    out = tmp_path / "c.png"
    plot_logs([str(a)], str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_png_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_mpl(name, *args, **kw):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *args, **kw)
    monkeypatch.setattr(builtins, "__import__", no_mpl)
    a = tmp_path / "a.log"
    a.write_text(PROTONET_LOG)
    with pytest.raises(PlotError, match=r"protonet\[plot\]"):
        plot_logs([str(a)], str(tmp_path / "c.png"))


def test_plot_output_errors(tmp_path):
    a = tmp_path / "a.log"
    a.write_text(PROTONET_LOG)
    with pytest.raises(PlotError, match="unknown output format '.txt'"):
        plot_logs([str(a)], str(tmp_path / "c.txt"))
    with pytest.raises(PlotError, match="does not exist"):
        plot_logs([str(a)], str(tmp_path / "no" / "c.svg"))
    assert cli.main(["plot", str(a)]) == 1          # neither --out nor --csv


def test_save_csv_skips_an_empty_table(tmp_path):
    written = save_csv_files("x.log", str(tmp_path), [{"NumIters": 0.0}], [])
    assert written == [str(tmp_path / "x.log.train")]


# -- charts ------------------------------------------------------------------

def test_nice_ticks_are_round_and_cover_the_range():
    assert [round(t, 9) for t in charts.nice_ticks(0, 1)] == \
        [0, .2, .4, .6, .8, 1]
    ticks = charts.nice_ticks(13, 987)
    assert ticks[0] >= 13 and ticks[-1] <= 987 and len(ticks) >= 4
    assert all(t % 100 == 0 for t in ticks)


def test_log_chart_leaves_out_non_positive_and_nan_points():
    svg = charts.line_chart([charts.Series("s", [0, 1, 2, 3], [1.0, 0.0,
                                                               float("nan"), 10])],
                            log_y=True)
    assert _polylines(svg) == [("2", "s")]


def test_smoothing_is_bias_corrected():
    assert charts.smooth([4.0, 4.0, 4.0]) == pytest.approx([4.0, 4.0, 4.0])
    s = charts.smooth([0.0, 10.0], weight=0.5)
    assert s[1] == pytest.approx(10 * 0.5 / 0.75)
