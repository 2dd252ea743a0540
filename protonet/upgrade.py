"""Upgrading legacy Caffe definitions to the current format.

Mirrors: src/caffe/util/upgrade_proto.cpp.  Applied by `protonet.io` to every
net and solver it reads, so the rest of protonet only sees V2 nets.
"""

from .errors import UpgradeError
from .proto import caffe_pb2


def upgrade_net(net, path=None):
    """Upgrade a NetParameter in place; returns True when anything changed."""
    changed = False
    if net.layers:
        raise UpgradeError(f"{path or '<net>'}: V1 'layers' nets are not "
                           "upgraded yet")
    changed |= _upgrade_input_fields(net, path)
    changed |= _upgrade_fork_text_fields(net)
    return changed


def _upgrade_input_fields(net, path):
    """`input` / `input_dim` / `input_shape` -> an Input layer in front."""
    if not net.input:
        if net.input_dim or net.input_shape:
            raise UpgradeError(f"{path or '<net>'}: input_dim/input_shape "
                               "given without input names")
        return False
    n = len(net.input)
    if net.input_shape and len(net.input_shape) not in (1, n):
        raise UpgradeError(f"{path or '<net>'}: {n} inputs but "
                           f"{len(net.input_shape)} input_shape entries")
    if net.input_dim and len(net.input_dim) != 4 * n:
        raise UpgradeError(f"{path or '<net>'}: {n} inputs need {4 * n} "
                           f"input_dim values, found {len(net.input_dim)}")
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    for i, name in enumerate(net.input):
        layer.top.append(name)
        shape = layer.input_param.shape.add()
        if net.input_shape:
            shape.CopyFrom(net.input_shape[min(i, len(net.input_shape) - 1)])
        elif net.input_dim:
            shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
    layers = [layer] + list(net.layer)
    del net.layer[:]
    net.layer.extend(layers)
    net.ClearField("input")
    net.ClearField("input_dim")
    net.ClearField("input_shape")
    return True


def _upgrade_fork_text_fields(net):
    """Map text-only fork spellings onto BVLC fields (see proto/caffe.proto)."""
    changed = False
    for layer in net.layer:
        if layer.HasField("pooling_param"):
            p = layer.pooling_param
            if p.HasField("ceil_mode"):
                p.round_mode = (caffe_pb2.PoolingParameter.CEIL if p.ceil_mode
                                else caffe_pb2.PoolingParameter.FLOOR)
                p.ClearField("ceil_mode")
                changed = True
    return changed


_SOLVER_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp",
                 4: "AdaDelta", 5: "Adam"}


def upgrade_solver(solver, path=None):
    """`solver_type` enum -> `type` string (as UpgradeSolverType)."""
    if solver.HasField("solver_type"):
        if solver.HasField("type") and \
                solver.type.lower() != _SOLVER_TYPES[solver.solver_type].lower():
            raise UpgradeError(f"{path or '<solver>'}: both solver_type and "
                               "type are set and disagree")
        solver.type = _SOLVER_TYPES[solver.solver_type]
        solver.ClearField("solver_type")
        return True
    return False
