"""Momentum solvers: SGD and Nesterov.

Mirrors: src/caffe/solvers/sgd_solver.cpp (ComputeUpdateValue) and
src/caffe/solvers/nesterov_solver.cpp. One history blob per learnable
parameter (the momentum buffer), saved in the .solverstate.
"""

from functools import partial

import numpy as np

from .. import threads
from .base import Solver, f32

# Elements per block of the fused update (1 MiB of float32).
BLOCK = 1 << 18


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum.

    v <- lr * g + momentum * v;  w <- w - v   (lr = rate * lr_mult)
    """

    type_name = "SGD"

    def update_params(self, rate):
        """The whole update in one pass per block of BLOCK elements, the
        blocks spread over the cores (protonet/threads.py): the same float32
        operations, element by element, as normalize, regularize,
        compute_update_value and the subtraction one after the other, but
        each block's temporaries stay in cache.  Measured (CaffeNet, 61M
        parameters, 2 cores): 230 -> ~70 ms."""
        cls = type(self)
        if (cls.compute_update_value is not SGDSolver.compute_update_value
                or cls.regularize is not Solver.regularize
                or cls.normalize is not Solver.normalize):
            return super().update_params(rate)  # a subclass changed a step
        net, p = self.net, self.param
        inv = f32(1) / f32(p.iter_size) if p.iter_size > 1 else None
        l2 = p.regularization_type == "L2"
        m = f32(p.momentum)

        def block(w, g, h, decay, rate_i, worker):
            if inv is not None:
                g *= inv
            if decay:
                g += decay * (w if l2 else np.sign(w))
            h *= m
            h += rate_i * g
            g[...] = h
            np.subtract(w, g, out=w)
        tasks = []
        for i, blob in enumerate(net.learnable_params):
            decay = f32(p.weight_decay) * f32(net.params_weight_decay[i])
            rate_i = f32(rate) * f32(net.params_lr[i])
            w, g = blob.data.reshape(-1), blob.diff.reshape(-1)
            h = self.history[i].reshape(-1)
            tasks += [partial(block, w[s], g[s], h[s], decay, rate_i)
                      for s in (slice(a, a + BLOCK)
                                for a in range(0, w.size, BLOCK))]
        threads.run(tasks)  # dealt to the workers in contiguous groups

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
