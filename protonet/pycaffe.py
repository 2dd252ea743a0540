"""The rest of pycaffe's API, and `install_caffe_alias()` for unmodified scripts.

Mirrors: python/caffe/_caffe.cpp (the Boost.Python bindings) and
python/caffe/pycaffe.py.  Most of pycaffe's surface lives where it belongs
(`protonet.Net`, `protonet.Blob`, the solvers, `protonet.io`,
`protonet.netspec`); this module adds what is left:

* module functions: `init_log`, `log`, `has_nccl`, `solver_count`,
  `set_solver_count`, `solver_rank`, `set_solver_rank`, `set_multiprocess`;
* classes: `Timer` (pycaffe's `caffe.Timer`), `NCCL` (a stub: protonet runs
  one solver on one CPU, so constructing it raises), `LayerParameter`;
* the Net and Solver methods pycaffe binds that protonet's classes do not
  define themselves (`share_with`, `save_hdf5`, `load_hdf5`, `_forward`,
  `_backward`, `_inputs`, `_outputs`, `_bottom_ids`,
  `_top_ids`; `Solver.share_weights`).  They are attached to the classes at
  import time -- exactly how pycaffe itself decorates the C++ `Net` with
  Python methods -- and only where the class has no attribute of that name,
  so a real implementation in net.py or the solvers always wins.

`install_caffe_alias()` registers protonet under the module names pycaffe
uses (`caffe`, `caffe.proto.caffe_pb2`, `caffe.io`, `caffe.draw`, ...), so a
script that says `import caffe` runs on protonet without an edit.
"""

import logging
import sys
import time

from . import caffelog
from .errors import ProtonetError
from .net import Net
from .proto import caffe_pb2
from .solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver,  # noqa: F401
                      NesterovSolver, RMSPropSolver, SGDSolver, Solver,
                      get_solver)

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
# Net and Solver methods bound by _caffe.cpp


def _net_share_with(self, other):
    """Make this net's parameters views of `other`'s, matching layers by name
    (Caffe's Net::ShareTrainedLayersWith; layers only here are kept)."""
    for name, layer in zip(other._layer_names, other.layers):
        if not layer.blobs or name not in self.layer_dict:
            continue
        target = self.layer_dict[name].blobs
        if len(target) != len(layer.blobs):
            raise ProtonetError(
                f"share_with: layer '{name}' has {len(layer.blobs)} parameter "
                f"blob(s) in the source net but {len(target)} in this one")
        for i, (src, dst) in enumerate(zip(layer.blobs, target)):
            if src.shape != dst.shape:
                raise ProtonetError(
                    f"share_with: layer '{name}' param {i}: source shape "
                    f"{src.shape}, this net's shape {dst.shape}")
            dst.share_data(src)


def _net_save_hdf5(self, filename):
    """Write the parameters as Caffe's HDF5 weights file (Net::ToHDF5)."""
    from .hdf5 import save_hdf5
    save_hdf5(self, str(filename))


def _net_load_hdf5(self, filename):
    """Copy parameters from Caffe's HDF5 weights file by layer name."""
    from .hdf5 import copy_from_hdf5
    copy_from_hdf5(self, str(filename))


def _net_forward_raw(self, start, end):
    """pycaffe's Net._forward(start, end): layer indices, inclusive."""
    return self.forward_from_to(start, end)


def _net_backward_raw(self, start, end):
    """pycaffe's Net._backward(start, end): layer indices, start >= end."""
    self.backward_from_to(start, end)


_NET_EXTRAS = {
    "share_with": _net_share_with,
    "save_hdf5": _net_save_hdf5,
    "load_hdf5": _net_load_hdf5,
    "_forward": _net_forward_raw,
    "_backward": _net_backward_raw,
    "_inputs": property(lambda self: list(self.input_ids)),
    "_outputs": property(lambda self: [self._blob_names.index(n)
                                       for n in self.outputs]),
    "_bottom_ids": lambda self, i: list(self.bottom_ids[i]),
    "_top_ids": lambda self, i: list(self.top_ids[i]),
}


def _solver_share_weights(self, net):
    """pycaffe's Solver.share_weights(net): `net` uses the training net's
    parameters from now on (by layer name)."""
    _net_share_with(net, self.net)


def _add_missing(cls, methods):
    for name, fn in methods.items():
        if name not in cls.__dict__ and not any(name in base.__dict__
                                                for base in cls.__mro__[1:]):
            setattr(cls, name, fn)


_add_missing(Net, _NET_EXTRAS)
_add_missing(Solver, {"share_weights": _solver_share_weights})


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
