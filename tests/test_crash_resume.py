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
    for trial in range(12):
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


# -- kills at every step of a snapshot write, with real data readers ---------
#
# A net reading an LMDB (random mirror and crop) and a shuffled HDF5 source,
# with Dropout: a resume repeats the uninterrupted run only if the RNG and
# both readers' positions come back from the sidecar.  The training runs in
# children forked by one driver process (no re-import per run; the driver
# itself never trains, so it holds no threads when it forks).  Each child
# is SIGKILLed at step k of snapshot writing (PROTONET_TEST_KILL_AT_STEP,
# protonet/solvers/snapshot.py): before the weights are published, between
# weights and sidecar, between sidecar and solverstate, after the
# solverstate, for every snapshot of the run.

DATA_NET = """name: "readers"
layer { name: "db" type: "Data" top: "img" top: "lbl"
  transform_param { mirror: true crop_size: 3 scale: 0.0039 }
  data_param { source: "{folder}/db" backend: LMDB batch_size: 4 } }
layer { name: "h5" type: "HDF5Data" top: "x" top: "y"
  hdf5_data_param { source: "{folder}/h5.txt" batch_size: 4 shuffle: true } }
layer { name: "drop" type: "Dropout" bottom: "img" top: "img" }
layer { name: "ip1" type: "InnerProduct" bottom: "img" top: "a"
  inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "x" top: "b"
  inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }
layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "y" top: "loss" }
layer { name: "sink" type: "Silence" bottom: "lbl" }
"""
DATA_ITERS = 4
STEPS_PER_SNAPSHOT = 4

DRIVER = r"""
import glob, json, os, re, sys
from protonet import cli

def run(folder, env, log):
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        os.environ.update(env)
        os.chdir(folder)
        argv = ["train", "--solver=solver.prototxt"]
        states = glob.glob("snap_iter_*.solverstate")
        if env.get("RESUME") and states:
            it = lambda p: int(re.search(r"_iter_(\d+)\.", p).group(1))
            argv.append("--snapshot=" + max(states, key=it))
        os._exit(cli.main(argv))
    return os.waitpid(pid, 0)[1]

out = {}
for folder, kill_at in json.loads(sys.argv[1]):
    env = {"PROTONET_TEST_KILL_AT_STEP": str(kill_at)} if kill_at else {}
    status = run(folder, env, os.path.join(folder, "kill.log"))
    left = sorted(os.listdir(folder))
    resumed = run(folder, {"RESUME": "1"}, os.path.join(folder, "resume.log")) \
        if kill_at else None
    out[folder] = [status, left, resumed]
print(json.dumps(out))
"""


def _readers_setup(folder):
    import h5py
    import lmdb
    import numpy as np
    from protonet.proto import caffe_pb2
    folder.mkdir()
    rng = np.random.default_rng(5)
    env = lmdb.open(str(folder / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        for i in range(10):
            d = caffe_pb2.Datum(channels=1, height=4, width=4, label=i % 3,
                                data=rng.integers(0, 256, 16, np.uint8).tobytes())
            txn.put(f"{i:04d}".encode(), d.SerializeToString())
    env.close()
    with h5py.File(folder / "a.h5", "w") as f:
        f["x"] = rng.standard_normal((7, 3)).astype(np.float32)
        f["y"] = rng.standard_normal((7, 1)).astype(np.float32)
    (folder / "h5.txt").write_text(f"{folder}/a.h5\n")
    (folder / "net.prototxt").write_text(DATA_NET.replace("{folder}",
                                                          str(folder)))
    (folder / "solver.prototxt").write_text(
        SOLVER.format(folder=folder, iters=DATA_ITERS).replace(
            "random_seed: 7", "random_seed: 11"))


def _weights(path):
    """The blobs of a caffemodel (its layer definitions name the folder)."""
    return [(ly.name, [io.blob_to_array(b).tobytes() for b in ly.blobs])
            for ly in io.read_caffemodel(path).layer]


def _history(path):
    return [io.blob_to_array(b).tobytes()
            for b in io.read_solverstate(path).history]


def test_kill_between_every_pair_of_renames_then_resume(tmp_path):
    import json
    kills = list(range(1, DATA_ITERS * STEPS_PER_SNAPSHOT + 1))
    jobs = [(str(tmp_path / "ref"), 0)] + \
        [(str(tmp_path / f"k{k}"), k) for k in kills]
    for folder, _ in jobs:
        _readers_setup(tmp_path / os.path.basename(folder))
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(jobs)],
                          check=True, capture_output=True, text=True,
                          timeout=300)
    out = json.loads(proc.stdout.splitlines()[-1])
    ref = str(tmp_path / "ref")
    assert out[ref][0] == 0, (tmp_path / "ref" / "kill.log").read_text()
    final = f"snap_iter_{DATA_ITERS}"
    want_model = _weights(f"{ref}/{final}.caffemodel")
    want_history = _history(f"{ref}/{final}.solverstate")
    for folder, k in jobs[1:]:
        status, left, resumed = out[folder]
        assert os.WIFSIGNALED(status) and \
            os.WTERMSIG(status) == signal.SIGKILL, (k, status)
        # Snapshot n is written by steps 4(n-1)+1 .. 4n; step 4n comes after
        # its solverstate's rename.  What the kill left: every solverstate
        # with its weights and sidecar, and none of the snapshot cut short.
        n, step = divmod(k - 1, STEPS_PER_SNAPSHOT)
        done = n + 1 if step == STEPS_PER_SNAPSHOT - 1 else n
        states = sorted(p for p in left if p.endswith(".solverstate"))
        assert states == [f"snap_iter_{i}.solverstate"
                          for i in range(1, done + 1)], (k, left)
        for s in states:
            assert s.replace(".solverstate", ".caffemodel") in left, (k, left)
            assert s + ".protonet.json" in left, (k, left)
        assert resumed == 0, open(f"{folder}/resume.log").read()
        log = open(f"{folder}/resume.log").read()
        assert "no sidecar" not in log
        assert _weights(f"{folder}/{final}.caffemodel") == want_model, \
            f"kill at step {k}: resumed weights differ"
        assert _history(f"{folder}/{final}.solverstate") == want_history, k
