"""What `mpirun -n N protonet train` says about its layout, and how it
splits the cores between the ranks (protonet.parallel)."""

import os
import re
import shutil
import subprocess
import sys
import types

import pytest

from protonet import caffelog, parallel

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
GOLDEN = os.path.join(ROOT, "tests", "fixtures", "caffe_ref", "train",
                      "lr_multistep")


def test_threads_per_rank_splits_the_cores():
    assert parallel.threads_per_rank(8, 2, {}) == 4
    assert parallel.threads_per_rank(8, 3, {}) == 2
    assert parallel.threads_per_rank(2, 4, {}) == 1     # never 0
    assert parallel.threads_per_rank(8, 1, {}) is None  # one rank: all cores
    for var in parallel.THREAD_VARS:                    # the user decides
        assert parallel.threads_per_rank(8, 2, {var: "3"}) is None


def test_local_size_prefers_the_launchers_local_count(monkeypatch):
    for var in parallel._LOCAL_SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    assert parallel.local_size(4) == 4
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")      # MPICH's Hydra
    assert parallel.local_size(4) == 2


def test_log_layout_names_ranks_and_batches(monkeypatch):
    records = []
    monkeypatch.setattr(caffelog, "info", lambda msg, src="": records.append(msg))
    for var in parallel.THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MPI_LOCALNRANKS", "3")
    blob = types.SimpleNamespace(shape=(32, 1, 8, 8))
    net = types.SimpleNamespace(top_vecs=[[blob, blob], [blob]],
                                bottom_vecs=[[], [blob]])
    solver = types.SimpleNamespace(
        dp=types.SimpleNamespace(size=3), net=net,
        param=types.SimpleNamespace(iter_size=2))
    parallel.log_layout(solver)
    assert records == [
        "Data-parallel training on 3 MPI ranks (3 on this host, threads per "
        "rank: all cores)",
        "Batch per rank: 32 x iter_size 2 = 64; effective batch: 3 ranks x "
        "64 = 192"]
    records.clear()
    parallel.log_layout(types.SimpleNamespace(dp=None))     # one process
    assert records == []


def _mpirun():
    local = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return local if os.access(local, os.X_OK) else shutil.which("mpirun")


def _skip_reason():
    if _mpirun() is None:
        return "mpirun is not installed (pip install protonet[mpi])"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install protonet[mpi])"
    return None


@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
def test_mpirun_logs_the_layout_and_splits_the_cores(tmp_path):
    shutil.copytree(GOLDEN, tmp_path / "case")
    env = {k: v for k, v in os.environ.items()
           if k not in parallel.THREAD_VARS}
    env.update(PYTHONPATH=ROOT, OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.run([_mpirun(), "-n", "2", sys.executable, "-m", "protonet",
                        "train", "solver.prototxt", "--max_iter=2"],
                       cwd=tmp_path / "case", env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    cores = parallel._cores()
    per = max(1, cores // 2)
    msgs = [m.split("] ", 1)[1] for m in p.stderr.splitlines()
            if re.match(r"I\d{4} ", m)]
    assert ("Data-parallel training on 2 MPI ranks (2 on this host, threads "
            f"per rank: PROTONET_THREADS={per})") in msgs
    # net.prototxt's TRAIN batch_size is 32
    assert "Batch per rank: 32; effective batch: 2 ranks x 32 = 64" in msgs
    assert msgs.count("Overriding solver max_iter: 40 -> 2") == 1   # rank 0
