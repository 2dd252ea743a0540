"""The error catalogue, solver entry points: poisoned solver values, non-finite
weights at a snapshot, bad snapshot destinations, a snapshot set cut short,
a second trainer on one prefix, absurd resumed iterations, and the output
paths of the tools (compute-mean, upgrade, draw).

Every case ends in a ProtonetError naming the file or field and the value
found, before any training when the value is known at start-up.
"""

import errno
import glob
import json
import os

import lmdb
import numpy as np
import pytest

import protonet
from protonet import caffelog, cli, io
from protonet.errors import NumericalError, OutputError, ProtonetError, SolverError
from protonet.proto import caffe_pb2
from protonet.solvers import snapshot as snap

NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
    data_filler { type: "gaussian" std: 1 }
    data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
BASE = ('net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 4\n'
        'display: 0\nrandom_seed: 3\n')


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def write(tmp_path, extra="", base=BASE):
    (tmp_path / "net.prototxt").write_text(NET)
    path = tmp_path / "solver.prototxt"
    path.write_text(base + extra)
    return str(path)


def fld(base, field, value):
    """`base` with `field` set to `value` (replaced or appended)."""
    lines = [ln for ln in base.splitlines() if not ln.startswith(field + ":")]
    return "\n".join(lines + [f"{field}: {value}"]) + "\n"


# (id, solver text, words in the message). Each is refused when the solver
# is built, before any training.
START_CASES = [
    ("base_lr_nan", fld(BASE, "base_lr", "nan"), ["base_lr", "nan", "finite"]),
    ("base_lr_inf", fld(BASE, "base_lr", "inf"), ["base_lr", "inf"]),
    ("base_lr_negative", fld(BASE, "base_lr", "-0.1"), ["base_lr", "-0.1"]),
    ("momentum_nan", BASE + "momentum: nan\n", ["momentum", "nan"]),
    ("momentum_above_1", BASE + "momentum: 1.5\n", ["momentum", "1.5"]),
    ("weight_decay_inf", BASE + "weight_decay: inf\n", ["weight_decay", "inf"]),
    ("weight_decay_negative", BASE + "weight_decay: -1\n",
     ["weight_decay", "-1"]),
    ("clip_gradients_nan", BASE + "clip_gradients: nan\n",
     ["clip_gradients", "nan"]),
    ("sigmoid_gamma_nan", fld(BASE, "lr_policy", '"sigmoid"') + "gamma: nan\n",
     ["gamma", "nan"]),
    ("inv_power_inf", fld(BASE, "lr_policy", '"inv"') + "gamma: 0.1\n"
     "power: inf\n", ["power", "inf"]),
    ("inv_negative_gamma", fld(fld(BASE, "lr_policy", '"inv"'), "max_iter",
                               "10") + "gamma: -0.5\npower: 0.75\n",
     ["lr_policy 'inv'", "gamma -0.5", "iteration 9", "not a finite"]),
    ("exp_gamma_overflows", fld(fld(BASE, "lr_policy", '"exp"'), "max_iter",
                                "100") + "gamma: 1e30\n",
     ["lr_policy 'exp'", "gamma 1e+30", "iteration 99"]),
    ("exp_gamma_negative", fld(BASE, "lr_policy", '"exp"') + "gamma: -0.5\n",
     ["gamma", "-0.5"]),
    ("multistep_not_increasing", fld(BASE, "lr_policy", '"multistep"')
     + "gamma: 0.1\nstepvalue: 5\nstepvalue: 3\n", ["stepvalue", "[5, 3]"]),
    ("multistep_overflows", fld(BASE, "lr_policy", '"multistep"')
     + "gamma: 1e30\nstepvalue: 1\nstepvalue: 2\n",
     ["lr_policy 'multistep'", "not a finite"]),
    ("adam_momentum_1", BASE + 'type: "Adam"\nmomentum: 1\n',
     ["momentum", "Adam", "got 1"]),
    ("adam_momentum2_1", BASE + 'type: "Adam"\nmomentum: 0.9\nmomentum2: 1\n',
     ["momentum2", "got 1"]),
    ("adam_delta_zero", BASE + 'type: "Adam"\ndelta: 0\n', ["delta", "got 0"]),
    ("adagrad_momentum", BASE + 'type: "AdaGrad"\nmomentum: 0.9\n',
     ["momentum", "AdaGrad"]),
    ("rmsprop_decay_1", BASE + 'type: "RMSProp"\nrms_decay: 1\n',
     ["rms_decay", "got 1"]),
    ("rmsprop_decay_nan", BASE + 'type: "RMSProp"\nrms_decay: nan\n',
     ["rms_decay", "nan"]),
    ("adadelta_momentum_negative", BASE + 'type: "AdaDelta"\nmomentum: -0.5\n',
     ["momentum", "-0.5"]),
    ("test_iter_negative", BASE + 'test_net: "net.prototxt"\ntest_iter: -3\n'
     "test_interval: 2\n", ["test_iter", "-3"]),
    ("average_loss_zero", BASE + "average_loss: 0\n", ["average_loss", "0"]),
    ("display_negative", fld(BASE, "display", "-2"), ["display", "-2"]),
    ("snapshot_empty_prefix", BASE + 'snapshot: 2\nsnapshot_prefix: ""\n',
     ["snapshot_prefix", "empty"]),
]


