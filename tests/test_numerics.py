"""NaN / Inf in the loss or a gradient stops training with NumericalError
naming the iteration and the first layer; the last snapshot stays valid."""

import glob
import os

import numpy as np
import pytest

import protonet
from protonet import io, numerics
from protonet.errors import NumericalError

NET = """name: "nan"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
    data_filler { type: "constant" value: %s } data_filler { type: "constant" value: -5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.1 } } }
layer { name: "log" type: "Log" bottom: "ip" top: "logip" }
layer { name: "loss" type: "EuclideanLoss" bottom: "logip" bottom: "label" top: "loss" }
"""

SOLVER = """net: "net.prototxt"
base_lr: %s
lr_policy: "fixed"
max_iter: 10
snapshot: 1
snapshot_prefix: "snap"
random_seed: 1
"""


def _solver(tmp_path, monkeypatch, value="1", lr="0.01"):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET % value)
    (tmp_path / "solver.prototxt").write_text(SOLVER % lr)
    return protonet.get_solver(str(tmp_path / "solver.prototxt"))


def test_nan_in_forward_names_layer_and_iteration(tmp_path, monkeypatch):
    # data -1 -> ip = -0.3 -> log(-0.3) = NaN at layer 'log', iteration 0.
    s = _solver(tmp_path, monkeypatch, value="-1")
    with np.errstate(all="ignore"), pytest.raises(NumericalError) as info:
        s.solve()
    msg = str(info.value)
    assert "iteration 0" in msg and "layer 'log'" in msg and "top 0" in msg
    assert not glob.glob(str(tmp_path / "snap_iter_*"))
    np.testing.assert_array_equal(s.net.params["ip"][0].data, np.float32(0.1))  # no update


def test_divergence_keeps_last_snapshot_valid(tmp_path, monkeypatch):
    # A huge learning rate: finite for a few steps, then Inf/NaN.
    s = _solver(tmp_path, monkeypatch, value="1", lr="0.3")
    with np.errstate(all="ignore"), pytest.raises(NumericalError) as info:
        s.solve()
    it = s.iter
    assert f"iteration {it}" in str(info.value) and "layer '" in str(info.value)
    snaps = sorted(glob.glob(str(tmp_path / "snap_iter_*.caffemodel")))
    assert snaps, "expected at least one good snapshot before divergence"
    last = str(tmp_path / f"snap_iter_{it}.caffemodel")
    assert last in snaps
    net = protonet.Net(str(tmp_path / "net.prototxt"), phase=protonet.TRAIN)
    net.copy_from(last)                       # loads, and holds finite values
    assert all(np.isfinite(b.data).all() for bs in net.params.values() for b in bs)
    io.read_solverstate(last.replace(".caffemodel", ".solverstate"))


def test_gradient_nan_with_finite_loss(tmp_path, monkeypatch):
    s = _solver(tmp_path, monkeypatch)
    s.net.forward_from_to()
    s.net.backward_from_to()
    s.net.params["ip"][0].diff[0, 1] = np.inf
    with pytest.raises(NumericalError, match="iteration 7: a gradient.*layer "
                       "'ip' \\(parameter 0 gradient\\)"):
        numerics.check_step(s.net, 7, np.float32(1.0))
    s.net.params["ip"][0].diff[...] = 0
    numerics.check_step(s.net, 7, np.float32(1.0))   # finite: no error


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_one_bad_value_in_any_block(monkeypatch, bad):
    monkeypatch.setattr(numerics, "BLOCK", 1000)  # many blocks, both cores
    arrays = [np.ones(5000, np.float32), np.ones((70, 90), np.float32)]
    assert numerics.all_finite(arrays)
    for a in arrays:
        for i in (0, a.size // 2, a.size - 1):
            a.flat[i] = bad
            assert not numerics.all_finite(arrays)
            a.flat[i] = 1


def test_all_finite_is_not_fooled_by_a_sum_that_overflows():
    # Finite float32 values whose float32 sum is Inf are finite.
    big = np.full(4096, 3e38, np.float32)
    with np.errstate(over="ignore"):
        assert np.isinf(np.sum(big))
    assert numerics.all_finite([big])
    big[7] = np.nan
    assert not numerics.all_finite([big])
