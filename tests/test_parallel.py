"""Data-parallel training over MPI (protonet.parallel).

The MPI tests launch `mpirun -n 2` on this machine and compare with one
process at twice the batch size; they are skipped only when mpirun or
mpi4py is missing. The sharding tests run everywhere.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

import protonet  # noqa: E402
from protonet import parallel, rng  # noqa: E402
from protonet.net import TRAIN, Net  # noqa: E402
from protonet.solvers import get_solver  # noqa: E402

B = 3               # per-rank batch
SOLVERS = {
    "SGD": "base_lr: 0.1 momentum: 0.9",
    "Nesterov": "base_lr: 0.1 momentum: 0.9",
    "AdaGrad": "base_lr: 0.1 delta: 1e-6",
    "RMSProp": "base_lr: 0.01 rms_decay: 0.98 delta: 1e-6",
    "AdaDelta": "base_lr: 1.0 momentum: 0.95 delta: 1e-6",
    "Adam": "base_lr: 0.01 momentum: 0.9 momentum2: 0.999 delta: 1e-8",
}
ITERS = 6


def _find_mpirun():
    """mpirun next to this Python (pip's `mpich` package puts it there),
    else on PATH (a system MPI)."""
    local = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return local if os.access(local, os.X_OK) else shutil.which("mpirun")


MPIRUN = _find_mpirun()


def _mpi_missing():
    if MPIRUN is None:
        return ("mpirun is not installed: `pip install protonet[mpi]` brings "
                "MPICH's on Linux and macOS arm64; elsewhere install an MPI "
                "whose mpirun is on PATH")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install protonet[mpi])"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None,
                               reason=str(_mpi_missing()))


def _write_data(folder):
    rng = np.random.default_rng(0)
    names = []
    for k, rows in enumerate((11, 8)):      # uneven: batches span files
        name = os.path.join(folder, f"part{k}.h5")
        with h5py.File(name, "w") as f:
            f["data"] = rng.normal(size=(rows, 4)).astype(np.float32)
            f["label"] = rng.integers(0, 3, rows).astype(np.float32)
        names.append(name)
    source = os.path.join(folder, "train.txt")
    with open(source, "w") as f:
        f.write("\n".join(names) + "\n")
    return source


def _net_text(source, batch):
    return textwrap.dedent(f"""\
        name: "tiny"
        layer {{ name: "data" type: "HDF5Data" top: "data" top: "label"
                hdf5_data_param {{ source: "{source}" batch_size: {batch} }} }}
        layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
                inner_product_param {{ num_output: 5
                  weight_filler {{ type: "gaussian" std: 0.5 }}
                  bias_filler {{ type: "constant" value: 0.1 }} }} }}
        layer {{ name: "act" type: "TanH" bottom: "ip1" top: "ip1" }}
        layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
                inner_product_param {{ num_output: 3
                  weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
        layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2"
                bottom: "label" top: "loss" }}
        """)


def _write_solver(folder, kind, batch, tag, snapshot=0):
    source = os.path.join(folder, "train.txt")
    net = os.path.join(folder, f"net_b{batch}.prototxt")
    with open(net, "w") as f:
        f.write(_net_text(source, batch))
    path = os.path.join(folder, f"{kind}_{tag}.prototxt")
    with open(path, "w") as f:
        f.write(f'net: "{net}"\ntype: "{kind}"\n{SOLVERS[kind]}\n'
                f'lr_policy: "step" gamma: 0.5 stepsize: 3\n'
                f"weight_decay: 0.001 random_seed: 7 max_iter: {ITERS}\n"
                f"display: 1 average_loss: 1 snapshot: {snapshot}\n"
                f'snapshot_after_train: false\n'
                f'snapshot_prefix: "{os.path.join(folder, kind + "_" + tag)}"\n')
    return path


def _net(folder, text, name, **kw):
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(text)
    return Net(path, phase=TRAIN, **kw)


def _weights(net):
    return [b.data.copy() for b in net.learnable_params]


def _trajectory(solver_path, iters=ITERS):
    """(losses, weights after each iteration) of one process."""
    s = get_solver(solver_path)
    losses, weights = [], []
    for _ in range(iters):
        s.step(1)
        losses.append(s.smoothed_loss)
        weights.append(np.concatenate([w.ravel() for w in _weights(s.net)]))
    return np.array(losses), np.array(weights)


DRIVER = textwrap.dedent("""\
    import os, signal, sys
    import numpy as np
    from protonet import parallel
    from protonet.solvers import get_solver
    mode, out = sys.argv[1], sys.argv[2]
    for path in sys.argv[3:]:
        s = get_solver(path)
        losses, weights = [], []
        for it in range(%d):
            if mode != "train" and parallel.rank() == 1 and it == 2:
                os.kill(os.getpid(), getattr(signal, mode))
            s.step(1)
            losses.append(s.smoothed_loss)
            weights.append(np.concatenate([b.data.ravel()
                                           for b in s.net.learnable_params]))
        name = os.path.basename(path)
        np.savez(f"{out}/{name}.rank{parallel.rank()}.npz",
                 losses=np.array(losses), weights=np.array(weights),
                 size=parallel.size(), mpi="mpi4py" in sys.modules)
    """ % ITERS)


def _mpirun(args, cwd, timeout=120, env=None):
    env = dict(os.environ, **(env or {}))
    # Open MPI refuses root without these (CI runs as root); MPICH ignores them.
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    cmd = [MPIRUN, "-n", "2"] + args
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    return p, time.monotonic() - t0


# ---------------------------------------------------------------------------
# sharding (no MPI needed)


def test_shard_skips_give_each_rank_its_block():
    assert parallel.shard_skips((0, 1), 5) == (0, 0)
    assert parallel.shard_skips((0, 3), 4) == (0, 8)
    assert parallel.shard_skips((2, 3), 4) == (8, 0)


@pytest.mark.parametrize("shuffle", [False, True])
def test_hdf5_shards_are_slices_of_the_big_batch(tmp_path, shuffle):
    source = _write_data(str(tmp_path))
    text = _net_text(source, B).replace(
        f"batch_size: {B} }}", f"batch_size: {B} shuffle: {str(shuffle).lower()} }}")
    big_text = _net_text(source, 2 * B).replace(
        f"batch_size: {2 * B} }}",
        f"batch_size: {2 * B} shuffle: {str(shuffle).lower()} }}")
    # Three simulated processes, each with its own generator (as with MPI).
    protonet.set_random_seed(3)
    big = _net(str(tmp_path), big_text, "big.prototxt")
    big_rng = rng.get_state()
    ranks, states = [], []
    for r in range(2):
        protonet.set_random_seed(3)
        net = _net(str(tmp_path), text, "small.prototxt")
        net.layers[0].shard = (r, 2)
        ranks.append(net)
        states.append(rng.get_state())
    for _ in range(8):          # 48 rows: several wraps over 19 rows
        rng.set_state(big_rng)
        big.forward_from_to(0, 0)
        big_rng = rng.get_state()
        for r, net in enumerate(ranks):
            rng.set_state(states[r])
            net.forward_from_to(0, 0)
            states[r] = rng.get_state()
            np.testing.assert_array_equal(
                net.blobs["data"].data,
                big.blobs["data"].data[r * B:(r + 1) * B])
            np.testing.assert_array_equal(
                net.blobs["label"].data,
                big.blobs["label"].data[r * B:(r + 1) * B])
            # Every rank's reader sits where the single reader does.
            assert net.layers[0].get_state() == big.layers[0].get_state()


def test_one_process_does_not_import_mpi4py(tmp_path):
    code = ("import sys, protonet, protonet.cli, protonet.parallel as p\n"
            "from protonet.solvers import get_solver\n"
            "assert p.launcher_size() == 1 and p.active() is None\n"
            "print('mpi4py' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items()
           if k not in parallel._SIZE_VARS + parallel._RANK_VARS}
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_launcher_size_reads_the_launchers_variables(monkeypatch):
    for name in parallel._SIZE_VARS:
        monkeypatch.delenv(name, raising=False)
    assert parallel.launcher_size() == 1
    monkeypatch.setenv("PMI_SIZE", "4")
    assert parallel.launcher_size() == 4
    monkeypatch.setenv("PROTONET_MPI", "0")
    assert parallel.launcher_size() == 1


# ---------------------------------------------------------------------------
# mpirun -n 2


@needs_mpi
def test_two_ranks_follow_the_single_process_trajectory(tmp_path):
    folder = str(tmp_path)
    _write_data(folder)
    (tmp_path / "driver.py").write_text(DRIVER)
    par = [_write_solver(folder, k, B, "n2") for k in SOLVERS]
    p, _ = _mpirun([sys.executable, "driver.py", "train", folder] + par,
                   folder, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    for kind in SOLVERS:
        single = _write_solver(folder, kind, 2 * B, "n1")
        losses, weights = _trajectory(single)
        name = os.path.basename(_write_solver(folder, kind, B, "n2"))
        r0 = np.load(f"{folder}/{name}.rank0.npz")
        r1 = np.load(f"{folder}/{name}.rank1.npz")
        assert int(r0["size"]) == 2 and bool(r0["mpi"])
        # Weights stay bit-identical across ranks, every iteration.
        np.testing.assert_array_equal(r0["weights"], r1["weights"])
        np.testing.assert_array_equal(r0["losses"], r1["losses"])
        # Same trajectory as one process at batch 2B (float32 sums).
        np.testing.assert_allclose(r0["losses"], losses, rtol=2e-5,
                                   atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(r0["weights"], weights, rtol=1e-4,
                                   atol=2e-5, err_msg=kind)
        assert not np.allclose(weights[0], weights[-1])     # it trained


@needs_mpi
def test_cli_snapshot_resumes_with_another_number_of_ranks(tmp_path):
    folder = str(tmp_path)
    _write_data(folder)
    net_file = os.path.join(folder, f"net_b{B}.prototxt")
    par = _write_solver(folder, "Adam", B, "n2", snapshot=3)
    single = _write_solver(folder, "Adam", 2 * B, "n1", snapshot=3)
    one, two = os.path.join(folder, "Adam_n1"), os.path.join(folder, "Adam_n2")
    s = get_solver(single)      # the reference: one process, batch 2B
    s.solve()
    expected = _weights(s.net)

    def check(model):
        got = _weights(Net(net_file, phase=TRAIN, weights=model))
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)

    # 2 ranks from scratch, through the CLI: rank 0 alone logs and snapshots.
    p, _ = _mpirun([sys.executable, "-m", "protonet.cli", "train", par],
                   folder, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.count("Iteration 0, loss = ") == 1
    assert p.stderr.count("Snapshotting solver state") == 2
    check(two + "_iter_6.caffemodel")
    # One process resumes the 2-rank snapshot at iteration 3 ...
    s = get_solver(single)
    s.solve(two + "_iter_3.solverstate")
    assert s.iter == ITERS
    check(one + "_iter_6.caffemodel")
    # ... and 2 ranks resume the one-process snapshot.
    os.remove(two + "_iter_6.caffemodel")
    p, _ = _mpirun([sys.executable, "-m", "protonet.cli", "train", par,
                    f"--snapshot={one}_iter_3.solverstate"], folder)
    assert p.returncode == 0, p.stderr[-3000:]
    check(two + "_iter_6.caffemodel")


@needs_mpi
def test_a_hung_rank_stops_the_others_with_a_message(tmp_path):
    folder = str(tmp_path)
    _write_data(folder)
    (tmp_path / "driver.py").write_text(DRIVER)
    par = _write_solver(folder, "SGD", B, "n2")
    p, took = _mpirun([sys.executable, "driver.py", "SIGSTOP", folder, par],
                      folder, env={"PROTONET_MPI_TIMEOUT": "3"})
    assert p.returncode != 0
    assert took < 60
    assert "rank 0 of 2" in p.stderr and "no answer from the other ranks" \
        in p.stderr and "aborting all ranks" in p.stderr, p.stderr[-3000:]


@needs_mpi
def test_a_killed_rank_ends_the_job(tmp_path):
    folder = str(tmp_path)
    _write_data(folder)
    (tmp_path / "driver.py").write_text(DRIVER)
    par = _write_solver(folder, "SGD", B, "n2")
    p, took = _mpirun([sys.executable, "driver.py", "SIGKILL", folder, par],
                      folder, env={"PROTONET_MPI_TIMEOUT": "5"})
    assert p.returncode != 0
    assert took < 60
    assert not os.path.exists(f"{folder}/SGD_n2.prototxt.rank0.npz")
    text = (p.stdout + p.stderr).lower()
    assert "killed" in text or "aborting all ranks" in text, text[-3000:]


@needs_mpi
def test_an_error_in_one_rank_stops_all(tmp_path):
    folder = str(tmp_path)
    _write_data(folder)
    # Rank 0 resumes from a state file that does not exist: the CLI error
    # becomes an abort instead of rank 1 waiting forever.
    par = _write_solver(folder, "SGD", B, "n2")
    p, took = _mpirun([sys.executable, "-m", "protonet.cli", "train", par,
                       "--snapshot=missing.solverstate"], folder,
                      env={"PROTONET_MPI_TIMEOUT": "30"})
    assert p.returncode != 0 and took < 25
    assert "rank 0 of 2" in p.stderr and "missing.solverstate" in p.stderr
