"""Learning-rate policies, exactly as Caffe's SGDSolver::GetLearningRate.

Mirrors: src/caffe/solvers/sgd_solver.cpp (GetLearningRate).

The rate for iteration `it` uses `it` BEFORE the solver increments it, so the
first update (it = 0) always uses `base_lr` for the decaying policies.
Caffe returns the rate as a float; `learning_rate` evaluates the formula in
double from the (float) proto fields and rounds once to float32, which
matches the rates Caffe used to 1e-7 relative.

Policies (base_lr, gamma, power, stepsize, stepvalue, max_iter from the
SolverParameter):

- fixed:     base_lr
- step:      base_lr * gamma ^ floor(it / stepsize)
- exp:       base_lr * gamma ^ it
- inv:       base_lr * (1 + gamma * it) ^ (-power)
- multistep: base_lr * gamma ^ k, k = number of stepvalues already passed
             (k advances by at most one per call, as in Caffe)
- poly:      base_lr * (1 - it / max_iter) ^ power
- sigmoid:   base_lr / (1 + exp(-gamma * (it - stepsize)))
"""

import math

import numpy as np

from .errors import SolverError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

_f32 = np.float32


def check_policy(param, path=None):
    """Raise SolverError for an unknown policy or missing/invalid fields."""
    where = path or "<solver>"
    policy = param.lr_policy
    if not param.HasField("lr_policy"):
        raise SolverError(f"{where}: lr_policy: not set; choose one of "
                          f"{', '.join(POLICIES)}")
    if policy not in POLICIES:
        raise SolverError(f"{where}: lr_policy: unknown learning rate policy "
                          f"'{policy}' (known: {', '.join(POLICIES)})")
    if policy == "step" and param.stepsize <= 0:
        raise SolverError(f"{where}: stepsize: lr_policy 'step' needs "
                          f"stepsize > 0, got {param.stepsize}")
    if policy == "step" and param.gamma < 0:
        raise SolverError(f"{where}: gamma: lr_policy 'step' needs gamma >= 0, "
                          f"got {param.gamma}")
    if policy == "poly" and param.max_iter <= 0:
        raise SolverError(f"{where}: max_iter: lr_policy 'poly' needs "
                          f"max_iter > 0, got {param.max_iter}")


def learning_rate(param, it, current_step=0):
    """The rate used for iteration `it`.

    Args:
        param: the SolverParameter.
        it: the iteration (number of updates already done).
        current_step: Caffe's `current_step_` (used and advanced by the
            'multistep' policy, recomputed by 'step').

    Returns:
        (rate as np.float32, the new current_step).
    """
    policy = param.lr_policy
    # The fields are float in the proto; the formula is evaluated in double
    # from those float values and rounded to float once at the end.
    base = float(_f32(param.base_lr))
    gamma = float(_f32(param.gamma))
    power = float(_f32(param.power))
    if policy == "fixed":
        rate = base
    elif policy == "step":
        if param.stepsize <= 0:
            raise SolverError(f"lr_policy 'step' needs stepsize > 0, got "
                              f"{param.stepsize}")
        current_step = it // param.stepsize
        rate = base * math.pow(gamma, current_step)
    elif policy == "exp":
        rate = base * math.pow(gamma, it)
    elif policy == "inv":
        rate = base * math.pow(1.0 + gamma * it, -power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and \
                it >= param.stepvalue[current_step]:
            current_step += 1
        rate = base * math.pow(gamma, current_step)
    elif policy == "poly":
        rate = base * math.pow(1.0 - it / float(param.max_iter), power)
    elif policy == "sigmoid":
        z = -gamma * (it - param.stepsize)
        rate = base / (1.0 + math.exp(z)) if z < 700 else 0.0
    else:
        raise SolverError(f"lr_policy: unknown learning rate policy "
                          f"'{policy}' (known: {', '.join(POLICIES)})")
    return _f32(rate), current_step