@pytest.mark.parametrize("case", START_CASES, ids=[c[0] for c in START_CASES])
def test_bad_value_refused_at_start_up(case, tmp_path):
    name, text, words = case
    path = write(tmp_path, base=text)
    with pytest.raises(SolverError) as info:
        protonet.get_solver(path)       # construction alone must refuse it
    msg = str(info.value)
    assert "solver.prototxt" in msg, msg
    for w in words:
        assert w in msg, (name, msg)


def test_pycaffe_class_checks_its_own_rules(tmp_path):
    """SGDSolver(path) runs SGD whatever `type` says; Adam(path) runs Adam."""
    path = write(tmp_path, 'type: "SGD"\nmomentum: 1\nmomentum2: 1\n')
    protonet.SGDSolver(path)            # momentum 1 is defined for SGD
    with pytest.raises(SolverError, match="momentum.*Adam"):
        protonet.AdamSolver(path)


def test_cli_train_refuses_bad_value_before_training(tmp_path, capsys):
    path = write(tmp_path, "weight_decay: nan\nsnapshot: 1\n",
                 base=fld(BASE, "max_iter", "3"))
    assert cli.main(["train", f"--solver={path}"]) == 1
    err = capsys.readouterr().err
    assert "weight_decay" in err and "nan" in err and "Traceback" not in err
    assert not glob.glob(str(tmp_path / "*_iter_*"))


def test_poly_past_max_iter_is_a_clear_error(tmp_path):
    path = write(tmp_path, "power: 1.5\n", base=fld(BASE, "lr_policy", '"poly"'))
    s = protonet.get_solver(path)
    s.step(4)                           # up to max_iter: fine
    with pytest.raises(SolverError, match=r"poly.*past max_iter.*iteration 5"):
        s.step(2)


def test_exp_overflow_past_max_iter_names_the_policy(tmp_path):
    """step() may run past max_iter; the rate's overflow names the policy,
    not the loss layer."""
    path = write(tmp_path, "gamma: 1e10\n", base=fld(fld(
        BASE, "lr_policy", '"exp"'), "max_iter", "2"))
    s = protonet.get_solver(path)
    with pytest.raises((SolverError, NumericalError)) as info:
        s.step(10)
    assert "lr_policy 'exp'" in str(info.value)
    assert "gamma 1e+10" in str(info.value)


def test_golden_style_values_still_accepted(tmp_path):
    for extra in ('type: "Adam"\nmomentum: 0.9\nmomentum2: 0.999\n',
                  'type: "RMSProp"\nrms_decay: 0.98\n',
                  'lr_policy: "inv"\ngamma: 0.0001\npower: 0.75\n',
                  'lr_policy: "sigmoid"\ngamma: -0.3\nstepsize: 2\n'):
        text = "\n".join(ln for ln in BASE.splitlines()
                         if not (ln.startswith("lr_policy") and "lr_policy"
                                 in extra)) + "\n" + extra
        protonet.get_solver(write(tmp_path, base=text)).step(2)


# -- weights checked before every snapshot ----------------------------------

def _finite_caffemodel(path):
    net = io.read_caffemodel(path)
    return all(np.isfinite(io.blob_to_array(b)).all()
               for ly in net.layer for b in ly.blobs)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_overflowing_update_never_reaches_a_snapshot(tmp_path):
    path = write(tmp_path, 'snapshot: 1\nsnapshot_prefix: "snap"\n'
                 "weight_decay: 1e30\n", base=fld(BASE, "base_lr", "1e30"))
    s = protonet.get_solver(path)
    with pytest.raises(NumericalError) as info:
        s.solve()
    msg = str(info.value)
    for w in ("layer 'ip' parameter blob", "base_lr 1e+30",
              "weight_decay 1e+30"):
        assert w in msg, msg
    for model in glob.glob(str(tmp_path / "snap_iter_*.caffemodel")):
        assert _finite_caffemodel(model), model
    # "kept" is said only of a snapshot that exists.
    if "is kept" in msg:
        kept = msg.split("snapshot on disk (")[1].split(")")[0]
        assert os.path.exists(kept)
    else:
        assert "no snapshot was written" in msg


