"""lr_policy "plateau" [protonet]: the schedule, its use by the solver, its
errors, and an exact resume in the middle of a plateau."""

import logging

import numpy as np
import pytest

import protonet
from protonet import caffelog
from protonet.errors import SolverError
from protonet.lr_policy import Plateau, check_policy
from protonet.proto import caffe_pb2


def _param(**plateau):
    p = caffe_pb2.SolverParameter(base_lr=0.1, gamma=0.1, lr_policy="plateau",
                                  test_interval=10)
    for k, v in plateau.items():
        setattr(p.plateau_param, k, v)
    return p


def _run(schedule, values):
    return [(schedule.observe(v), schedule.rate) for v in values]


def test_reduces_after_patience_passes_without_improvement():
    s = Plateau(_param(patience=2))
    steps = _run(s, [1.0, 0.9, 0.95, 0.91, 0.92, 0.93])
    # best 0.9 after pass 2; passes 3 and 4 do not improve -> reduce at 4.
    assert [r for r, _ in steps] == [False, False, False, True, False, True]
    assert s.rate == pytest.approx(0.001) and s.reductions == 2


def test_improvement_resets_the_count_and_threshold_is_relative():
    s = Plateau(_param(patience=2, threshold=0.1))
    # 0.95 is better than 1.0 but not by 10 %: no improvement.
    assert _run(s, [1.0, 0.95, 0.85])[-1] == (False, pytest.approx(0.1))
    assert s.best == pytest.approx(0.85) and s.bad == 0
    assert _run(s, [0.8, 0.8]) == [(False, pytest.approx(0.1)),
                                   (True, pytest.approx(0.01))]


def test_max_mode_for_accuracy():
    s = Plateau(_param(patience=1, monitor="accuracy", mode=1))
    assert [r for r, _ in _run(s, [0.5, 0.6, 0.6, 0.4, 0.7])] == \
        [False, False, True, True, False]


def test_cooldown_and_floor():
    s = Plateau(_param(patience=1, cooldown=2, min_lr=0.0005))
    steps = _run(s, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # Reduce at pass 2; passes 3-4 are cooldown; reduce at 5; cooldown 6-7;
    # pass 8 would go to 1e-4 but the floor holds it at 5e-4.
    assert [r for r, _ in steps] == [False, True, False, False, True,
                                     False, False, True]
    assert s.rate == pytest.approx(0.0005)


def test_state_round_trip_and_bad_state():
    s = Plateau(_param(patience=3))
    _run(s, [1.0, 2.0, 3.0])
    t = Plateau(_param(patience=3))
    t.set_state(s.state())
    assert _run(t, [4.0, 4.0]) == _run(s, [4.0, 4.0])
    with pytest.raises(SolverError, match="x.json: plateau: malformed state"):
        t.set_state({"rate": "fast"}, "x.json")
    with pytest.raises(SolverError, match="plateau: invalid state"):
        t.set_state(dict(s.state(), rate=float("nan")))


def test_non_finite_monitored_value_is_an_error():
    with pytest.raises(SolverError, match="'loss' is nan"):
        Plateau(_param()).observe(float("nan"))


@pytest.mark.parametrize("fields, message", [
    ({"test_interval": 0}, "needs test_interval > 0"),
    ({"gamma": 1.0}, "gamma: .* must be in \\(0, 1\\)"),
    ({"plateau_param": caffe_pb2.PlateauParameter(patience=0)},
     "plateau_param.patience: invalid value 0"),
    ({"plateau_param": caffe_pb2.PlateauParameter(threshold=-1)},
     "plateau_param.threshold"),
])
def test_check_policy(fields, message):
    p = _param()
    for k, v in fields.items():
        if isinstance(v, caffe_pb2.PlateauParameter):
            p.plateau_param.CopyFrom(v)
        else:
            setattr(p, k, v)
    with pytest.raises(SolverError, match=message):
        check_policy(p, "s.prototxt")


# -- in the solver -------------------------------------------------------------

NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
    data_filler { type: "constant" value: 0.5 }
    data_filler { type: "constant" value: 1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "p"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


def _solver(tmp_path, extra="", monitor="loss"):
    # The test loss goes down, so with mode MAX it "never improves": the rate
    # halves every 2 test passes (test_interval 2).
    text = (f"net_param {{ {NET} }} test_iter: 1 test_interval: 2 "
            "base_lr: 0.05 momentum: 0.9 lr_policy: \"plateau\" gamma: 0.5 "
            f'plateau_param {{ monitor: "{monitor}" mode: MAX patience: 2 }} '
            f"max_iter: 12 display: 1 random_seed: 1 "
            f'snapshot_prefix: "{tmp_path / "snap"}" {extra}')
    return protonet.get_solver(text)


def test_solver_follows_the_plateau_and_logs_it(tmp_path, caplog):
    solver = _solver(tmp_path, "snapshot_after_train: false")
    rates = []
    solver.add_callback(lambda: None, lambda: rates.append(
        solver.plateau.rate))
    with caplog.at_level(logging.INFO, logger=caffelog.LOGGER_NAME):
        solver.solve()
    assert rates == pytest.approx([0.05] * 4 + [0.025] * 4 + [0.0125] * 4)
    assert solver.last_rate == np.float32(0.0125)
    lines = [r.getMessage() for r in caplog.records if "plateau:" in
             r.getMessage()]
    assert lines == [
        "Iteration 4, plateau: loss did not improve for 2 test passes (best "
        f"{caffelog.format_number(solver.plateau.best)}); lr 0.05 -> 0.025",
        "Iteration 8, plateau: loss did not improve for 2 test passes (best "
        f"{caffelog.format_number(solver.plateau.best)}); lr 0.025 -> 0.0125"]


def test_unknown_monitor_names_the_outputs(tmp_path):
    solver = _solver(tmp_path, monitor="accuracy")
    with pytest.raises(SolverError, match="has no output 'accuracy' "
                       r"\(outputs: loss\)"):
        solver.solve()


def test_exact_resume_in_the_middle_of_a_plateau(tmp_path):
    whole = _solver(tmp_path, "snapshot: 6")
    whole.solve()
    resumed = _solver(tmp_path, "snapshot: 0")
    resumed.solve(str(tmp_path / "snap_iter_6.solverstate"))
    assert resumed.plateau.state() == whole.plateau.state()
    for name in ("fc",):
        for a, b in zip(whole.net.params[name], resumed.net.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
