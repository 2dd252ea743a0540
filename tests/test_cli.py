"""The `protonet` command line, called in-process through main([...])."""

import datetime
import os
import re
import shutil

import numpy as np
import pytest

from protonet import cli, io

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_ref",
                      "train", "lr_multistep")


@pytest.fixture
def case(tmp_path, monkeypatch):
    """A copy of a golden training case, as the working directory."""
    d = tmp_path / "case"
    shutil.copytree(GOLDEN, d)
    monkeypatch.chdir(d)
    text = (d / "solver.prototxt").read_text()
    text = text.replace("max_iter: 40", "max_iter: 6").replace(
        "test_interval: 100000", "test_interval: 3")
    (d / "solver.prototxt").write_text(text)
    for f in d.glob("snapshot_iter_*"):
        f.unlink()
    return d


def _lines(err):
    return [line for line in err.splitlines() if re.match(r"[IWEF]\d{4} ", line)]


def _message(line):
    return line.split("] ", 1)[1]


def parse_train_log(text):
    """The regexes of Caffe's tools/extra/parse_log.py, rewritten: rows of
    (iteration, seconds, lr, outputs) for train and test."""
    it, lr, start = -1, float("nan"), None
    train, test = [], []
    for line in text.splitlines():
        if not re.match(r"[IWEF]\d{4} ", line):
            continue
        stamp = datetime.datetime.strptime(line[1:21], "%m%d %H:%M:%S.%f")
        if start is None and "Solving" in line:
            start = stamp
        m = re.search(r"Iteration (\d+)", line)
        if m:
            it = int(m.group(1))
        m = re.search(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)", line)
        if m:
            lr = float(m.group(1))
        for rows, kind in ((train, "Train"), (test, "Test")):
            m = re.search(kind + r" net output #(\d+): (\S+) = ([\.\deE+-]+)", line)
            if m:
                rows.append((it, (stamp - start).total_seconds(), lr,
                             m.group(2), float(m.group(3))))
    return train, test


def test_train_with_solver_positional(case, capsys):
    assert cli.main(["train", "solver.prototxt", "--weights=init.caffemodel"]) == 0
    err = capsys.readouterr().err
    msgs = [_message(line) for line in _lines(err)]
    assert "Iteration 0, lr = 0.05" in msgs
    assert any(re.fullmatch(r"Iteration 5, loss = [\d.]+", m) for m in msgs)
    assert any(re.fullmatch(r"    Train net output #0: loss = [\d.]+ \(\* 1 = "
                            r"[\d.]+ loss\)", m) for m in msgs)
    assert "Iteration 3, Testing net (#0)" in msgs
    assert any(m.startswith("    Test net output #1: accuracy = ") for m in msgs)
    assert "Snapshotting to binary proto file snapshot_iter_6.caffemodel" in msgs
    assert ("Snapshotting solver state to binary proto file "
            "snapshot_iter_6.solverstate") in msgs
    assert msgs[-1] == "Optimization Done."
    assert os.path.exists("snapshot_iter_6.solverstate")
    # The first loss is Caffe's (training started from init.caffemodel).
    first = float([m for m in msgs if m.startswith("Iteration 0, loss")][0]
                  .split("= ")[1])
    assert first == pytest.approx(float(np.load("losses.npy")[0]), rel=1e-5)
    train, test = parse_train_log(err)
    assert [r[0] for r in train] == list(range(6))
    assert train[1][2] == 0.05      # parse_log fills row 0 from row 1
    assert {r[3] for r in test} == {"loss", "accuracy"}
    assert all(r[1] >= 0 for r in train)


def test_train_flag_spellings_and_resume(case, capsys):
    assert cli.main(["train", "-solver", "solver.prototxt",
                     "-weights", "init.caffemodel"]) == 0
    first = io.read_caffemodel("snapshot_iter_6.caffemodel")
    text = (case / "solver.prototxt").read_text().replace("max_iter: 6",
                                                          "max_iter: 8")
    (case / "solver.prototxt").write_text(text)
    capsys.readouterr()
    assert cli.main(["train", "--solver=solver.prototxt",
                     "-snapshot=snapshot_iter_6.solverstate"]) == 0
    msgs = [_message(line) for line in _lines(capsys.readouterr().err)]
    assert "Restoring previous solver status from snapshot_iter_6.solverstate" in msgs
    assert not any(m.startswith("Iteration 5,") for m in msgs)
    assert os.path.exists("snapshot_iter_8.caffemodel")
    assert first.layer


