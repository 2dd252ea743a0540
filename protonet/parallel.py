"""Data-parallel training over MPI (Caffe's multi-GPU training, on ranks).

`mpirun -n N protonet train solver.prototxt` runs N copies of the solver.
Each rank reads its own shard of every TRAIN-phase data layer, so one
iteration sees N x batch_size items; after backward the parameter
gradients are summed over the ranks with an allreduce and scaled by 1/N
(Caffe's NCCL::on_gradients_ready), and every rank applies the same solver
update, so the weights stay bit-identical. Rank 0 alone logs, tests and
snapshots.

Sharding (see docs/parallel.md): rank r of N keeps, of every N x B items
the single-process reader would read next, the r-th block of B items and
skips the others; so rank r's batch is exactly rows [r*B, (r+1)*B) of the
batch one process reads with batch_size N*B, and the reader's position
(saved in snapshots) is the same on every rank and for one process:
a snapshot resumes with any N.
NOTE(caffe): Caffe 1.0's DataReader deals items round-robin (item i to
rank i mod N); the union per iteration is the same, the order inside the
combined batch differs.

Gradients travel in buckets of about `PROTONET_MPI_BUCKET_MB` (default 4)
MiB, in the order backward finishes them; a bucket's non-blocking
allreduce starts as soon as the layers using its parameters have run
backward, so communication overlaps with the rest of backward. The
smoothed loss and the stop/snapshot requests (signals) ride along in the
last bucket, so every rank logs the same mean loss and stops or snapshots
at the same iteration.

Failures: every wait for the other ranks polls a non-blocking request with
a deadline (`PROTONET_MPI_TIMEOUT`, default 300 s, which must exceed a
rank-0-only pause: a test pass or a snapshot); past it, or on an error in
any rank, the rank prints a message naming itself and what it waited for,
and calls MPI_Abort, which ends every rank. Snapshots are written
atomically, so the last one stays valid for a resume.

Cores: the ranks on one host share its cores; each rank runs
max(1, cores // local ranks) threads (PROTONET_THREADS and BLAS's limit)
unless PROTONET_THREADS, OMP_NUM_THREADS, OPENBLAS_NUM_THREADS or
MKL_NUM_THREADS is set.  Rank 0 logs the ranks, the batch per rank and the
effective batch (`log_layout`).  The environment variables are parsed
strictly: a value such as PROTONET_MPI_TIMEOUT=nan is an error, not "no
deadline".

Without MPI (no launcher variables, or one rank) nothing here imports
mpi4py and the solver behaves exactly as before.
"""

import atexit
import contextlib
import json
import logging
import os
import sys
import time

import numpy as np

from . import envvars
from .errors import ProtonetError

# World size / rank as the common launchers export them (MPICH's Hydra and
# Slurm's PMI, Open MPI, MVAPICH), read without importing mpi4py.
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")

DEFAULT_TIMEOUT = 300.0
DEFAULT_BUCKET_MB = 4.0

_active = None      # this process's DataParallel, once a solver made one


class ParallelError(ProtonetError):
    """MPI is needed but missing, or the ranks disagree."""


def _env_int(names):
    for name in names:
        value = os.environ.get(name)
        if value:
            try:
                return int(value)
            except ValueError:
                pass
    return None


def launcher_rank():
    """This process's rank as the MPI launcher set it (0 when none)."""
    return _env_int(_RANK_VARS) or 0


def launcher_size():
    """The number of ranks the MPI launcher started (1 when none), from the
    environment; `PROTONET_MPI=0` turns data-parallel training off."""
    if not envvars.flag("PROTONET_MPI", True):
        return 1
    return _env_int(_SIZE_VARS) or 1


def sharding():
    """PROTONET_DATA_SHARDING: 'stream' (default) or 'local'."""
    value = os.environ.get("PROTONET_DATA_SHARDING", "").strip() or "stream"
    if value not in ("stream", "local"):
        raise ProtonetError(f"environment variable PROTONET_DATA_SHARDING="
                            f"{value!r}: expected 'stream' or 'local'")
    return value


