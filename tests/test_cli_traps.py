"""The CLI's traps (issue 17, and the messages of issue 21): flags over a
solver file, per-command help, the file kind from its fields, the progress
bar on a terminal, `python -m protonet`, file modes and strict inputs.
Called in-process through cli.main([...]) where possible."""

import io
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from protonet import caffelog, cli
from protonet import io as pio
from protonet.errors import ProtonetError

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_ref",
                      "train", "lr_multistep")


@pytest.fixture
def case(tmp_path, monkeypatch):
    d = tmp_path / "case"
    shutil.copytree(GOLDEN, d)
    monkeypatch.chdir(d)
    for f in d.glob("snapshot_iter_*"):
        f.unlink()
    return d


def _msgs(err):
    return [line.split("] ", 1)[1] for line in err.splitlines()
            if re.match(r"[IWEF]\d{4} ", line)]


# -- 1. flags override a solver file, and the log says which --------------

def test_flags_override_the_solver_file_and_are_logged(case, capsys):
    assert cli.main(["train", "solver.prototxt", "--max-iter", "2",
                     "--base-lr", "0.5", "-stepvalue=1",
                     "--weights=init.caffemodel"]) == 0
    msgs = _msgs(capsys.readouterr().err)
    assert "Overriding solver max_iter: 40 -> 2" in msgs
    assert "Overriding solver base_lr: 0.05 -> 0.5" in msgs
    assert "Overriding solver stepvalue: 10,25,35 -> 1" in msgs
    # only the flags given: no default overrides the file's momentum etc.
    assert [m for m in msgs if m.startswith("Overriding")] == [
        "Overriding solver base_lr: 0.05 -> 0.5",
        "Overriding solver stepvalue: 10,25,35 -> 1",
        "Overriding solver max_iter: 40 -> 2"]
    assert "Iteration 0, lr = 0.5" in msgs and "Iteration 1, lr = 0.25" in msgs
    assert os.path.exists("snapshot_iter_2.caffemodel")
    assert not os.path.exists("snapshot_iter_40.caffemodel")


def test_caffe_spellings_of_the_override_flags(case, capsys):
    assert cli.main(["train", "-solver", "solver.prototxt", "-max_iter=1",
                     "--snapshot_prefix=other", "--test_iter", "1"]) == 0
    msgs = _msgs(capsys.readouterr().err)
    assert "Overriding solver max_iter: 40 -> 1" in msgs
    assert "Overriding solver snapshot_prefix: snapshot -> other" in msgs
    assert "Overriding solver test_iter: 3 -> 1" in msgs
    assert os.path.exists("other_iter_1.caffemodel")


# -- 7. each command's own --help; every command in "invalid choice" -------

