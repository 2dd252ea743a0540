"""The README's main job, end to end: make the bundled digits data set,
train the zoo's LeNet-digits with its solver, reach the stated accuracy, and
evaluate the snapshot with `protonet test` (all in-process via cli.main)."""

import os
import re
import shutil

import pytest

from protonet import cli

REPO = os.path.join(os.path.dirname(__file__), os.pardir)


@pytest.mark.slow
def test_readme_main_job_trains_lenet_digits_above_97_percent(tmp_path,
                                                               monkeypatch,
                                                               capfd):
    pytest.importorskip("sklearn")
    pytest.importorskip("lmdb")
    shutil.copytree(os.path.join(REPO, "zoo", "lenet_digits"),
                    tmp_path / "zoo" / "lenet_digits")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["dataset", "digits", "--size", "32",
                     "--out", "data/digits"]) == 0
    assert cli.main(["train", "--solver=zoo/lenet_digits/solver.prototxt"]) == 0
    log = capfd.readouterr().err
    accuracies = [float(a) for a in
                  re.findall(r"Test net output #0: accuracy = ([0-9.]+)", log)]
    assert accuracies and accuracies[-1] > 0.97, accuracies
    assert "Optimization Done." in log
    weights = "data/digits/lenet_digits_iter_800.caffemodel"
    assert os.path.exists(weights)
    assert os.path.exists("data/digits/lenet_digits_iter_800.solverstate")
    assert cli.main(["test", "--model=zoo/lenet_digits/train_val.prototxt",
                     f"--weights={weights}", "--iterations=3"]) == 0
    log = capfd.readouterr().err
    final = re.findall(r"accuracy = ([0-9.]+)", log)
    assert final and float(final[-1]) == pytest.approx(accuracies[-1], abs=1e-6)