# Ranks on this host, as the launchers export them (Hydra: MPI_LOCALNRANKS).
_LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                    "MV2_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")
# Set by the user, these keep their thread count (no split).
THREAD_VARS = ("PROTONET_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "MKL_NUM_THREADS")


def threads_per_rank(cores, local_ranks, environ=None):
    """Threads each rank should use so the ranks on one host share its
    cores: max(1, cores // local_ranks), or None when the user set a thread
    count (THREAD_VARS) or there is only one rank here."""
    environ = os.environ if environ is None else environ
    if local_ranks <= 1 or any(environ.get(v, "").strip()
                               for v in THREAD_VARS):
        return None
    return max(1, cores // local_ranks)


def local_size(world):
    """Ranks on this host: the launcher's local size, else the world."""
    return _env_int(_LOCAL_SIZE_VARS) or world


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def split_cores(world):
    """Give this rank its share of the host's cores (threads_per_rank):
    protonet's own threads (PROTONET_THREADS) and BLAS's. Returns the
    threads per rank, or None when left as they are."""
    n = threads_per_rank(_cores(), local_size(world))
    if n is None:
        return None
    os.environ["PROTONET_THREADS"] = str(n)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n, user_api="blas")
    except ImportError:     # then BLAS keeps its own count
        pass
    return n


def log_layout(solver):
    """Log the ranks, the per-rank and the effective batch of a
    data-parallel `solver` (nothing for a single process)."""
    dp = solver.dp
    if dp is None:
        return
    from . import caffelog
    net = solver.net
    batch = next((tops[0].shape[0] for tops, bottoms
                  in zip(net.top_vecs, net.bottom_vecs)
                  if tops and not bottoms and tops[0].shape), None)
    iter_size = solver.param.iter_size
    given = [f"{v}={os.environ[v]}" for v in THREAD_VARS
             if os.environ.get(v, "").strip()]
    threads = given[0] if given else "all cores"
    caffelog.info(f"Data-parallel training on {dp.size} MPI ranks "
                  f"({local_size(dp.size)} on this host, threads per rank: "
                  f"{threads})", "parallel.cpp:0")
    if batch is not None:
        per = batch * iter_size
        extra = f" x iter_size {iter_size} = {per}" if iter_size > 1 else ""
        caffelog.info(f"Batch per rank: {batch}{extra}; effective "
                      f"batch: {dp.size} ranks x {per} = {dp.size * per}",
                      "parallel.cpp:0")


def active():
    """The DataParallel of this process, or None."""
    return _active


def is_root():
    """True on rank 0, and in a process that is not training in parallel."""
    return _active is None or _active.rank == 0


def rank():
    return 0 if _active is None else _active.rank


def size():
    return 1 if _active is None else _active.size


def data_shard(layer):
    """(rank, ranks) for a data layer to read its shard of, (0, 1) for all
    but TRAIN-phase layers under data-parallel training (test nets run on
    rank 0 alone and read everything, as in Caffe), and for every layer
    with `PROTONET_DATA_SHARDING=local` (each host reads its own files)."""
    from .net import TRAIN
    if _active is None or layer.phase != TRAIN or _active.local_data:
        return 0, 1
    return _active.rank, _active.size


def shard_skips(shard, batch_size):
    """Items to skip before and after reading `batch_size` items, for the
    shard (rank, ranks): rank r keeps the r-th block of each N*B items."""
    r, n = shard
    return r * batch_size, (n - 1 - r) * batch_size


def data_parallel(solver, timeout=None, bucket_mb=None, overlap=True):
    """A DataParallel for `solver` when the process was started by an MPI
    launcher with more than one rank, else None (and mpi4py is not
    imported). Also syncs the random seed and quiets non-root logging."""
    global _active
    if launcher_size() <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ParallelError(
            f"started by an MPI launcher with {launcher_size()} ranks, but "
            f"mpi4py is not importable ({e}); install it with "
            "`pip install protonet[mpi]` against the system MPI, or set "
            "PROTONET_MPI=0 to train each rank on its own") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() <= 1:
        return None
    if _active is None:
        _active = DataParallel(comm, timeout, bucket_mb, overlap)
        split_cores(comm.Get_size())
    _active.attach(solver)
    return _active


class _Bucket:
    """Parameters whose summed gradients travel in one allreduce."""

    def __init__(self, params, ready, blobs, dtype, extra=0):
        self.params = params            # learnable param indices
        self.ready = ready              # final once layer `ready` ran backward
        self.sizes = [blobs[i].count for i in params]
        self.n = sum(self.sizes)
        self.buf = np.zeros(self.n + extra, dtype)
        self.req = None


class DataParallel:
    """Gradient allreduce, shared requests and state broadcasts for one
    process among `comm`'s ranks (see the module docstring).

    Attributes:
        rank, size: this process's rank and the number of ranks.
        request: the stop/snapshot request all ranks agreed on last step.
        stats: seconds spent in `comm_wait` (waiting for the other ranks,
            the communication not hidden behind backward) and in `copy`
            (gradients into and out of the buckets), and `steps`.
    """

    def __init__(self, comm, timeout=None, bucket_mb=None, overlap=True):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0
        if timeout is None:
            timeout = envvars.number("PROTONET_MPI_TIMEOUT", DEFAULT_TIMEOUT,
                                     positive=True)
        if bucket_mb is None:
            bucket_mb = envvars.number("PROTONET_MPI_BUCKET_MB",
                                       DEFAULT_BUCKET_MB, positive=True)
        self.timeout = timeout
        self.bucket_bytes = max(int(bucket_mb * (1 << 20)), 1)
        self.overlap = overlap
        self.local_data = sharding() == "local"
        self.request = "none"
        self.stats = {"steps": 0, "comm_wait": 0.0, "copy": 0.0}
        self.where = "start-up"
        self._buckets = None
        self._net = None
        self._passes = 0
        self._solver = None
        if not self.is_root:
            logging.getLogger("protonet.caffe").setLevel(logging.WARNING)
        self._install_excepthook()
        atexit.register(self._at_exit)

    def __repr__(self):
        return f"<DataParallel rank {self.rank} of {self.size}>"

    # -- set-up -----------------------------------------------------------
    def attach(self, solver):
        """Called by the solver before it builds its nets: one random seed
        for every rank (so data shuffles agree across ranks)."""
        from . import rng as _rng
        self._solver = solver
        seed = solver.param.random_seed
        if seed < 0:
            seed = int(np.random.default_rng().integers(2**31)) \
                if self.is_root else None
            seed = self.bcast_object(seed, "the random seed")
            _rng.set_random_seed(seed)

    def _install_excepthook(self):
        previous = sys.excepthook

        def hook(kind, value, tb):
            previous(kind, value, tb)
            self.abort(f"uncaught {kind.__name__}: {value}")
        sys.excepthook = hook

    def _at_exit(self):
        # A rank leaving in the middle of a step would leave the others
        # waiting for it until their deadline; leaving between steps is fine.
        if self._passes:
            self.abort("exiting in the middle of a training step")

    def abort(self, message):
        """Print `message` naming this rank and end every rank."""
        sys.stderr.write(f"protonet [rank {self.rank} of {self.size}]: "
                         f"{message}; aborting all ranks (the last snapshot "
                         "on disk is kept)\n")
        sys.stderr.flush()
        time.sleep(0.5)     # let the launcher forward the message first
        self.comm.Abort(1)

    # -- waiting with a deadline ------------------------------------------
    def wait(self, requests, what):
        """Complete `requests`, or abort once `timeout` seconds pass."""
        from mpi4py import MPI
        t0 = time.perf_counter()
        deadline = t0 + self.timeout
        delay = 2e-5
        while not MPI.Request.Testall(requests):
            now = time.perf_counter()
            if now > deadline:
                self.abort(f"no answer from the other ranks for "
                           f"{self.timeout:g} s while {what} ({self.where}): "
                           "a rank died or hangs (raise PROTONET_MPI_TIMEOUT "
                           "if rank 0's test passes or snapshots take longer)")
            time.sleep(delay)
            delay = min(delay * 2, 0.005)
        self.stats["comm_wait"] += time.perf_counter() - t0

    def bcast_object(self, obj, what):
        """Rank 0's `obj` (JSON-serialisable, so no code can
        travel between ranks) on every rank; tuples arrive as lists."""
        data = json.dumps(obj).encode("utf-8") if self.is_root else b""
        n = np.array([len(data)], np.int64)
        self.wait([self.comm.Ibcast(n, root=0)], f"receiving {what}")
        buf = np.frombuffer(data, np.uint8).copy() if self.is_root \
            else np.empty(int(n[0]), np.uint8)
        self.wait([self.comm.Ibcast(buf, root=0)], f"receiving {what}")
        return obj if self.is_root else json.loads(buf.tobytes().decode("utf-8"))

    def bcast_arrays(self, arrays, what):
        """Overwrite `arrays` (contiguous) with rank 0's values."""
        reqs = [self.comm.Ibcast(a, root=0) for a in arrays if a.size]
        self.wait(reqs, f"receiving {what}")

    def broadcast_state(self, solver):
        """Make every rank's solver rank 0's: weights (every param blob of
        the train net), history, iteration, RNG and data-reader positions."""
        from . import rng as _rng
        self.where = f"iteration {solver.iter}"
        blobs = [b.data for layer in solver.net.layers for b in layer.blobs]
        self.bcast_arrays(blobs + list(solver.history), "rank 0's weights")
        state = None
        if self.is_root:
            state = {"iter": solver.iter, "current_step": solver.current_step,
                     "rng": _rng.get_state(),
                     "data": solver._data_states()["train"]}
        state = self.bcast_object(state, "rank 0's solver state")
        if not self.is_root:
            solver.iter = state["iter"]
            solver.current_step = state["current_step"]
            _rng.set_state(state["rng"])
            for name, s in state["data"].items():
                solver.net.layer_dict[name].set_state(s)

    def after_test(self, solver):
        """After rank 0's test pass: share its stop request, RNG state
        (test nets may draw from the generator) and scores (lr_policy
        'plateau' decides from them on every rank)."""
        from . import rng as _rng
        self.where = f"iteration {solver.iter} (rank 0 testing)"
        state = (solver.requested_early_exit, _rng.get_state(),
                 solver.test_results) if self.is_root else None
        stop, rng_state, results = self.bcast_object(state,
                                                     "rank 0's test results")
        if not self.is_root:
            solver.requested_early_exit = stop
            _rng.set_state(rng_state)
            solver.test_results = results

    # -- gradients --------------------------------------------------------
    def _plan(self, net):
        """Buckets in the order backward finishes their parameters."""
        if self._net is net:
            return self._buckets
        params = net.learnable_params
        ready = [len(net.layers)] * len(params)
        for net_id, (li, _) in enumerate(net.param_layer_indices):
            lid = net.learnable_param_ids[net_id]
            ready[lid] = min(ready[lid], li)
        order = sorted(range(len(params)), key=lambda i: -ready[i])
        groups, cur, nbytes = [], [], 0
        itemsize = np.dtype(net.dtype).itemsize
        for i in order:
            cur.append(i)
            nbytes += params[i].count * itemsize
            if nbytes >= self.bucket_bytes:
                groups.append(cur)
                cur, nbytes = [], 0
        groups.append(cur)          # the last one, possibly empty
        self._buckets = [
            _Bucket(g, min((ready[i] for i in g), default=-1), params,
                    net.dtype, extra=3 if k == len(groups) - 1 else 0)
            for k, g in enumerate(groups)]
        self._net = net
        return self._buckets

    def _launch(self, bucket, params):
        from mpi4py import MPI
        t0 = time.perf_counter()
        off = 0
        for i, n in zip(bucket.params, bucket.sizes):
            bucket.buf[off:off + n] = params[i].diff.ravel()
            off += n
        self.stats["copy"] += time.perf_counter() - t0
        bucket.req = self.comm.Iallreduce(MPI.IN_PLACE, bucket.buf, op=MPI.SUM)

    def backward(self, net, iter_size):
        """The train net's backward; on the last of `iter_size` passes the
        buckets start their allreduce as soon as their gradients are final."""
        self._passes += 1
        if self._passes < iter_size or not self.overlap:
            net.backward_from_to()
            return
        from mpi4py import MPI
        buckets = self._plan(net)[:-1]
        params = net.learnable_params
        started = []
        for i in range(len(net.layers) - 1, -1, -1):
            net.backward_from_to(i, i)
            while buckets and buckets[0].ready >= i:
                started.append(buckets.pop(0))
                self._launch(started[-1], params)
            if started:     # let the started allreduces progress
                MPI.Request.Testall([b.req for b in started])

    def reduce_gradients(self, solver, loss):
        """Sum the gradients over the ranks and scale by 1/N (Caffe's
        on_gradients_ready); returns the mean loss. Also agrees on the
        stop/snapshot request (`self.request`)."""
        net = solver.net
        self.where = f"iteration {solver.iter}"
        buckets = self._plan(net)
        params = net.learnable_params
        for b in buckets[:-1]:
            if b.req is None:
                self._launch(b, params)
        request = solver._request()
        last = buckets[-1]
        last.buf[last.n:] = (loss, request == "snapshot", request == "stop")
        self._launch(last, params)
        self.wait([b.req for b in buckets], "summing the gradients")
        t0 = time.perf_counter()
        scale = net.dtype.type(1.0 / self.size)
        for b in buckets:
            b.req = None
            grads = b.buf[:b.n]
            grads *= scale
            off = 0
            for i, n in zip(b.params, b.sizes):
                params[i].diff[...] = grads[off:off + n].reshape(
                    params[i].diff.shape)
                off += n
        self.stats["copy"] += time.perf_counter() - t0
        total, snap, stop = last.buf[last.n:]
        self.request = "stop" if stop else "snapshot" if snap else "none"
        self.stats["steps"] += 1
        self._passes = 0
        return net.dtype.type(total) * scale


@contextlib.contextmanager
def abort_on_error():
    """Under data-parallel training, turn an exception in this rank into a
    message and MPI_Abort, so the other ranks do not wait for it."""
    try:
        yield
    except BaseException as e:
        if _active is not None and not isinstance(e, SystemExit):
            _active.abort(f"error: {e}")
        raise
