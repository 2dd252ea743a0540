"""Momentum solvers: SGD and Nesterov.

Mirrors: src/caffe/solvers/sgd_solver.cpp (ComputeUpdateValue) and
src/caffe/solvers/nesterov_solver.cpp. One history blob per learnable
parameter (the momentum buffer), saved in the .solverstate.
"""

import numpy as np

from .base import Solver, f32


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum.

    v <- lr * g + momentum * v;  w <- w - v   (lr = rate * lr_mult)
    """

    type_name = "SGD"

    def compute_update_value(self, i, blob, rate):
        local_rate = f32(rate) * f32(self.net.params_lr[i])
        h = self.history[i]
        h *= f32(self.param.momentum)
        h += local_rate * blob.diff
        blob.diff[...] = h


class NesterovSolver(Solver):
    """Nesterov's accelerated gradient (Caffe's form).

    v' <- lr * g + momentum * v;  update = (1 + momentum) v' - momentum v
    """

    type_name = "Nesterov"

    def compute_update_value(self, i, blob, rate):
        local_rate = f32(rate) * f32(self.net.params_lr[i])
        m = f32(self.param.momentum)
        h = self.history[i]
        prev = h.copy()
        h *= m
        h += local_rate * blob.diff
        np.multiply(h, f32(1) + m, out=blob.diff)
        blob.diff += -m * prev
