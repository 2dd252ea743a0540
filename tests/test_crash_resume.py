"""Crash safety: SIGKILL a CLI training run at random moments (snapshots
every iteration, so many kills land inside a snapshot write); every snapshot
file left on disk loads, and resuming from the newest one ends with weights
equal, bit for bit, to an uninterrupted run."""

import glob
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from protonet import io

NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 8 dim: 16 } shape { dim: 8 dim: 4 }
    data_filler { type: "constant" value: 0.5 }
    data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
SOLVER = """net: "{folder}/net.prototxt"
base_lr: 0.01
momentum: 0.9
lr_policy: "fixed"
max_iter: {iters}
snapshot: 1
snapshot_prefix: "{folder}/snap"
random_seed: 7
display: 0
"""
ITERS = 40


def _setup(folder):
    folder.mkdir()
    (folder / "net.prototxt").write_text(NET)
    (folder / "solver.prototxt").write_text(SOLVER.format(folder=folder,
                                                          iters=ITERS))
    return folder / "solver.prototxt"


def _cmd(solver, *extra):
    return [sys.executable, "-m", "protonet.cli", "train",
            f"--solver={solver}", *extra]


def _iter_of(path):
    return int(re.search(r"_iter_(\d+)\.", path).group(1))


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path):
    ref = _setup(tmp_path / "ref")
    t0 = time.time()
    subprocess.run(_cmd(ref), check=True, capture_output=True, timeout=120)
    full_time = time.time() - t0
    final = (tmp_path / "ref" / f"snap_iter_{ITERS}.caffemodel").read_bytes()

    rng = random.Random(1234)
    for trial in range(20):
        folder = tmp_path / f"t{trial}"
        solver = _setup(folder)
        proc = subprocess.Popen(_cmd(solver), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, max(0.4, full_time * 0.95)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Every snapshot file on disk is complete (no torn writes).
        states = glob.glob(str(folder / "snap_iter_*.solverstate"))
        for p in glob.glob(str(folder / "snap_iter_*.caffemodel")):
            io.read_caffemodel(p)
        for p in states:
            io.read_solverstate(p)
        assert not [p for p in os.listdir(folder) if p.endswith(".tmp")
                    and not p.startswith(".")], "stray temp file"
        # Resume from the newest complete snapshot (a solverstate whose
        # weights file exists), or start over when none was written.
        usable = [p for p in states
                  if os.path.exists(p.replace(".solverstate", ".caffemodel"))]
        extra = [f"--snapshot={max(usable, key=_iter_of)}"] if usable else []
        subprocess.run(_cmd(solver, *extra), check=True, capture_output=True,
                       timeout=120)
        got = (folder / f"snap_iter_{ITERS}.caffemodel").read_bytes()
        assert got == final, f"trial {trial}: resumed weights differ"
