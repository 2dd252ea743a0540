"""Learning-rate policies: Caffe's formulas, the rates of real Caffe runs,
multistep bookkeeping and errors."""

import json
import math
import os

import numpy as np
import pytest

from protonet import io
from protonet.errors import SolverError
from protonet.lr_policy import check_policy, learning_rate
from protonet.proto import caffe_pb2

TRAIN = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_ref", "train")


def sp(**kw):
    return caffe_pb2.SolverParameter(base_lr=0.1, **kw)


def rates(param, n=60):
    out, step = [], 0
    for it in range(n):
        r, step = learning_rate(param, it, step)
        out.append(r)
    return np.array(out)


def f(v):
    """A proto float field's value (float32) as a Python float."""
    return float(np.float32(v))


# Caffe evaluates with the float32 field values.
FORMULAS = [
    (dict(lr_policy="fixed"), lambda i: 0.1),
    (dict(lr_policy="step", gamma=0.5, stepsize=7), lambda i: 0.1 * 0.5 ** (i // 7)),
    (dict(lr_policy="exp", gamma=0.97), lambda i: f(0.1) * f(0.97) ** i),
    (dict(lr_policy="inv", gamma=0.01, power=0.75),
     lambda i: f(0.1) * (1 + f(0.01) * i) ** -0.75),
    (dict(lr_policy="poly", power=1.5, max_iter=60),
     lambda i: 0.1 * (1 - i / 60) ** 1.5),
    (dict(lr_policy="sigmoid", gamma=-0.3, stepsize=20),
     lambda i: f(0.1) / (1 + math.exp(f(0.3) * (i - 20)))),
]


@pytest.mark.parametrize("fields,formula", FORMULAS,
                         ids=[f[0]["lr_policy"] for f in FORMULAS])
def test_policy_formula(fields, formula):
    got = rates(sp(**fields))
    assert got.dtype == np.float32
    want = np.array([formula(i) for i in range(60)])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] == pytest.approx(0.1 if fields["lr_policy"] != "sigmoid"
                                   else formula(0), rel=1e-6)


def test_multistep_advances_once_per_stepvalue():
    p = sp(lr_policy="multistep", gamma=0.1, stepvalue=[3, 5, 9])
    got = rates(p, 12)
    want = [0.1] * 3 + [0.01] * 2 + [0.001] * 4 + [0.0001] * 3
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # current_step is what a .solverstate stores.
    assert learning_rate(p, 10, 2) == (pytest.approx(np.float32(1e-4)), 3)


def test_step_sets_current_step():
    p = sp(lr_policy="step", gamma=0.5, stepsize=10)
    assert learning_rate(p, 25, 0)[1] == 2


@pytest.mark.parametrize("case", sorted(os.listdir(TRAIN)))
def test_rates_of_real_caffe_runs(case):
    folder = os.path.join(TRAIN, case)
    param = io.read_solver(os.path.join(folder, "solver.prototxt"))
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    got = rates(param, len(meta["lr"]))
    np.testing.assert_allclose(got, np.array(meta["lr"], np.float32), rtol=1e-6)
    np.testing.assert_allclose(got, meta["lr_caffe_log"], rtol=1e-5)


@pytest.mark.parametrize("fields,words", [
    (dict(lr_policy="cosine"), "unknown learning rate policy 'cosine'"),
    (dict(), "lr_policy: not set"),
    (dict(lr_policy="step", stepsize=0), "stepsize"),
    (dict(lr_policy="step", stepsize=5, gamma=-1), "gamma"),
    (dict(lr_policy="poly", power=1), "max_iter"),
])
def test_bad_policies(fields, words):
    with pytest.raises(SolverError, match=words) as e:
        check_policy(sp(**fields), "my_solver.prototxt")
    assert "my_solver.prototxt" in str(e.value)
