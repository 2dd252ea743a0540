"""The rest of pycaffe's API, and `install_caffe_alias()` for unmodified scripts.

Mirrors: python/caffe/_caffe.cpp (the Boost.Python bindings) and
python/caffe/pycaffe.py.  Most of pycaffe's surface lives where it belongs
(`protonet.Net`, `protonet.Blob`, the solvers, `protonet.io`,
`protonet.netspec`); this module adds what is left:

* module functions: `init_log`, `log`, `has_nccl`, `solver_count`,
  `set_solver_count`, `solver_rank`, `set_solver_rank`, `set_multiprocess`;
* classes: `Timer` (pycaffe's `caffe.Timer`), `NCCL` (a stub: protonet runs
  one solver on one CPU, so constructing it raises), `LayerParameter`.

(The Net and Solver methods that _caffe.cpp binds -- `share_with`,
`save_hdf5`, `_forward`, `Solver.share_weights`, ... -- are methods of
`protonet.Net` and the solvers themselves.)

`install_caffe_alias()` registers protonet under the module names pycaffe
uses (`caffe`, `caffe.proto.caffe_pb2`, `caffe.io`, `caffe.draw`, ...), so a
script that says `import caffe` runs on protonet without an edit.
"""

import logging
import sys
import time

from . import caffelog
from .errors import ProtonetError
from .net import Net  # noqa: F401  (pycaffe's caffe.pycaffe.Net)
from .proto import caffe_pb2
from .solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver,  # noqa: F401
                      NesterovSolver, RMSPropSolver, SGDSolver, get_solver)

# pycaffe exposes the LayerParameter message type (Python layers get one).
LayerParameter = caffe_pb2.LayerParameter


# ---------------------------------------------------------------------------
# Logging (glog in Caffe)

# glog severities, as FLAGS_minloglevel counts them.
_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR,
                3: logging.CRITICAL}
_log_handler = None


def init_log(level=0, std_err=True):
    """pycaffe's `caffe.init_log([level[, std_err]])`: start Caffe's log.

    Log lines (glog format, as protonet's solvers write them) go to standard
    error from severity `level` up (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL).
    glog without `std_err` writes log files under /tmp; protonet always
    writes to standard error, as `GLOG_logtostderr=1` does.  Calling it again
    replaces the previous setting.
    """
    global _log_handler
    if level not in _GLOG_LEVELS:
        raise ProtonetError(f"init_log: level must be 0 (INFO), 1 (WARNING), "
                            f"2 (ERROR) or 3 (FATAL), got {level!r}")
    if _log_handler is not None:
        caffelog.disable(_log_handler)
    _log_handler = caffelog.enable(sys.stderr, _GLOG_LEVELS[level])


def log(message):
    """pycaffe's `caffe.log(s)`: one INFO line in Caffe's log."""
    caffelog.info(str(message), "_caffe.cpp:0")


# ---------------------------------------------------------------------------
# Multi-GPU bookkeeping: protonet trains with one solver on one CPU.

_solver_count = 1
_solver_rank = 0
_multiprocess = False


def has_nccl():
    """False: protonet has no NCCL (multi-GPU) support."""
    return False


def solver_count():
    return _solver_count


def set_solver_count(count):
    """Recorded for scripts that set it; protonet still trains with one
    solver, so parameters are never divided between solvers."""
    global _solver_count
    count = int(count)
    if count < 1:
        raise ProtonetError(f"set_solver_count: need at least 1 solver, "
                            f"got {count}")
    _solver_count = count


def solver_rank():
    return _solver_rank


def set_solver_rank(rank):
    global _solver_rank
    rank = int(rank)
    if not 0 <= rank < _solver_count:
        raise ProtonetError(f"set_solver_rank: rank {rank} is outside "
                            f"0..{_solver_count - 1} (solver_count)")
    _solver_rank = rank


def set_multiprocess(flag):
    global _multiprocess
    _multiprocess = bool(flag)


class NCCL:
    """Stub of pycaffe's NCCL (multi-GPU gradient exchange).

    protonet runs on the CPU without NCCL, so `has_nccl()` is False and
    creating an NCCL object or a uid raises; scripts that check `has_nccl()`
    first, as Caffe's own do, keep working.
    """

    _MESSAGE = ("protonet has no NCCL (multi-GPU training); caffe.has_nccl() "
                "is False. Train with one solver (solver.solve()/step()) "
                "instead of caffe.NCCL")

    def __init__(self, solver=None, uid=None):
        raise ProtonetError(self._MESSAGE)

    @staticmethod
    def new_uid():
        raise ProtonetError(NCCL._MESSAGE)


# ---------------------------------------------------------------------------


class Timer:
    """pycaffe's `caffe.Timer`: start(), stop(), and `ms`, the milliseconds
    between the last start and stop (wall clock, as Caffe's CPU timer)."""

    def __init__(self):
        self._start = None
        self._elapsed = 0.0
        self.running = False

    def start(self):
        if not self.running:
            self._start = time.perf_counter()
            self.running = True

    def stop(self):
        if self.running:
            self._elapsed = time.perf_counter() - self._start
            self.running = False

    @property
    def ms(self):
        # NOTE(caffe): reading the time of a running timer stops it, and a
        # timer that never ran reads 0.
        if self._start is None:
            return 0.0
        self.stop()
        return self._elapsed * 1e3

    def __repr__(self):
        state = "running" if self.running else f"{self.ms:.3f} ms"
        return f"<Timer {state}>"


# ---------------------------------------------------------------------------

# pycaffe module names -> protonet module names.
_ALIASES = {
    "caffe": "protonet",
    "caffe._caffe": "protonet.pycaffe",
    "caffe.pycaffe": "protonet.pycaffe",
    "caffe.proto": "protonet.proto",
    "caffe.proto.caffe_pb2": "protonet.proto.caffe_pb2",
    "caffe.io": "protonet.io",
    "caffe.net_spec": "protonet.netspec",
    "caffe.draw": "protonet.draw",
    "caffe.classifier": "protonet.classifier",
    "caffe.detector": "protonet.detector",
    "caffe.coord_map": "protonet.coord_map",
}


def install_caffe_alias(replace=False):
    """Make `import caffe` (and pycaffe's submodules) load protonet.

    After this call an unmodified pycaffe script works: `import caffe`,
    `from caffe.proto import caffe_pb2`, `from caffe import layers as L,
    params as P`, `import caffe.draw`, `from caffe.coord_map import crop`...

    Args:
        replace: also replace a different module already imported as
            `caffe` (for instance the real pycaffe).  Without it that case
            raises, so the two are never mixed silently.

    Returns:
        the protonet package (now also `sys.modules['caffe']`).
    """
    import importlib
    current = sys.modules.get("caffe")
    if current is not None and getattr(current, "__name__", "") != "protonet" \
            and not replace:
        raise ProtonetError(
            f"a different 'caffe' module is already imported (from "
            f"{getattr(current, '__file__', '?')}); call "
            "install_caffe_alias(replace=True) to use protonet instead")
    modules = {alias: importlib.import_module(target)
               for alias, target in _ALIASES.items()}
    sys.modules.update(modules)
    return modules["caffe"]
