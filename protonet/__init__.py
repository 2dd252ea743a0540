"""protonet: a Caffe-compatible deep-learning runtime on NumPy.

The pycaffe-compatible surface lives here, so `import protonet as caffe`
keeps existing scripts working.
"""

from . import io, rng  # noqa: F401
from .blob import Blob
from .errors import ProtonetError
from .layer import Layer, layer_type_list, register
from .net import TEST, TRAIN, Net
from .proto import caffe_pb2  # noqa: F401
from .rng import set_random_seed
from .solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver,  # noqa: F401
                      NesterovSolver, RMSPropSolver, SGDSolver, get_solver)

__version__ = "0.1.0"

__all__ = ["Blob", "Layer", "Net", "ProtonetError", "TEST", "TRAIN",
           "layer_type_list", "register", "set_random_seed", "set_mode_cpu",
           "set_device", "get_solver", "SGDSolver", "NesterovSolver",
           "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver"]


def set_mode_cpu():
    """protonet always runs on the CPU."""


def set_device(device_id):
    """Accepted for pycaffe compatibility; protonet runs on the CPU."""
