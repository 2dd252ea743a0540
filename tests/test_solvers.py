"""Solvers against closed-form updates on a tiny least-squares problem, and
the training loop's bookkeeping (snapshots, resume, tests, errors, logs)."""

import logging
import os
import re

import numpy as np
import pytest

import protonet
from protonet import caffelog, io
from protonet.errors import NumericalError, SolverError

N, D, K = 4, 3, 2
RNG = np.random.default_rng(3)
X = RNG.normal(size=(N, D)).astype(np.float32)
Y = RNG.normal(size=(N, K)).astype(np.float32)

LS_NET = """
name: "ls"
layer { name: "data" type: "Input" top: "x" top: "y"
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "p"
  param { lr_mult: 1 decay_mult: 3 } param { lr_mult: 2 decay_mult: 0.5 }
  inner_product_param { num_output: 2
    weight_filler { type: "gaussian" std: 0.5 }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


def ls_solver(settings, net=LS_NET, tmp_path=None, cls=None):
    text = f"net_param {{ {net} }}\nsolver_mode: CPU\nrandom_seed: 1\n{settings}"
    if tmp_path is not None:
        text += f'\nsnapshot_prefix: "{tmp_path / "snap"}"'
    solver = cls(text) if cls else protonet.get_solver(text)
    if solver.net.layers[0].type == "Input":
        solver.net.blobs["x"].data[...] = X
        solver.net.blobs["y"].data[...] = Y
    return solver


def ls_grad(W, b):
    R = X.astype(np.float64) @ W.T + b - Y
    return R.T @ X / N, R.sum(0) / N


def reference(kind, W, b, iters, base_lr, momentum=0.9, wd=0.01, gamma=0.5,
              stepsize=2, delta=1e-8, momentum2=0.999, rms_decay=0.98,
              l1=False, clip=-1.0):
    """float64 textbook updates (decay_mult 3 / 0.5, lr_mult 1 / 2)."""
    params = [W.astype(np.float64), b.astype(np.float64)]
    lr_mult, decay_mult = [1, 2], [3, 0.5]
    hist = [np.zeros_like(p) for p in params]
    hist2 = [np.zeros_like(p) for p in params]
    for it in range(iters):
        rate = base_lr * gamma ** (it // stepsize)
        grads = list(ls_grad(*params))
        if clip >= 0:
            norm = np.sqrt(sum((g ** 2).sum() for g in grads))
            if norm > clip:
                grads = [g * clip / norm for g in grads]
        for i, p in enumerate(params):
            g = grads[i] + wd * decay_mult[i] * (np.sign(p) if l1 else p)
            lr = rate * lr_mult[i]
            if kind == "SGD":
                hist[i] = momentum * hist[i] + lr * g
                step = hist[i]
            elif kind == "Nesterov":
                old = hist[i]
                hist[i] = momentum * old + lr * g
                step = (1 + momentum) * hist[i] - momentum * old
            elif kind == "AdaGrad":
                hist[i] = hist[i] + g * g
                step = lr * g / (np.sqrt(hist[i]) + delta)
            elif kind == "RMSProp":
                hist[i] = rms_decay * hist[i] + (1 - rms_decay) * g * g
                step = lr * g / (np.sqrt(hist[i]) + delta)
            elif kind == "AdaDelta":
                hist[i] = momentum * hist[i] + (1 - momentum) * g * g
                u = g * np.sqrt((hist2[i] + delta) / (hist[i] + delta))
                hist2[i] = momentum * hist2[i] + (1 - momentum) * u * u
                step = lr * u
            elif kind == "Adam":
                t = it + 1
                hist[i] = momentum * hist[i] + (1 - momentum) * g
                hist2[i] = momentum2 * hist2[i] + (1 - momentum2) * g * g
                corr = np.sqrt(1 - momentum2 ** t) / (1 - momentum ** t)
                step = lr * corr * hist[i] / (np.sqrt(hist2[i]) + delta)
            params[i] = p - step
    return params, hist + (hist2 if kind in ("AdaDelta", "Adam") else [])


CASES = {
    "SGD": ("base_lr: 0.1 momentum: 0.9", {"base_lr": 0.1}),
    "Nesterov": ("base_lr: 0.1 momentum: 0.9", {"base_lr": 0.1}),
    "AdaGrad": ("base_lr: 0.1 delta: 1e-8", {"base_lr": 0.1}),
    "RMSProp": ("base_lr: 0.01 rms_decay: 0.98 delta: 1e-8", {"base_lr": 0.01}),
    "AdaDelta": ("base_lr: 1.0 momentum: 0.95 delta: 1e-6",
                 {"base_lr": 1.0, "momentum": 0.95, "delta": 1e-6}),
    "Adam": ("base_lr: 0.01 momentum: 0.9 momentum2: 0.999 delta: 1e-8",
             {"base_lr": 0.01}),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_update_matches_closed_form(kind):
    text, kw = CASES[kind]
    solver = ls_solver(f'type: "{kind}" {text} weight_decay: 0.01 '
                       'lr_policy: "step" gamma: 0.5 stepsize: 2')
    assert type(solver).__name__ == f"{kind}Solver"
    W0, b0 = (blob.data.copy() for blob in solver.net.params["fc"])
    solver.step(5)
    (W, b), hist = reference(kind, W0, b0, 5, **kw)
    np.testing.assert_allclose(solver.net.params["fc"][0].data, W, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(solver.net.params["fc"][1].data, b, rtol=2e-5, atol=1e-6)
    assert len(solver.history) == len(hist)
    for mine, ref in zip(solver.history, hist):
        np.testing.assert_allclose(mine, ref, rtol=1e-4, atol=1e-6)
    assert solver.iter == 5


def test_l1_regularization_and_clipping_closed_form():
    solver = ls_solver('base_lr: 0.1 momentum: 0.9 weight_decay: 0.01 '
                       'regularization_type: "L1" clip_gradients: 0.05 '
                       'lr_policy: "step" gamma: 0.5 stepsize: 2')
    W0, b0 = (blob.data.copy() for blob in solver.net.params["fc"])
    norm = np.sqrt(sum((g ** 2).sum() for g in ls_grad(W0, b0)))
    assert norm > 0.05         # clipping really happens
    solver.step(4)
    (W, b), _ = reference("SGD", W0, b0, 4, 0.1, l1=True, clip=0.05)
    np.testing.assert_allclose(solver.net.params["fc"][0].data, W, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(solver.net.params["fc"][1].data, b, rtol=2e-5, atol=1e-6)


def test_lr_mult_zero_leaves_blob_untouched():
    net = LS_NET.replace("param { lr_mult: 1 decay_mult: 3 }",
                         "param { lr_mult: 0 decay_mult: 3 }")
    solver = ls_solver("base_lr: 0.1 momentum: 0.9 weight_decay: 0.1 "
                       'lr_policy: "fixed"', net=net)
    W0, b0 = (blob.data.copy() for blob in solver.net.params["fc"])
    solver.step(3)
    np.testing.assert_array_equal(solver.net.params["fc"][0].data, W0)
    assert not np.allclose(solver.net.params["fc"][1].data, b0)


def test_decay_mult_scales_weight_decay():
    """With a zero gradient (x = 0, y = b) only decay moves the weights."""
    solver = ls_solver('base_lr: 0.5 momentum: 0 weight_decay: 0.1 lr_policy: "fixed"')
    solver.net.blobs["x"].data[...] = 0
    W0 = solver.net.params["fc"][0].data.copy()
    solver.net.blobs["y"].data[...] = solver.net.params["fc"][1].data
    solver.step(1)
    # decay_mult 3: w <- w - 0.5 * 0.1 * 3 * w
    np.testing.assert_allclose(solver.net.params["fc"][0].data,
                               W0 * (1 - 0.15), rtol=1e-6)


def _write_h5(path, x, y):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f["x"] = x
        f["y"] = y


H5_NET = """
name: "h5ls"
layer { name: "data" type: "HDF5Data" top: "x" top: "y"
  hdf5_data_param { source: "%s" batch_size: %d %s } }
