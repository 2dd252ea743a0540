"""Start-up validation of a SolverParameter: every value the run will use.

Mirrors the checks of src/caffe/solver.cpp (average_loss >= 1, test_iter per
test net), src/caffe/solvers/sgd_solver.cpp (stepsize > 0, gamma >= 0 for
'step'), adagrad (no momentum) and rmsprop (0 <= rms_decay < 1), plus what
Caffe leaves to chance: every float field finite, ranges that keep each
solver's update defined (Adam divides by 1 - momentum^t, the adaptive
solvers by sqrt(h) + delta), and learning rates that stay finite over the
whole run (see `protonet.lr_policy.check_policy`).

Every error names the solver file, the field and the value found.
"""

import math

from ..errors import SolverError
from ..lr_policy import check_policy, describe_policy

FLOAT_FIELDS = ("base_lr", "gamma", "power", "momentum", "weight_decay",
                "clip_gradients", "delta", "momentum2", "rms_decay")
NON_NEGATIVE = ("display", "test_interval", "snapshot", "max_iter")


def _fmt(v):
    return f"{v:.7g}"


def _bad(where, field, want, value):
    return SolverError(f"{where}: {field}: {want}, got {_fmt(value)}")


def _in_range(p, where, field, lo, hi, hi_open, why):
    v = getattr(p, field)
    if not (lo <= v and (v < hi if hi_open else v <= hi)):
        top = ")" if hi_open else "]"
        raise _bad(where, field, f"must lie in [{_fmt(lo)}, {_fmt(hi)}{top} "
                   f"{why}", v)


def _momentum_solver(p, where, kind):
    _in_range(p, where, "momentum", 0, 1, False,
              f"for the {kind} solver (the momentum buffer must not grow)")


def _positive_delta(p, where, kind):
    if p.delta <= 0:
        raise _bad(where, "delta", f"must be > 0 for the {kind} solver "
                   "(it keeps the division by sqrt(history) + delta finite)",
                   p.delta)


def _adagrad(p, where, kind):
    # NOTE(caffe): AdaGradSolver's constructor: CHECK_EQ(0, momentum).
    if p.momentum != 0:
        raise _bad(where, "momentum", "momentum cannot be used with AdaGrad "
                   "(must be 0)", p.momentum)
    _positive_delta(p, where, kind)


def _rmsprop(p, where, kind):
    # NOTE(caffe): RMSPropSolver's constructor: 0 <= rms_decay < 1.
    _in_range(p, where, "rms_decay", 0, 1, True, "for RMSProp")
    _positive_delta(p, where, kind)


def _adadelta(p, where, kind):
    _in_range(p, where, "momentum", 0, 1, False, "for AdaDelta")
    _positive_delta(p, where, kind)


def _adam(p, where, kind):
    # The bias correction divides by 1 - momentum^t and multiplies by
    # sqrt(1 - momentum2^t): momentum 1 divides by zero, momentum2 1 stops
    # training silently.
    _in_range(p, where, "momentum", 0, 1, True,
              "for Adam (the bias correction divides by 1 - momentum^t)")
    _in_range(p, where, "momentum2", 0, 1, True,
              "for Adam (the bias correction is sqrt(1 - momentum2^t))")
    _positive_delta(p, where, kind)


TYPE_RULES = {"SGD": _momentum_solver, "Nesterov": _momentum_solver,
              "AdaGrad": _adagrad, "RMSProp": _rmsprop,
              "AdaDelta": _adadelta, "Adam": _adam}

# A run that would write more snapshots than this is warned about.
MANY_SNAPSHOTS = 10000


def check_solver_param(p, where, type_name=None):
    """Raise SolverError for the first value that makes the run undefined.

    Args:
        p: the SolverParameter (upgraded).
        where: the solver file (or '<solver>') for the messages.
        type_name: the solver that will run (pycaffe's SGDSolver(path)
            ignores the file's `type`); default `p.type`.
    """
    for field in FLOAT_FIELDS:
        v = getattr(p, field)
        if not math.isfinite(v):
            raise _bad(where, field, "must be a finite number", v)
    for field in NON_NEGATIVE:
        if getattr(p, field) < 0:
            raise SolverError(f"{where}: {field}: must be >= 0, got "
                              f"{getattr(p, field)}")
    for field in ("iter_size", "average_loss"):
        if getattr(p, field) < 1:
            raise SolverError(f"{where}: {field}: must be >= 1, got "
                              f"{getattr(p, field)}")
    for i, n in enumerate(p.test_iter):
        if n < 0:
            raise SolverError(f"{where}: test_iter[{i}]: must be >= 0, got {n}")
    if p.base_lr < 0:
        raise _bad(where, "base_lr", "must be >= 0 (a negative rate climbs "
                   "the loss)", p.base_lr)
    if p.weight_decay < 0:
        raise _bad(where, "weight_decay", "must be >= 0", p.weight_decay)
    if p.regularization_type not in ("L1", "L2"):
        raise SolverError(f"{where}: regularization_type: unknown "
                          f"regularization type '{p.regularization_type}' "
                          "(known: L1, L2)")
    # NOTE(caffe): CheckSnapshotWritePermissions: CHECK(!prefix.empty()).
    if p.snapshot and not p.snapshot_prefix:
        raise SolverError(f"{where}: snapshot_prefix: empty; snapshot: "
                          f"{p.snapshot} needs a prefix")
    check_policy(p, where)
    rule = TYPE_RULES.get(type_name or p.type)
    if rule is not None:
        rule(p, where, type_name or p.type)


def snapshot_count(p):
    """How many snapshots a full run from iteration 0 writes."""
    n = p.max_iter // p.snapshot if p.snapshot else 0
    return n + (1 if p.snapshot_after_train else 0)


def describe_update(p, rate=None):
    """The values an update multiplies by (the rate of the last update when
    known), for messages about non-finite weights."""
    text = (f"rate {rate:.7g} ({describe_policy(p)})" if rate is not None
            else describe_policy(p))
    text += f", weight_decay {p.weight_decay:.7g}"
    if p.type in ("SGD", "Nesterov", "AdaDelta", "Adam"):
        text += f", momentum {p.momentum:.7g}"
    if p.clip_gradients >= 0:
        text += f", clip_gradients {p.clip_gradients:.7g}"
    return text