def test_train_net_definition_with_flags(case, capsys):
    rc = cli.main(["train", "net.prototxt", "--base-lr", "0.05", "--max-iter",
                   "3", "--type", "Adam", "--lr_policy=fixed", "--display=1",
                   "--snapshot-prefix", "fromnet", "--weights",
                   "init.caffemodel"])
    assert rc == 0
    msgs = [_message(line) for line in _lines(capsys.readouterr().err)]
    assert "Iteration 2, lr = 0.05" in msgs
    assert os.path.exists("fromnet_iter_3.caffemodel")
    state = io.read_solverstate("fromnet_iter_3.solverstate")
    assert len(state.history) == 2 * 6          # Adam: m and v per param


def test_train_errors(case, capsys):
    assert cli.main(["train"]) == 1
    assert "Need a solver" in capsys.readouterr().err
    assert cli.main(["train", "solver.prototxt", "--weights=a",
                     "--snapshot=b"]) == 1
    assert "not both" in capsys.readouterr().err
    assert cli.main(["train", "missing.prototxt"]) == 1
    assert "missing.prototxt" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["train", "solver.prototxt", "--sigint_effect=explode"]) == 2


def test_test_command(case, capsys):
    assert cli.main(["test", "-model", "net.prototxt", "-weights",
                     "final.caffemodel", "-iterations", "3"]) == 0
    msgs = [_message(line) for line in _lines(capsys.readouterr().err)]
    assert "Running for 3 iterations." in msgs
    assert sum(m.startswith("Batch ") for m in msgs) == 6
    acc = float([m for m in msgs if m.startswith("accuracy = ")][0].split(" = ")[1])
    import json
    with open("meta.json") as f:
        assert acc == pytest.approx(json.load(f)["test_accuracy"], rel=1e-4)
    assert any(re.fullmatch(r"loss = [\d.]+ \(\* 1 = [\d.]+ loss\)", m) for m in msgs)
    assert cli.main(["test", "--model=net.prototxt"]) == 1
    assert "weights" in capsys.readouterr().err


def test_time_command(case, capsys):
    assert cli.main(["time", "--model=net.prototxt", "--iterations=2"]) == 0
    msgs = [_message(line) for line in _lines(capsys.readouterr().err)]
    assert "*** Benchmark begins ***" in msgs and "*** Benchmark ends ***" in msgs
    for layer in ("conv1", "pool1", "ip1", "loss"):
        assert any(re.fullmatch(rf" *{layer}\tforward: [\d.e-]+ ms\.", m)
                   for m in msgs), layer
        assert any(re.fullmatch(rf" *{layer}\tbackward: [\d.e-]+ ms\.", m)
                   for m in msgs), layer
    assert any(m.startswith("Average Forward-Backward: ") for m in msgs)


def test_upgrade_command_is_wired(case, tmp_path, monkeypatch, capsys):
    calls = []
    import protonet.upgrade as up
    monkeypatch.setattr(up, "upgrade_net_file", lambda a, b: calls.append(("net", a, b)),
                        raising=False)
    monkeypatch.setattr(up, "upgrade_solver_file",
                        lambda a, b: calls.append(("solver", a, b)), raising=False)
    monkeypatch.setattr(up, "upgrade_caffemodel",
                        lambda a, b: calls.append(("model", a, b)), raising=False)
    assert cli.main(["upgrade", "net.prototxt", "out.prototxt"]) == 0
    assert cli.main(["upgrade", "solver.prototxt", "s.prototxt"]) == 0
    assert cli.main(["upgrade", "init.caffemodel", "o.caffemodel"]) == 0
    assert [c[0] for c in calls] == ["net", "solver", "model"]
    assert cli.main(["upgrade", "net.prototxt"]) == 1


def test_sigint_effect_stop_snapshots_and_stops(case, capsys, monkeypatch):
    import signal
    calls = {"n": 0}
    orig = cli._Signals.request

    def fake_request(self):
        calls["n"] += 1
        if calls["n"] == 2:
            self._handle(signal.SIGINT, None)
        return orig(self)
    monkeypatch.setattr(cli._Signals, "request", fake_request)
    assert cli.main(["train", "solver.prototxt", "-weights=init.caffemodel",
                     "-sigint_effect", "stop"]) == 0
    msgs = [_message(line) for line in _lines(capsys.readouterr().err)]
    assert "Optimization stopped early." in msgs
    assert os.path.exists("snapshot_iter_2.caffemodel")   # snapshot_after_train
