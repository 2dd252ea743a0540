"""What bit-identical InnerProduct rows across batch sizes would cost.

protonet's InnerProduct is one GEMM over the batch (W x^T for M <= 256).
OpenBLAS picks its kernels and blockings by M and by a row's position in
the block, so a sample's row changes in its last bits with the batch it is
in.  Calling the GEMM on fixed blocks of 16 rows (zero-padded), one block
of output features per thread with single-threaded BLAS, gives rows that do
not depend on the batch; this script checks that and times both on
CaffeNet's fc6 / fc7 / fc8 shapes.

    python benchmarks/ip_batch_invariance.py [--reps 7]
"""

import argparse
import time
from functools import partial

import numpy as np

from protonet import threads

BLOCK = 16          # rows per GEMM call
COLS = 128          # output features per task
SHAPES = (("fc6", 9216, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000))


def current(W, x):
    """protonet's InnerProduct forward (without bias)."""
    M = x.shape[0]
    if M > 256:
        return x @ W.T
    yT = np.empty((W.shape[0], M), np.float32)
    np.matmul(W, x.T, out=yT)
    return yT.T.copy()


def blocked(W, x):
    """Rows independent of the batch: fixed 16-row GEMMs."""
    N, K = W.shape
    M = x.shape[0]
    Mp = -(-M // BLOCK) * BLOCK
    xp = x
    if Mp != M:
        xp = np.zeros((Mp, K), np.float32)
        xp[:M] = x
    y = np.empty((Mp, N), np.float32)
    bufs = {}

    def task(c, worker):
        buf = bufs.setdefault(worker, np.empty((COLS, BLOCK), np.float32))
        b = buf[:c.stop - c.start]
        for s in range(0, Mp, BLOCK):
            np.matmul(W[c], xp[s:s + BLOCK].T, out=b)
            y[s:s + BLOCK, c] = b.T
    threads.run([partial(task, slice(c, min(N, c + COLS)))
                 for c in range(0, N, COLS)])
    return y[:M]


def best(fn, *args, reps=7):
    t = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        t = min(t, time.perf_counter() - t0)
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| layer | batch | current ms | 16-row blocks ms | cost | "
          "rows batch 1 vs 10 (current / blocks) |")
    print("|---|---|---|---|---|---|")
    for name, K, N in SHAPES:
        W = rng.standard_normal((N, K), dtype=np.float32) * 0.01
        X = rng.standard_normal((256, K), dtype=np.float32)
        diffs = []
        for fn in (current, blocked):
            ref = fn(W, X[:10])
            diffs.append(max(np.abs(fn(W, X[i:i + 1])[0] - ref[i]).max()
                             for i in range(10)))
        for M in (1, 10, 64, 256):
            a = best(current, W, X[:M], reps=args.reps)
            b = best(blocked, W, X[:M], reps=args.reps)
            print(f"| {name} | {M} | {a * 1e3:.1f} | {b * 1e3:.1f} | "
                  f"{(b / a - 1) * 100:+.0f} % | {diffs[0]:.1e} / "
                  f"{diffs[1]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