%s
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "p"
  inner_product_param { num_output: 2
    weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


def _h5_data(tmp_path, files=1, rows=16):
    rng = np.random.default_rng(5)
    names = []
    for k in range(files):
        name = str(tmp_path / f"d{k}.h5")
        _write_h5(name, rng.normal(size=(rows, 3)).astype(np.float32),
                  rng.normal(size=(rows, 2)).astype(np.float32))
        names.append(name)
    src = tmp_path / "list.txt"
    src.write_text("\n".join(names) + "\n")
    return str(src)


def test_iter_size_equals_bigger_batch(tmp_path):
    src = _h5_data(tmp_path)
    a = ls_solver('base_lr: 0.1 momentum: 0.9 weight_decay: 0.01 '
                  'lr_policy: "fixed" iter_size: 2', net=H5_NET % (src, 4, "", ""))
    b = ls_solver('base_lr: 0.1 momentum: 0.9 weight_decay: 0.01 '
                  'lr_policy: "fixed"', net=H5_NET % (src, 8, "", ""))
    b.net.copy_from(a.net.to_proto())
    a.step(4)
    b.step(4)
    np.testing.assert_allclose(a.net.params["fc"][0].data,
                               b.net.params["fc"][0].data, rtol=1e-5, atol=1e-6)


RESUME = ('type: "Adam" base_lr: 0.01 lr_policy: "multistep" gamma: 0.5 '
          'stepvalue: 1 stepvalue: 4 snapshot: 3 display: 1 max_iter: 6 %s')
DROPOUT = ('layer { name: "drop" type: "Dropout" bottom: "x" top: "x" '
           'dropout_param { dropout_ratio: 0.3 } }')


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_resume_is_exact(tmp_path, fmt):
    src = _h5_data(tmp_path, files=2, rows=10)
    net = H5_NET % (src, 4, "shuffle: true", DROPOUT)
    settings = RESUME % f"snapshot_format: {fmt}"
    full = ls_solver(settings, net=net, tmp_path=tmp_path / "full")
    full.step(6)

    half = ls_solver(settings, net=net, tmp_path=tmp_path)
    half.step(3)
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    state = str(tmp_path / "snap_iter_3") + ext
    assert os.path.exists(state)
    assert os.path.exists(state + ".protonet.json")
    resumed = ls_solver(settings, net=net, tmp_path=tmp_path / "other")
    resumed.restore(state)
    assert resumed.iter == 3 and resumed.current_step == 1
    resumed.step(3)
    assert resumed.current_step == 2
    for a, b in zip(full.net.learnable_params, resumed.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
    for a, b in zip(full.history, resumed.history):
        np.testing.assert_array_equal(a, b)


def test_solverstate_loadable_as_caffe_message(tmp_path):
    solver = ls_solver('type: "AdaDelta" base_lr: 1 momentum: 0.9 lr_policy: "fixed"',
                       tmp_path=tmp_path)
    solver.step(2)
    model, state_file = solver.snapshot()
    state = io.read_solverstate(state_file)
    assert state.iter == 2 and state.learned_net == model
    # AdaDelta: gradient histories then update histories, one per param.
    assert [tuple(h.shape.dim) for h in state.history] == [(2, 3), (2,)] * 2
    assert io.read_caffemodel(model).layer[1].name == "fc"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_loss_raises_and_keeps_last_snapshot(tmp_path):
    solver = ls_solver('base_lr: 1e4 momentum: 0.9 lr_policy: "fixed" '
                       'snapshot: 1', tmp_path=tmp_path)
    with pytest.raises(NumericalError, match=r"iteration \d+"):
        solver.step(100)
    bad = solver.iter
    assert bad > 1
    assert os.path.exists(f"{tmp_path}/snap_iter_{bad}.caffemodel")
    assert not os.path.exists(f"{tmp_path}/snap_iter_{bad + 1}.caffemodel")
    good = io.read_caffemodel(f"{tmp_path}/snap_iter_{bad}.caffemodel")
    assert np.all(np.isfinite(io.blob_to_array(good.layer[1].blobs[0])))


def test_errors_before_training(tmp_path):
    missing = tmp_path / "solver.prototxt"
    missing.write_text('net: "nope.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    with pytest.raises(SolverError, match=r"solver\.prototxt.*net.*nope\.prototxt"):
        protonet.get_solver(str(missing))
    with pytest.raises(SolverError, match="type.*'Foo'"):
        ls_solver('type: "Foo"')
    with pytest.raises(SolverError, match="lr_policy.*'cosine'"):
        ls_solver('lr_policy: "cosine"')
    with pytest.raises(SolverError, match="regularization_type.*'L3'"):
        ls_solver('lr_policy: "fixed" regularization_type: "L3"')
    with pytest.raises(SolverError, match="test_iter"):
        ls_solver(f'lr_policy: "fixed" test_net_param {{ {LS_NET} }} '
                  f'test_net_param {{ {LS_NET} }} test_iter: 1 test_interval: 1')


def test_several_test_nets_share_trained_weights():
    net = LS_NET + ('layer { name: "extra" type: "Power" bottom: "p" top: "q" '
                    'include { stage: "more" } }')
    solver = ls_solver(
        f'lr_policy: "fixed" base_lr: 0.1 test_net_param {{ {net} }} '
        'test_iter: 2 test_iter: 1 test_interval: 2 test_initialization: false '
        'test_state { stage: "more" } test_state { }')
    assert len(solver.test_nets) == 2
    assert "q" in solver.test_nets[0].blobs and "q" not in solver.test_nets[1].blobs
    for tn in solver.test_nets:
        tn.blobs["x"].data[...] = X
        tn.blobs["y"].data[...] = Y
    solver.step(3)          # tests run at iteration 2
    assert len(solver.test_results) == 2
    for tn in solver.test_nets:
        np.testing.assert_array_equal(tn.params["fc"][0].data,
                                      solver.net.params["fc"][0].data)
        assert tn.params["fc"][0].data is not solver.net.params["fc"][0].data


def test_snapshot_every_and_after_train(tmp_path):
    solver = ls_solver('lr_policy: "fixed" base_lr: 0.01 snapshot: 2 max_iter: 5',
                       tmp_path=tmp_path)
    solver.solve()
    names = sorted(os.listdir(tmp_path))
    for it in (2, 4, 5):
        assert f"snap_iter_{it}.caffemodel" in names
        assert f"snap_iter_{it}.solverstate" in names
    assert solver.iter == 5


def test_action_request_stop_and_snapshot(tmp_path):
    calls = []

    def request():
        calls.append(1)
        return {2: "snapshot", 3: "stop"}.get(len(calls), "none")
    solver = ls_solver('lr_policy: "fixed" base_lr: 0.01 max_iter: 10 '
                       'snapshot_after_train: false', tmp_path=tmp_path)
    solver.action_request = request
    solver.solve()
    assert solver.iter == 3
    assert os.listdir(tmp_path) != [] and \
        "snap_iter_2.caffemodel" in os.listdir(tmp_path)


def test_random_seed_makes_fillers_reproducible():
    a = ls_solver('lr_policy: "fixed"')
    b = ls_solver('lr_policy: "fixed"')
    np.testing.assert_array_equal(a.net.params["fc"][0].data,
                                  b.net.params["fc"][0].data)
    c = protonet.get_solver(f'net_param {{ {LS_NET} }} random_seed: 2 '
                            'solver_mode: CPU lr_policy: "fixed"')
    assert not np.array_equal(a.net.params["fc"][0].data,
                              c.net.params["fc"][0].data)


def test_gpu_mode_warns():
    with pytest.warns(UserWarning, match="CPU"):
        protonet.get_solver(f'net_param {{ {LS_NET} }} lr_policy: "fixed" '
                            'solver_mode: GPU')


def test_pycaffe_api(tmp_path):
    (tmp_path / "net.prototxt").write_text(LS_NET)
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "net.prototxt" base_lr: 0.01 lr_policy: "fixed" '
                    'max_iter: 2 solver_mode: CPU')
    solver = protonet.SGDSolver(str(path))     # net path relative to the solver
    assert solver.param.snapshot_prefix == str(tmp_path / "solver")
    assert solver.test_nets == [] and solver.iter == 0
    solver.solve()
    assert solver.iter == 2
    assert os.path.exists(str(tmp_path / "solver_iter_2.caffemodel"))
    assert "SGDSolver" in repr(solver)


def test_display_lines_and_average_loss(caplog):
    solver = ls_solver('lr_policy: "fixed" base_lr: 0.05 display: 1 average_loss: 3')
    with caplog.at_level(logging.INFO, logger="protonet.caffe"):
        solver.step(5)
    msgs = [r.getMessage() for r in caplog.records]
    displayed = [float(m.split("loss = ")[1]) for m in msgs
                 if re.match(r"Iteration \d+, loss = ", m)]
    outputs = [float(m.split(" = ")[1].split()[0]) for m in msgs
               if m.startswith("    Train net output #0: loss = ")]
    assert len(displayed) == len(outputs) == 5
    assert all("(* 1 = " in m for m in msgs if "Train net output" in m)
    # average_loss 3: the mean of the last (up to) 3 losses.
    expected = [np.mean(outputs[max(0, i - 2):i + 1]) for i in range(5)]
    np.testing.assert_allclose(displayed, expected, rtol=2e-5)
    assert any(re.fullmatch(r"Iteration 0, lr = 0\.05", m) for m in msgs)
    line = caffelog.GlogFormatter().format(caplog.records[0])
    assert re.match(r"I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \w+\.cpp:\d+\] ", line)


def test_test_compute_loss_and_test_initialization(caplog):
    solver = ls_solver(f'lr_policy: "fixed" base_lr: 0.01 test_net_param {{ {LS_NET} }} '
                       'test_iter: 2 test_interval: 5 test_compute_loss: true')
    tn = solver.test_nets[0]
    tn.blobs["x"].data[...] = X
    tn.blobs["y"].data[...] = Y
    W0, b0 = (blob.data.astype(np.float64) for blob in solver.net.params["fc"])
    with caplog.at_level(logging.INFO, logger="protonet.caffe"):
        solver.step(1)          # test_initialization (default true): test at 0
    msgs = [r.getMessage() for r in caplog.records]
    assert "Iteration 0, Testing net (#0)" in msgs
    assert any(m.startswith("Test loss: ") for m in msgs)
    # The test ran with the train net's initial weights, before the update.
    expected = 0.5 * ((X @ W0.T + b0 - Y) ** 2).sum() / N
    assert solver.test_loss[0] == pytest.approx(expected, rel=1e-5)
    assert solver.test_results[0]["loss"][0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("reg", ["L2", "L1"])
def test_fused_sgd_update_is_bit_identical_to_the_step_by_step_one(
        monkeypatch, reg):
    """SGDSolver.update_params (blocked, over threads) against the base
    class's normalize / regularize / compute_update_value / subtract."""
    from protonet import caffe_pb2
    from protonet.solvers import base, sgd
    monkeypatch.setenv("PROTONET_THREADS", "2")
    monkeypatch.setattr(sgd, "BLOCK", 1000)  # several blocks per param
    text = open(os.path.join(os.path.dirname(__file__), "fixtures",
                             "caffe_ref", "nets", "lenet",
                             "net.prototxt")).read()

    def train(fused):
        protonet.set_random_seed(1)
        s = protonet.get_solver(caffe_pb2.SolverParameter(
            net_param=io.parse_net_text(text), base_lr=0.01,
            lr_policy="fixed", momentum=0.9, weight_decay=5e-3, max_iter=5,
            display=0, snapshot_after_train=False, iter_size=2,
            regularization_type=reg))
        if not fused:
            s.update_params = lambda rate: base.Solver.update_params(s, rate)
        rng = np.random.RandomState(0)
        for _ in range(3):
            for b in s.net.learnable_params:
                b.diff[...] = rng.randn(*b.shape)
            s.apply_update()
        return [b.data.copy() for b in s.net.learnable_params] + \
            [b.diff.copy() for b in s.net.learnable_params] + s.history
    for got, want in zip(train(True), train(False)):
        np.testing.assert_array_equal(got, want)


def test_sgd_subclass_overriding_a_step_keeps_it():
    """The fused update must not bypass a subclass's own regularize."""
    from protonet import caffe_pb2
    from protonet.solvers.sgd import SGDSolver
    calls = []

    class NoDecaySGD(SGDSolver):
        def regularize(self, i, blob):
            calls.append(i)

    text = open(os.path.join(os.path.dirname(__file__), "fixtures",
                             "caffe_ref", "nets", "lenet",
                             "net.prototxt")).read()
    s = NoDecaySGD(caffe_pb2.SolverParameter(
        net_param=io.parse_net_text(text), base_lr=0.1, lr_policy="fixed",
        momentum=0.0, weight_decay=1.0, max_iter=1, display=0,
        snapshot_after_train=False))
    before = [b.data.copy() for b in s.net.learnable_params]
    for b in s.net.learnable_params:
        b.diff[...] = 1
    s.apply_update()
    assert calls == list(range(len(before)))
    for b, w, lr in zip(s.net.learnable_params, before,
                        s.net.params_lr):  # no decay term
        np.testing.assert_allclose(b.data, w - np.float32(0.1 * lr),
                                   rtol=1e-6, atol=1e-7)
