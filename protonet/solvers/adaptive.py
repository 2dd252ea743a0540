"""Adaptive solvers: AdaGrad, RMSProp, AdaDelta, Adam.

Mirrors: src/caffe/solvers/{adagrad,rmsprop,adadelta,adam}_solver.cpp, with
their float32 operation order. History layout as Caffe's: AdaGrad and
RMSProp keep one blob per learnable parameter; AdaDelta keeps the squared
gradients then the squared updates, Adam the first moments then the second
moments (two sets of N blobs, in that order).
"""

import math

import numpy as np

from .base import Solver, f32


class AdaGradSolver(Solver):
    """h <- h + g^2;  update = lr * g / (sqrt(h) + delta)."""

    type_name = "AdaGrad"

    def compute_update_value(self, i, blob, rate):
        local_rate = f32(rate) * f32(self.net.params_lr[i])
        g = blob.diff
        h = self.history[i]
        h += g * g
        upd = np.sqrt(h)
        upd += f32(self.param.delta)
        np.divide(g, upd, out=upd)
        np.multiply(upd, local_rate, out=blob.diff)


class RMSPropSolver(Solver):
    """h <- (1 - rms_decay) g^2 + rms_decay h;  update = lr g / (sqrt(h) + delta)."""

    type_name = "RMSProp"

    def compute_update_value(self, i, blob, rate):
        local_rate = f32(rate) * f32(self.net.params_lr[i])
        decay = f32(self.param.rms_decay)
        g = blob.diff
        h = self.history[i]
        h *= decay
        h += (f32(1) - decay) * (g * g)
        upd = np.sqrt(h)
        upd += f32(self.param.delta)
        np.divide(g, upd, out=upd)
        np.multiply(upd, local_rate, out=blob.diff)


class AdaDeltaSolver(Solver):
    """Zeiler's AdaDelta, with Caffe's learning rate on top.

    hg <- m hg + (1-m) g^2;  u = g sqrt((hu + delta) / (hg + delta));
    hu <- m hu + (1-m) u^2;  update = lr * u    (m = momentum)
    """

    type_name = "AdaDelta"

    def pre_solve(self):
        self.history += [np.zeros(b.shape, f32) for b in self.net.learnable_params]

    def compute_update_value(self, i, blob, rate):
        n = len(self.net.learnable_params)
        local_rate = f32(rate) * f32(self.net.params_lr[i])
        m = f32(self.param.momentum)
        delta = f32(self.param.delta)
        g = blob.diff
        hg, hu = self.history[i], self.history[n + i]
        hg *= m
        hg += (f32(1) - m) * (g * g)
        upd = hu + delta
        upd /= hg + delta
        np.sqrt(upd, out=upd)
        g *= upd
        hu *= m
        hu += (f32(1) - m) * (g * g)
        g *= local_rate


class AdamSolver(Solver):
    """Adam (Kingma & Ba), with the bias correction folded into the rate.

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
    update = lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta),
    t = iter + 1 (b1 = momentum, b2 = momentum2).
    """

    type_name = "Adam"

    def pre_solve(self):
        self.history += [np.zeros(b.shape, f32) for b in self.net.learnable_params]

    def compute_update_value(self, i, blob, rate):
        n = len(self.net.learnable_params)
        local_rate = f32(rate) * f32(self.net.params_lr[i])
        b1 = f32(self.param.momentum)
        b2 = f32(self.param.momentum2)
        t = self.iter + 1
        # NOTE(caffe): the correction is computed in double, then rounded.
        correction = f32(math.sqrt(1.0 - math.pow(float(b2), t)) /
                         (1.0 - math.pow(float(b1), t)))
        g = blob.diff
        m, v = self.history[i], self.history[n + i]
        m *= b1
        m += (f32(1) - b1) * g
        v *= b2
        v += (f32(1) - b2) * (g * g)
        upd = np.sqrt(v)
        upd += f32(self.param.delta)
        np.divide(m, upd, out=upd)
        np.multiply(upd, local_rate * correction, out=blob.diff)
