"""protonet: a Caffe-compatible deep-learning runtime on NumPy.

The pycaffe-compatible surface lives here, so `import protonet as caffe`
keeps existing scripts working.
"""

import os as _os

# OpenBLAS's worker threads spin for 2^28 cycles (~0.1 s) after every
# multi-threaded GEMM, on the cores protonet's own worker threads are about
# to use (protonet/threads.py): CIFAR-10 quick inference, batch 64, 1700 ->
# 3100 img/s with 2^16.  Read once, when OpenBLAS loads: this only takes
# effect if NumPy was not imported before protonet, and never overrides a
# value the user set.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

from . import coord_map, draw, imageio, io, rng, summary  # noqa: F401
from .blob import Blob
from .classifier import Classifier
from .detector import Detector
from .errors import ProtonetError
from .layer import Layer, layer_type_list, register
from .layers.python_layer import allow_python_layers
from .net import TEST, TRAIN, Net
from . import layers  # noqa: F401  (also pycaffe's NetSpec `layers`)
from .netspec import NetSpec, params, to_proto
from .proto import caffe_pb2  # noqa: F401
from .pycaffe import (NCCL, LayerParameter, Timer,  # noqa: F401
                      has_nccl, init_log, install_caffe_alias, log,
                      set_multiprocess, set_solver_count, set_solver_rank,
                      solver_count, solver_rank)
from .rng import set_random_seed
from .solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver,  # noqa: F401
                      NesterovSolver, RMSPropSolver, SGDSolver, get_solver)

__version__ = "0.1.0"

__all__ = ["Blob", "Layer", "Net", "ProtonetError", "TEST", "TRAIN",
           "allow_python_layers",
           "layer_type_list", "register", "set_random_seed", "set_mode_cpu",
           "set_device", "get_solver", "SGDSolver", "NesterovSolver",
           "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver",
           "Classifier", "Detector", "NetSpec", "layers", "params", "to_proto",
           "set_mode_gpu", "install_caffe_alias", "Timer", "NCCL",
           "LayerParameter", "has_nccl", "init_log", "log", "solver_count",
           "set_solver_count", "solver_rank", "set_solver_rank",
           "set_multiprocess"]


def set_mode_cpu():
    """protonet always runs on the CPU."""


def set_mode_gpu():
    """Accepted for pycaffe compatibility with a warning; protonet runs on
    the CPU."""
    import warnings
    warnings.warn("protonet has no GPU mode; running on the CPU", stacklevel=2)


def set_device(device_id):
    """Accepted for pycaffe compatibility; protonet runs on the CPU."""