def test_snapshot_refuses_nan_weights_set_by_hand(tmp_path):
    path = write(tmp_path, 'snapshot_prefix: "snap"\n')
    s = protonet.get_solver(path)
    s.net.params["ip"][1].data[1] = np.nan
    with pytest.raises(NumericalError, match=r"layer 'ip' parameter blob 1"):
        s.snapshot()
    assert not glob.glob(str(tmp_path / "snap_iter_*"))


# -- snapshot destination ----------------------------------------------------

def test_prefix_under_a_file_refused_at_start_up(tmp_path):
    (tmp_path / "afile").write_text("x")
    path = write(tmp_path, 'snapshot: 1000\nsnapshot_prefix: "afile/snap"\n')
    with pytest.raises(OutputError, match=r"snapshot_prefix 'afile/snap'.*"
                       r"'afile' is a file"):
        protonet.get_solver(path)


def test_unwritable_prefix_refused_before_training(tmp_path, monkeypatch):
    """A read-only folder (simulated: the tests may run as root, which
    ignores permission bits) is found by the probe, before any iteration."""
    real_open = os.open

    def deny(p, *a, **k):
        if ".protonet-probe" in str(p):
            raise OSError(errno.EROFS, "Read-only file system", p)
        return real_open(p, *a, **k)
    path = write(tmp_path, 'snapshot_prefix: "out/snap"\n')
    s = protonet.get_solver(path)       # snapshot 0: Caffe probes nothing yet
    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(OutputError, match=r"snapshot_prefix 'out/snap'.*"
                       r"Read-only"):
        s.solve()
    assert s.iter == 0


