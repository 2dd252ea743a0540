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
- plateau:   [protonet] base_lr * gamma ^ k, k = reductions so far: one each
             time a test output stops improving (see `Plateau`)
"""

import math

import numpy as np

from .errors import SolverError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid",
            "plateau")

_f32 = np.float32


def check_policy(param, path=None):
    """Raise SolverError for an unknown policy, missing/invalid fields, or a
    rate that is not a finite number >= 0 somewhere in the run.

    The policies are monotonic in the iteration (sigmoid is bounded by
    base_lr), so the rates at the first and last iterations of the run (and
    multistep's after its last stepvalue) bound every rate in between.
    """
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
    if policy in ("step", "exp", "multistep") and param.gamma < 0:
        raise SolverError(f"{where}: gamma: lr_policy '{policy}' needs "
                          f"gamma >= 0, got {param.gamma:.7g}")
    if policy == "plateau":
        _check_plateau(param, where)
        return      # its rate only falls from base_lr: nothing to evaluate
    if policy == "poly" and param.max_iter <= 0:
        raise SolverError(f"{where}: max_iter: lr_policy 'poly' needs "
                          f"max_iter > 0, got {param.max_iter}")
    if policy == "multistep":
        values = list(param.stepvalue)
        for a, b in zip(values, values[1:]):
            if b <= a:
                raise SolverError(
                    f"{where}: stepvalue: lr_policy 'multistep' needs "
                    f"strictly increasing stepvalues, got {values}")
    last = max(param.max_iter - 1, 0)
    steps = len(param.stepvalue) if policy == "multistep" else 0
    for it, step in ((0, 0), (last, steps)):
        if policy == "multistep":    # the rate after `step` stepvalues
            it = param.stepvalue[step - 1] if step else 0
            step = max(step - 1, 0)
        rate = learning_rate(param, it, step, where)[0]
        if rate < 0:
            raise SolverError(f"{where}: {describe_policy(param)}: the learning "
                              f"rate at iteration {it} would be {rate:g}; "
                              "it must be >= 0")


def _check_plateau(param, where):
    pp = param.plateau_param
    if param.test_interval <= 0:
        raise SolverError(f"{where}: test_interval: lr_policy 'plateau' watches "
                          f"a test output, so it needs test_interval > 0, got "
                          f"{param.test_interval}")
    if not 0 < param.gamma < 1:
        raise SolverError(f"{where}: gamma: lr_policy 'plateau' multiplies the "
                          f"rate by gamma, which must be in (0, 1), got "
                          f"{param.gamma}")
    for name, value, ok in [
            ("patience", pp.patience, pp.patience >= 1),
            ("cooldown", pp.cooldown, pp.cooldown >= 0),
            ("threshold", pp.threshold, 0 <= pp.threshold < 1),
            ("min_lr", pp.min_lr, 0 <= pp.min_lr < float("inf")),
            ("test_net", pp.test_net, pp.test_net >= 0)]:
        if not ok:
            raise SolverError(f"{where}: plateau_param.{name}: invalid value "
                              f"{value}")


class Plateau:
    """The state of lr_policy "plateau" [protonet].

    After every test pass the solver calls `observe` with the monitored
    output; when it has not improved on the best value by more than
    `threshold` (relative) for `patience` passes in a row, the rate is
    multiplied by gamma (not below min_lr) and `cooldown` passes are
    ignored. NOTE: PyTorch's ReduceLROnPlateau reduces one pass later
    (when the count exceeds patience).
    """

    def __init__(self, param):
        pp = param.plateau_param
        self.gamma = float(_f32(param.gamma))
        self.min_lr = float(_f32(pp.min_lr))
        self.monitor, self.test_net = pp.monitor, pp.test_net
        self.maximize = pp.mode == pp.MAX
        self.threshold = float(_f32(pp.threshold))
        self.patience, self.cooldown = pp.patience, pp.cooldown
        self.rate = float(_f32(param.base_lr))
        self.best = None
        self.bad = 0
        self.cooldown_left = 0
        self.reductions = 0

    def _improves(self, value):
        if self.best is None:
            return True
        margin = abs(self.best) * self.threshold
        if self.maximize:
            return value > self.best + margin
        return value < self.best - margin

    def observe(self, value):
        """Take one test pass's value; returns True if the rate was reduced."""
        value = float(value)
        if not math.isfinite(value):
            raise SolverError(f"lr_policy 'plateau': the monitored output "
                              f"'{self.monitor}' is {value}")
        if self._improves(value):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad = 0
        if self.bad < self.patience:
            return False
        self.bad, self.cooldown_left = 0, self.cooldown
        new = max(float(_f32(self.rate * self.gamma)), self.min_lr)
        if new >= self.rate:
            return False
        self.rate = new
        self.reductions += 1
        return True

    def observe_results(self, results, it, where="<solver>"):
        """Take a test pass's scores (the solver's test_results: one dict
        of output -> values per test net); logs a reduction as Caffe logs
        its rates."""
        if self.test_net >= len(results):
            raise SolverError(f"{where}: plateau_param.test_net: "
                              f"{self.test_net}, but the solver has "
                              f"{len(results)} test net(s)")
        outputs = results[self.test_net]
        if self.monitor not in outputs:
            raise SolverError(f"{where}: plateau_param.monitor: test net "
                              f"#{self.test_net} has no output "
                              f"'{self.monitor}' (outputs: "
                              f"{', '.join(outputs) or 'none'})")
        old = self.rate
        if self.observe(float(np.mean(outputs[self.monitor]))):
            from . import caffelog
            caffelog.info(f"Iteration {it}, plateau: {self.monitor} did not "
                          f"improve for {self.patience} test passes (best "
                          f"{caffelog.format_number(self.best)}); lr "
                          f"{caffelog.format_number(old)} -> "
                          f"{caffelog.format_number(self.rate)}",
                          "sgd_solver.cpp:106")

    def state(self):
        """What an exact resume needs (JSON-friendly)."""
        return {"rate": self.rate, "best": self.best, "bad": self.bad,
                "cooldown_left": self.cooldown_left,
                "reductions": self.reductions}

    def set_state(self, state, where="<sidecar>"):
        try:
            rate, best = float(state["rate"]), state["best"]
            best = None if best is None else float(best)
            bad, left = int(state["bad"]), int(state["cooldown_left"])
            reductions = int(state["reductions"])
        except (KeyError, TypeError, ValueError) as e:
            raise SolverError(f"{where}: plateau: malformed state ({e!r})") \
                from None
        if not (math.isfinite(rate) and rate >= 0 and bad >= 0 and left >= 0):
            raise SolverError(f"{where}: plateau: invalid state {state}")
        self.rate, self.best, self.bad = rate, best, bad
        self.cooldown_left, self.reductions = left, reductions


def describe_policy(param):
    """The fields the policy reads, for messages."""
    policy = param.lr_policy
    fields = [f"lr_policy '{policy}'", f"base_lr {param.base_lr:.7g}"]
    if policy in ("step", "exp", "inv", "multistep", "sigmoid", "plateau"):
        fields.append(f"gamma {param.gamma:.7g}")
    if policy in ("inv", "poly"):
        fields.append(f"power {param.power:.7g}")
    if policy in ("step", "sigmoid"):
        fields.append(f"stepsize {param.stepsize}")
    if policy == "poly":
        fields.append(f"max_iter {param.max_iter}")
    return ", ".join(fields)


def learning_rate(param, it, current_step=0, where="<solver>",
                  plateau=None):
    """The rate used for iteration `it`.

    Args:
        param: the SolverParameter.
        it: the iteration (number of updates already done).
        current_step: Caffe's `current_step_` (used and advanced by the
            'multistep' policy, recomputed by 'step').
        where: the solver file, for messages.
        plateau: the solver's `Plateau` (policy 'plateau' only).

    Returns:
        (rate as np.float32, the new current_step).

    Raises:
        SolverError: the rate is not a finite float32 (exp with a large
            gamma, inv with 1 + gamma * it <= 0) or the policy is undefined
            at `it` (poly past max_iter, where Caffe computes the power of a
            negative number: NaN, or a rate that grows again).
    """
    if param.lr_policy == "poly" and it > param.max_iter:
        raise SolverError(
            f"{where}: {describe_policy(param)}: lr_policy 'poly' is undefined past "
            f"max_iter (iteration {it}); raise max_iter to train longer")
    try:
        rate, current_step = _rate(param, it, current_step, plateau)
    except (OverflowError, ValueError, ZeroDivisionError):
        rate = math.nan
    with np.errstate(over="ignore"):
        rate32 = _f32(rate)
    if not np.isfinite(rate32):
        raise SolverError(
            f"{where}: {describe_policy(param)}: the learning rate at iteration "
            f"{it} is not a finite float ({rate:g}); check gamma and power "
            "against max_iter")
    return rate32, current_step


def _rate(param, it, current_step, plateau=None):
    """The rate in double, and the new current_step."""
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
    elif policy == "plateau":
        if plateau is None:
            raise SolverError("lr_policy 'plateau' needs the solver's test "
                              "results (a Plateau state)")
        rate = plateau.rate
    elif policy == "sigmoid":
        z = -gamma * (it - param.stepsize)
        rate = base / (1.0 + math.exp(z)) if z < 700 else 0.0
    else:
        raise SolverError(f"lr_policy: unknown learning rate policy "
                          f"'{policy}' (known: {', '.join(POLICIES)})")
    return rate, current_step
