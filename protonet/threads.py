"""Work split over the batch on the machine's cores (the CPU threads of a
layer's forward and backward).

BLAS parallelises each GEMM over the cores, but a convolution interleaves
its GEMMs with NumPy copies (padding, im2col, transposes) that run on one
core; and every GEMM hands its operands from the core that wrote them to the
cores that read them.  Measured here (2 cores): CIFAR-10 conv2 forward 14-49
ms with two BLAS threads, 17 ms with one, 9-12 ms when two threads each take
half of the batch's chunks and run im2col plus a single-threaded GEMM on
them (each chunk's columns stay in one core's cache).  So a layer with
several independent pieces of work (chunks of images, blocks of rows) runs
them here: ``run(tasks)`` calls ``tasks[i](worker)`` with a worker index in
``range(workers())``, on that many threads (the caller is one of them),
with BLAS single-threaded meanwhile; every task writes its own part of the
output or its own accumulator (``worker`` picks per-thread buffers), so the
results do not depend on timing.

How many threads: ``workers()`` is the BLAS library's own thread count
(OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, a ``threadpoolctl`` limit, by
default one per core), so whatever limits BLAS limits protonet too, and
``PROTONET_THREADS`` overrides it.  1 (or no ``threadpoolctl``) runs every
task in the caller, in order, with BLAS as it is.  A region never nests:
tasks that call ``run`` again, or a second Python thread that calls it
while one region is running, run serially.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

_lock = threading.Lock()
_local = threading.local()  # .worker: the index of the task running here
_state = {"blas": None, "pool": None, "pool_size": 0}


def _blas():
    """threadpoolctl controllers of the BLAS libraries loaded now (NumPy's
    among them), or [] without threadpoolctl."""
    if _state["blas"] is None:
        try:
            from threadpoolctl import ThreadpoolController
            _state["blas"] = [c for c in ThreadpoolController().lib_controllers
                              if c.user_api == "blas"]
        except Exception:  # not installed, or an unknown library layout
            _state["blas"] = []
    return _state["blas"]


def workers():
    """Threads a parallel region uses now (>= 1)."""
    env = os.environ.get("PROTONET_THREADS")
    if env and env.strip():
        from .envvars import number
        return number("PROTONET_THREADS", None, int, minimum=1)
    libs = _blas()
    if not libs:
        return 1
    return max(1, libs[0].get_num_threads())


def _pool(n):
    if _state["pool_size"] < n:
        if _state["pool"] is not None:
            _state["pool"].shutdown(wait=True)
        _state["pool"] = ThreadPoolExecutor(
            n, thread_name_prefix="protonet-worker")
        _state["pool_size"] = n
    return _state["pool"]


def split(n, parts):
    """`n` items in at most `parts` contiguous, nearly equal slices."""
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


# Elementwise work on fewer elements than this stays on one thread (the
# hand-off costs ~50 us; two threads gave 1.6-1.8x on 3.2M-element ReLU and
# per-channel affine passes, memory-bound as they are).
MIN_SPLIT_ELEMENTS = 1 << 18


def over_rows(n, fn, elements):
    """Call ``fn(s)`` for slices `s` of ``range(n)`` (rows of the leading
    axis), one per worker when the work has at least MIN_SPLIT_ELEMENTS
    `elements` (and serially otherwise)."""
    parts = workers() if elements >= MIN_SPLIT_ELEMENTS and n > 1 else 1
    run([partial(_call_slice, fn, s) for s in split(n, parts)])


def _call_slice(fn, s, worker):
    fn(s)


def over_blocks(fn, arrays, block=1 << 20):
    """``fn(piece, worker)`` for every run of `block` elements of the
    (contiguous, flattened) `arrays`, spread over the workers when they hold
    MIN_SPLIT_ELEMENTS in all; returns the results in order."""
    flat = [a.reshape(-1) for a in arrays]
    return run([partial(fn, f[i:i + block]) for f in flat
                for i in range(0, f.size, block)],
               sum(f.size for f in flat) >= MIN_SPLIT_ELEMENTS)


def zero(arrays, block=1 << 20):
    """Set every array of `arrays` (contiguous) to 0, block by block over
    the workers (memory-bound: two cores write about twice as fast as one;
    CaffeNet's 61M parameter diffs 30 -> ~15 ms)."""
    over_blocks(_zero_block, arrays, block)


def _zero_block(a, worker):
    a[...] = 0


def run(tasks, parallel=True):
    """Call every ``task(worker)`` of `tasks`; returns their results in
    order.  Tasks are dealt in contiguous blocks (as OpenMP's static
    schedule): worker w runs its block in order, on one thread.  With
    `parallel` false they all run here, in order, with BLAS threads as
    they are."""
    tasks = list(tasks)
    n = min(workers(), len(tasks)) if parallel else 1
    if n <= 1 or not _lock.acquire(blocking=False):
        # Serial; a task that calls run again keeps its own worker index.
        return [t(getattr(_local, "worker", 0)) for t in tasks]
    try:
        groups = [tasks[s] for s in split(len(tasks), n)]
        libs = _blas()
        saved = [c.get_num_threads() for c in libs]
        for c in libs:
            c.set_num_threads(1)
        pool = _pool(n - 1)
        futures = [pool.submit(_run_group, g, w)
                   for w, g in enumerate(groups[1:], 1)]
        try:
            results = _run_group(groups[0], 0)
        finally:
            # Every worker finishes before the region ends (its buffers go
            # to the next region's tasks), errors or not.
            for f in futures:
                f.exception()
            for c, k in zip(libs, saved):
                c.set_num_threads(k)
        for f in futures:
            results += f.result()
        return results
    finally:
        _lock.release()


def _run_group(group, worker):
    _local.worker = worker
    try:
        return [t(worker) for t in group]
    finally:
        _local.worker = 0