def test_full_disk_leaves_no_half_snapshot(tmp_path, monkeypatch):
    path = write(tmp_path, 'snapshot: 2\nsnapshot_prefix: "snap"\n')
    s = protonet.get_solver(path)
    s.step(2)                           # snapshot 2 complete
    real = io.write_binary

    def full(p, msg):
        if str(p).endswith(".solverstate"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(p, msg)
    monkeypatch.setattr(io, "write_binary", full)
    with pytest.raises(OutputError) as info:
        s.step(2)
    msg = str(info.value)
    assert "snap_iter_4.solverstate" in msg and "disk is full" in msg
    left = sorted(os.listdir(tmp_path))
    assert "snap_iter_4.caffemodel" not in left, left
    assert "snap_iter_4.solverstate.protonet.json" not in left, left
    assert {"snap_iter_2.caffemodel", "snap_iter_2.solverstate",
            "snap_iter_2.solverstate.protonet.json"} <= set(left)


@pytest.mark.parametrize("fmt,ext", [("BINARYPROTO", ""), ("HDF5", ".h5")])
def test_state_file_published_last(tmp_path, monkeypatch, fmt, ext):
    """At every step of a snapshot write, a solverstate on disk has its
    weights and sidecar; an older solverstate of the same iteration is gone
    before its companions are replaced."""
    path = write(tmp_path, f'snapshot_prefix: "snap"\nsnapshot_format: {fmt}\n')
    model, state = f"snap_iter_0.caffemodel{ext}", f"snap_iter_0.solverstate{ext}"
    (tmp_path / state).write_bytes(b"old run")
    seen = []

    def step():
        seen.append(sorted(p for p in os.listdir(tmp_path)
                           if p.startswith("snap_iter_0")))
    monkeypatch.setattr(snap, "_step", step)
    protonet.get_solver(path).snapshot()
    side = state + ".protonet.json"
    assert seen == [[], [model], [model, side], sorted([model, state, side])]


def test_second_trainer_on_one_prefix_fails_at_start(tmp_path, capsys):
    path = write(tmp_path, 'snapshot: 1\nsnapshot_prefix: "snap"\n')
    with snap.PrefixLock("snap", "other"):
        assert cli.main(["train", f"--solver={path}"]) == 1
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and "snap.lock" in err
    assert not glob.glob("snap_iter_*")
    # The lock is released with its holder: training now runs, and leaves
    # no lock file behind.
    assert cli.main(["train", f"--solver={path}"]) == 0
    assert not os.path.exists("snap.lock")


def test_stale_lock_file_does_not_block(tmp_path):
    path = write(tmp_path, 'snapshot_prefix: "snap"\n')
    (tmp_path / "snap.lock").write_text("999999\n")   # a dead owner
    protonet.get_solver(path).solve()
    assert os.path.exists("snap_iter_4.solverstate")


# -- resuming ----------------------------------------------------------------

def _state(tmp_path, it, name="x.solverstate"):
    s = protonet.get_solver(write(tmp_path, 'snapshot_prefix: "snap"\n'))
    model, state_file = s.snapshot()
    st = io.read_solverstate(state_file)
    st.iter = it
    io.write_binary(tmp_path / name, st)
    return str(tmp_path / name)


@pytest.mark.parametrize("it,words", [
    (-1000000, "x.solverstate: 'iter' is -1000000, expected >= 0"),
    (5, "x.solverstate: iter: 5 is beyond the solver's max_iter 4")])
def test_absurd_resumed_iteration_refused(tmp_path, it, words):
    state = _state(tmp_path, it)
    s = protonet.get_solver(str(tmp_path / "solver.prototxt"))
    with pytest.raises(ProtonetError) as info:
        s.solve(state)
    assert words in str(info.value)
    assert s.iter == 0


def test_sidecar_of_another_snapshot_refused(tmp_path):
    state = _state(tmp_path, 2)
    (tmp_path / "x.solverstate.protonet.json").write_text(json.dumps(
        {"format": 1, "iter": 3, "rng": protonet.rng.get_state(), "data": {}}))
    s = protonet.get_solver(str(tmp_path / "solver.prototxt"))
    with pytest.raises(SolverError, match=r"iter 3 does not match.* iter 2"):
        s.restore(state)
    assert s.iter == 0                  # refused before anything changed


def test_missing_sidecar_warns(tmp_path):
    state = _state(tmp_path, 1)
    s = protonet.get_solver(str(tmp_path / "solver.prototxt"))
    lines = []
    handler = caffelog.enable(_Lines(lines))
    try:
        s.restore(state)
    finally:
        caffelog.disable(handler)
    assert any("no sidecar" in ln and "bit for bit" in ln for ln in lines)


class _Lines:
    def __init__(self, lines):
        self.lines = lines

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass


# -- tools' output paths -----------------------------------------------------

def _tiny_lmdb(path):
    env = lmdb.open(str(path), map_size=1 << 20)
    with env.begin(write=True) as txn:
        d = caffe_pb2.Datum(channels=1, height=2, width=2, data=bytes(4))
        txn.put(b"0", d.SerializeToString())
    env.close()


@pytest.mark.parametrize("target,words", [
    ("missing/mean.binaryproto", "does not exist"),
    (".", "is a directory")])
def test_compute_mean_output_path(tmp_path, capsys, target, words):
    _tiny_lmdb(tmp_path / "db")
    assert cli.main(["compute-mean", "db", target]) == 1
    err = capsys.readouterr().err
    assert target in err and words in err and "Traceback" not in err


@pytest.mark.parametrize("target,words", [
    ("missing/new.prototxt", "does not exist"),
    (".", "is a directory")])
def test_upgrade_output_path(tmp_path, capsys, target, words):
    (tmp_path / "net.prototxt").write_text(NET)
    assert cli.main(["upgrade", "net.prototxt", target]) == 1
    err = capsys.readouterr().err
    assert target in err and words in err


def test_draw_output_path(tmp_path, capsys):
    (tmp_path / "net.prototxt").write_text(NET)
    assert cli.main(["draw", "net.prototxt", "nope/net.dot"]) == 1
    err = capsys.readouterr().err
    assert "nope/net.dot" in err and "does not exist" in err


def test_upgrade_full_disk_names_the_path(tmp_path, capsys, monkeypatch):
    (tmp_path / "net.prototxt").write_text(NET)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(io, "atomic_write", full)
    assert cli.main(["upgrade", "net.prototxt", "new.prototxt"]) == 1
    err = capsys.readouterr().err
    assert "new.prototxt" in err and "disk is full" in err


def test_convert_imageset_db_under_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "list.txt").write_text("a.png 0\n")
    assert cli.main(["convert-imageset", str(tmp_path), "list.txt",
                     "afile/db"]) == 1
    err = capsys.readouterr().err
    assert "afile/db" in err and "is a file, not a folder" in err


def test_dataset_out_under_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert cli.main(["dataset", "digits", "--out", "afile/digits"]) == 1
    err = capsys.readouterr().err
    assert "afile/digits" in err and "is a file, not a folder" in err


def test_net_save_to_missing_folder_names_the_path(tmp_path):
    """pycaffe's net.save (and every atomic write) names the path."""
    s = protonet.get_solver(write(tmp_path))
    with pytest.raises(OutputError, match=r"'nope/w.caffemodel'.*No such"):
        s.net.save("nope/w.caffemodel")