def test_train_help_lists_its_own_flags_with_help_and_defaults(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: protonet train" in out
    assert re.search(r"--base_lr BASE_LR\s+base learning rate \[0\.01\]", out)
    assert re.search(r"--max_iter MAX_ITER\s+iterations to train \[1000\]", out)
    assert re.search(r"--sigint_effect .*\n\s+what SIGINT .*\[default: stop\]",
                     out)
    assert "--model" not in out and "--iterations" not in out


def test_test_help_has_no_solver_flags(capsys):
    assert cli.main(["test", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: protonet test" in out and "--base_lr" not in out
    assert re.search(r"--iterations ITERATIONS\s+number of batches to score "
                     r"\[default: 50\]", out)


def test_invalid_choice_lists_every_command(capsys):
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err
    for name in list(cli.COMMANDS) + list(cli.TOOLS):
        assert f"'{name}'" in err, name


# -- 10. the kind of a text file from its fields; --weights a, -------------

SOLVER_TYPO = 'net: "net.prototxt"\nbase_lr: 0.01\nmomentun: 0.9\n'
SOLVER_ENUM = 'net: "net.prototxt"\nbase_lr: 0.01\n\nsolver_mode: TPU\n'


@pytest.mark.parametrize("text, where, what", [
    (SOLVER_TYPO, ":3:", 'no field named "momentun"'),
    (SOLVER_ENUM, ":4:", "no value named TPU")])
def test_solver_errors_are_reported_as_solver_errors(case, capsys, text,
                                                     where, what):
    (case / "bad.prototxt").write_text(text)
    assert cli.main(["train", "bad.prototxt"]) == 1
    err = capsys.readouterr().err
    assert f"bad.prototxt{where}" in err and what in err
    assert "SolverParameter" in err and "NetParameter" not in err


def test_text_kind_counts_top_level_fields():
    from protonet import cliflags
    assert cliflags.text_kind(SOLVER_TYPO) == "solver"
    assert cliflags.text_kind('# net: "x"\nname: "n"\nlayer { name: "a" '
                              'type: "Input" top: "a" }') == "net"
    # a net field nested in a solver's net_param does not make it a net
    assert cliflags.text_kind('base_lr: 0.1\nnet_param { name: "n" layer '
                              '{ name: "a" } }') == "solver"
    assert cliflags.text_kind('layr { name: "a" }') == "net"


def test_upgrade_uses_the_kind_of_the_file(case, tmp_path, capsys):
    (case / "bad.prototxt").write_text(SOLVER_TYPO)
    assert cli.main(["upgrade", "bad.prototxt", "out.prototxt"]) == 1
    assert "momentun" in capsys.readouterr().err


@pytest.mark.parametrize("weights", ["final.caffemodel,", ",final.caffemodel",
                                     "final.caffemodel,,init.caffemodel"])
def test_a_stray_comma_in_weights_is_named(case, capsys, weights):
    assert cli.main(["test", "--model=net.prototxt", f"--weights={weights}",
                     "--iterations=1"]) == 1
    err = capsys.readouterr().err
    assert "--weights" in err and "stray comma" in err
    assert "file not found" not in err and "<string>" not in err


# -- 10. environment variables parsed strictly -----------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "abc", "-5", "0"])
def test_mpi_timeout_is_parsed_strictly(monkeypatch, value):
    from protonet import parallel

    class Comm:
        def Get_rank(self):
            return 0

        def Get_size(self):
            return 2
    monkeypatch.setenv("PROTONET_MPI_TIMEOUT", value)
    with pytest.raises(ProtonetError, match=rf"PROTONET_MPI_TIMEOUT='{value}'"):
        parallel.DataParallel(Comm())


def test_other_variables_are_parsed_strictly(monkeypatch):
    from protonet import envvars, parallel, threads
    monkeypatch.setenv("PROTONET_THREADS", "0")
    with pytest.raises(ProtonetError, match="PROTONET_THREADS='0'.*>= 1"):
        threads.workers()
    monkeypatch.setenv("PROTONET_THREADS", "two")
    with pytest.raises(ProtonetError, match="PROTONET_THREADS='two'"):
        threads.workers()
    monkeypatch.setenv("PROTONET_THREADS", "2")
    assert threads.workers() == 2
    monkeypatch.setenv("PROTONET_DATA_SHARDING", "locale")
    with pytest.raises(ProtonetError, match="PROTONET_DATA_SHARDING='locale'"):
        parallel.sharding()
    monkeypatch.setenv("PROTONET_MPI", "of")
    with pytest.raises(ProtonetError, match="PROTONET_MPI='of'"):
        parallel.launcher_size()
    monkeypatch.setenv("PROTONET_MPI", "OFF")
    monkeypatch.setenv("PMI_SIZE", "2")
    assert parallel.launcher_size() == 1
    monkeypatch.setenv("X_TEST_VAR", " 2.5 ")
    assert envvars.number("X_TEST_VAR", 1.0, positive=True) == 2.5
    monkeypatch.delenv("X_TEST_VAR")
    assert envvars.number("X_TEST_VAR", 7.0) == 7.0


# -- 6. python -m protonet --------------------------------------------------

def test_python_m_protonet_runs_the_cli():
    env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT))
    p = subprocess.run([sys.executable, "-m", "protonet", "device_query"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "protonet runs on the CPU" in p.stderr
    p = subprocess.run([sys.executable, "-m", "protonet", "frobnicate"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "usage: protonet" in p.stderr


# -- 4. files written atomically get 0666 minus the umask ------------------

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_usual_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        pio.atomic_write(tmp_path / "x.caffemodel", b"abc")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "x.caffemodel").st_mode)
    assert mode == 0o666 & ~umask


def test_snapshots_are_readable_by_others(case, capsys):
    old = os.umask(0o022)
    try:
        assert cli.main(["train", "solver.prototxt", "--max_iter=1"]) == 0
    finally:
        os.umask(old)
    for f in ("snapshot_iter_1.caffemodel", "snapshot_iter_1.solverstate"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o644, f


# -- 3. the progress bar ----------------------------------------------------

class FakeTTY(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_bar_shows_rate_eta_loss_and_test_passes():
    from protonet import progress
    clock = Clock()
    bar = progress.ProgressBar(100, FakeTTY(), start=0, clock=clock)
    clock.t = 10.0
    bar.update(20, 0.5)
    assert re.fullmatch(r"train \[#+\.+\]  20/100 2 it/s ETA 0:40 loss 0\.5",
                        bar.text())
    bar.begin_test(0, 10)
    clock.t = 12.0
    for _ in range(4):
        bar.test_step()
    assert re.fullmatch(r"test #0 \[#+\.+\]  4/10 2 it/s ETA 0:03", bar.text())
    clock.t = 30.0
    bar.end_test()
    clock.t = 40.0
    bar.update(40)
    # 40 iterations in 20 s of training: the 20 s test pass is left out
    assert bar.text().startswith("train") and " 40/100 2 it/s ETA 0:30 " \
        in bar.text()
    resumed = progress.ProgressBar(100, FakeTTY(), clock=clock)
    clock.t = 42.0
    resumed.update(91)          # a run resumed at 90: one iteration in 2 s
    assert " 91/100 0.5 it/s ETA 0:18" in resumed.text()


def test_log_lines_never_start_on_the_bar():
    from protonet import progress
    tty = FakeTTY()
    handler = caffelog.enable(tty)
    try:
        with progress.ProgressBar(10, tty, min_interval=0) as bar:
            bar.update(3, 1.25)
            caffelog.info("Iteration 3, loss = 1.25", "solver.cpp:218")
            bar.update(4, 1.0)
    finally:
        caffelog.disable(handler)
    out = tty.getvalue()
    # what a terminal shows: each \r returns to the line start, \x1b[K erases
    screen = [seg.split("\r")[-1].replace("\x1b[K", "")
              for seg in out.split("\n")]
    assert re.fullmatch(r"I\d{4} .*solver\.cpp:218\] Iteration 3, loss = 1\.25",
                        screen[0])
    assert screen[-1] == ""        # the bar is erased at the end
    assert "\r\x1b[KI" in out      # the line was cleared before the log line


def test_train_draws_the_bar_only_on_a_terminal(case, capsys, monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.setenv("TERM", "xterm")
    assert cli.main(["train", "solver.prototxt", "--max_iter=4",
                     "--test_interval=2", "--test_iter=2"]) == 0
    out = tty.getvalue()
    assert re.search(r"train \[[#.]+\] +\d/4 [\d.]+ it/s ETA \d+:\d\d loss "
                     r"[\d.]+", out)
    assert re.search(r"test #0 \[[#.]+\] +\d/2", out)
    glog = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} ")
    for line in out.split("\n"):
        shown = line.split("\r")[-1].replace("\x1b[K", "")
        m = glog.search(shown)
        assert m is None or m.start() == 0, repr(line)   # never glued
        assert "it/s" not in shown, repr(line)           # the bar was erased
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)
    capsys.readouterr()
    assert cli.main(["train", "solver.prototxt", "--max_iter=2"]) == 0
    err = capsys.readouterr().err
    assert "train [" not in err and "\r" not in err      # not a terminal


def test_adagrad_from_flags_needs_no_momentum_flag(tmp_path, monkeypatch):
    """The net-only path's default momentum (0.9) is not given to AdaGrad,
    which refuses any momentum (Caffe's check)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "d" type: "DummyData" top: "x" top: "y" '
        "dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 } "
        'data_filler { type: "gaussian" } } } '
        'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "p" '
        'inner_product_param { num_output: 1 weight_filler { type: "xavier" } } } '
        'layer { name: "l" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "l" }')
    assert cli.main(["train", "net.prototxt", "--type", "AdaGrad",
                     "--max_iter", "2"]) == 0
