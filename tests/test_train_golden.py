"""Training trajectories against real Caffe (tests/fixtures/caffe_ref/train).

Each case trains the digits convnet for 40 iterations from Caffe's
init.caffemodel; we compare every iteration's loss, the rate used, the final
weights, the snapshot's history blobs and the test scores (README
tolerances: losses rtol 1e-4, weights atol 1e-4 * max|blob|, lr rtol 1e-6).
"""

import json
import os

import numpy as np
import pytest

import protonet
from protonet import io

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_ref", "train")
CASES = sorted(d for d in os.listdir(ROOT) if os.path.isdir(os.path.join(ROOT, d)))


def _blobs(path):
    return [(layer.name, j, io.blob_to_array(b))
            for layer in io.read_caffemodel(path).layer
            for j, b in enumerate(layer.blobs)]


def _train(case, tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.join(ROOT, case))
    param = io.read_solver("solver.prototxt")
    param.snapshot_prefix = str(tmp_path / "snapshot")
    solver = protonet.get_solver(param)
    solver.net.copy_from("init.caffemodel")
    losses, rates = [], []
    for _ in range(40):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
        rates.append(solver.last_rate)
    return solver, np.array(losses), np.array(rates, np.float32)


def test_all_cases_present():
    assert len(CASES) == 16


@pytest.mark.parametrize("case", CASES)
def test_trajectory_matches_caffe(case, tmp_path, monkeypatch):
    solver, losses, rates = _train(case, tmp_path, monkeypatch)
    with open("meta.json") as f:
        meta = json.load(f)
    assert type(solver).__name__.lower().startswith(meta["solver"]["type"].lower())
    np.testing.assert_allclose(losses, np.load("losses.npy"), rtol=1e-4, atol=0)
    np.testing.assert_allclose(rates, np.array(meta["lr"], np.float32), rtol=1e-6)
    assert solver.iter == 40
    for name, j, ref in _blobs("final.caffemodel"):
        mine = solver.net.params[name][j].data
        np.testing.assert_allclose(mine, ref, rtol=0,
                                   atol=1e-4 * np.abs(ref).max(),
                                   err_msg=f"{case}: {name}[{j}]")

    # Snapshot: same history blobs (count, order, values) as Caffe's.
    model, state_file = solver.snapshot()
    mine = io.read_solverstate(state_file)
    ref = io.read_solverstate("snapshot_iter_40.solverstate")
    assert mine.iter == ref.iter == 40
    assert mine.current_step == ref.current_step
    assert len(mine.history) == len(ref.history)
    for i, (a, b) in enumerate(zip(mine.history, ref.history)):
        a, b = io.blob_to_array(a), io.blob_to_array(b)
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * max(np.abs(b).max(), 1e-12),
                                   err_msg=f"{case}: history {i}")

    # Test net: shares the trained weights, 3 x 199 test images.
    solver.test_all()
    result = solver.test_results[0]
    assert result["accuracy"][0] == pytest.approx(meta["test_accuracy"], rel=1e-4)
    assert result["loss"][0] == pytest.approx(meta["test_loss"], rel=1e-4)


@pytest.mark.parametrize("case", ["sgd_momentum_step", "adam", "adadelta"])
def test_restore_caffe_solverstate(case, monkeypatch):
    """A .solverstate written by Caffe restores into our solver."""
    monkeypatch.chdir(os.path.join(ROOT, case))
    param = io.read_solver("solver.prototxt")
    solver = protonet.get_solver(param)
    solver.restore("snapshot_iter_40.solverstate")
    assert solver.iter == 40
    for name, j, ref in _blobs("snapshot_iter_40.caffemodel"):
        np.testing.assert_array_equal(solver.net.params[name][j].data, ref)
    state = io.read_solverstate("snapshot_iter_40.solverstate")
    for h, b in zip(solver.history, state.history):
        np.testing.assert_array_equal(h, io.blob_to_array(b))


def test_clip_gradients_scale_factors_logged(tmp_path, monkeypatch, caplog):
    """Our clipping decisions and factors are Caffe's (from its log)."""
    with caplog.at_level("INFO", logger="protonet.caffe"):
        _train("clip_gradients", tmp_path, monkeypatch)
    with open("meta.json") as f:
        meta = json.load(f)
    factors = [float(r.getMessage().rsplit(" ", 1)[1]) for r in caplog.records
               if "Gradient clipping" in r.getMessage()]
    assert len(factors) == len(meta["clip_scale_factors"])
    np.testing.assert_allclose(factors, meta["clip_scale_factors"], rtol=1e-4)
