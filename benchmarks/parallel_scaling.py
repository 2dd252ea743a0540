"""Data-parallel training throughput: images/s for 1, 2, ... MPI ranks.

    python benchmarks/parallel_scaling.py [--ranks 1 2] [--batch 64]
                                          [--iters 20] [--net lenet|cifar]

Each rank trains the same net with `--batch` images per rank (Caffe's
semantics: the effective batch is ranks x batch) from an HDF5 file of
random images, with SGD. One rank runs as a plain process (no MPI); N > 1
runs under `mpirun -n N`. Every run gets OMP/OPENBLAS_NUM_THREADS=1, so N
ranks use N cores: the figures are per-core scaling.

Columns: ms/iter (wall time of one solver step, the allreduce included),
images/s (ranks x batch / step time), speed-up over one rank, `comm`
(share of the step spent waiting for the gradient allreduce after
backward: the communication that overlapping did not hide) and `copy`
(share spent copying gradients into and out of the allreduce buckets).
The last columns run N independent single processes at once (no MPI, no
communication): their step time is what N busy cores give on this machine
(shared memory bandwidth, turbo, a VM's vCPUs), and `efficiency` is that
time over the data-parallel step time (100% = no parallel overhead).
`comm` includes waiting for the slowest rank, not only the transfer.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

NETS = {
    # LeNet (MNIST-sized input); CIFAR-10 quick.
    "lenet": ((1, 28, 28), """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 50 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
"""),
    "cifar": ((3, 32, 32), """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 32 pad: 2 kernel_size: 5 weight_filler { type: "gaussian" std: 0.0001 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "pool1" top: "pool1" }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 32 pad: 2 kernel_size: 5 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
  convolution_param { num_output: 64 pad: 2 kernel_size: 5 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool3" top: "ip1"
  inner_product_param { num_output: 64 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.1 } } }
"""),
}


def write_problem(folder, net, batch, rows):
    """An HDF5 file of random images and the solver training `net` on it."""
    import h5py
    import numpy as np
    chw, body = NETS[net]
    rng = np.random.default_rng(0)
    h5 = os.path.join(folder, "train.h5")
    with h5py.File(h5, "w") as f:
        f["data"] = rng.normal(size=(rows,) + chw).astype(np.float32)
        f["label"] = rng.integers(0, 10, rows).astype(np.float32)
    source = os.path.join(folder, "train.txt")
    with open(source, "w") as f:
        f.write(h5 + "\n")
    net_file = os.path.join(folder, "net.prototxt")
    with open(net_file, "w") as f:
        f.write(f'name: "{net}"\nlayer {{ name: "data" type: "HDF5Data" '
                f'top: "data" top: "label" hdf5_data_param {{ source: '
                f'"{source}" batch_size: {batch} }} }}\n{body}'
                'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" '
                'bottom: "label" top: "loss" }\n')
    solver = os.path.join(folder, "solver.prototxt")
    with open(solver, "w") as f:
        f.write(f'net: "{net_file}"\nbase_lr: 0.001 momentum: 0.9 '
                f'lr_policy: "fixed" max_iter: 100000 display: 0 '
                f'random_seed: 1 snapshot_after_train: false '
                f'snapshot_prefix: "{folder}/snap"\n')
    return solver


def worker(a):
    """One rank: warm up, time `iters` steps, rank 0 writes the figures."""
    from protonet import parallel
    from protonet.solvers import get_solver
    s = get_solver(a.solver)
    s.step(a.warmup)
    dp = s.dp
    if dp is not None:
        dp.stats.update(steps=0, comm_wait=0.0, copy=0.0)
        dp.comm.Barrier()
    t0 = time.perf_counter()
    s.step(a.iters)
    elapsed = time.perf_counter() - t0
    if parallel.is_root():
        stats = dp.stats if dp is not None else {"comm_wait": 0.0, "copy": 0.0}
        with open(a.out, "w") as f:
            json.dump({"ranks": parallel.size(), "elapsed": elapsed,
                       "comm_wait": stats["comm_wait"], "copy": stats["copy"]},
                      f)


def run(ranks, solver, a, folder, independent=False):
    """One measurement; `independent`: `ranks` plain processes at once
    (no MPI), the slowest one's time: what the cores give without any
    communication, the ceiling for data-parallel training here."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    outs, procs = [], []
    for k in range(ranks if independent else 1):
        outs.append(os.path.join(folder, f"result_{ranks}_{independent}_{k}"))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker",
               "--solver", solver, "--out", outs[-1], "--iters",
               str(a.iters), "--warmup", str(a.warmup)]
        if ranks > 1 and not independent:
            cmd = ["mpirun", "-n", str(ranks)] + cmd
        procs.append(subprocess.Popen(cmd, env=env, cwd=folder,
                                      stderr=subprocess.DEVNULL))
    for proc in procs:
        if proc.wait():
            raise SystemExit(f"benchmark run failed: {proc.args}")
    results = []
    for out in outs:
        with open(out) as f:
            results.append(json.load(f))
    return max(results, key=lambda r: r["elapsed"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=64, help="images per rank")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--net", choices=sorted(NETS), default="lenet")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--solver", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a)
    if max(a.ranks) > 1 and shutil.which("mpirun") is None:
        sys.exit("mpirun not found: apt-get install mpich, pip install mpi4py")
    with tempfile.TemporaryDirectory() as folder:
        solver = write_problem(folder, a.net, a.batch,
                               a.batch * max(a.ranks) * 4)
        rows = [run(n, solver, a, folder) for n in a.ranks]
        alone = {n: run(n, solver, a, folder, independent=True)["elapsed"]
                 for n in a.ranks}
    base = None
    print(f"net {a.net}, batch {a.batch} per rank, {a.iters} timed "
          f"iterations, 1 BLAS thread per rank, {os.cpu_count()} cores\n")
    print("| ranks | effective batch | ms/iter | images/s | speed-up | comm "
          "| copy | ms/iter of N independent processes | efficiency |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n, t = r["ranks"], r["elapsed"]
        ips = n * a.batch * a.iters / t
        base = base or ips / n
        print(f"| {n} | {n * a.batch} | {t * 1e3 / a.iters:.1f} | {ips:.0f} | "
              f"{ips / base:.2f}x | {100 * r['comm_wait'] / t:.1f}% | "
              f"{100 * r['copy'] / t:.1f}% | {alone[n] * 1e3 / a.iters:.1f} "
              f"| {100 * alone[n] / t:.0f}% |")


if __name__ == "__main__":
    main()
