"""Solvers with Caffe's exact update rules (pycaffe's SGDSolver, ...).

`get_solver(path)` builds the solver its `type` names (Caffe's
SolverRegistry); the classes can also be used directly, as in pycaffe.
"""

from ..errors import SolverError
from .adaptive import AdaDeltaSolver, AdaGradSolver, AdamSolver, RMSPropSolver
from .base import Solver, load_solver_param
from .sgd import NesterovSolver, SGDSolver

SOLVERS = {cls.type_name: cls for cls in (
    SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver,
    AdamSolver)}


def solver_class(type_name, where="<solver>"):
    """The solver class for a SolverParameter `type`."""
    cls = SOLVERS.get(type_name)
    if cls is None:
        raise SolverError(f"{where}: type: unknown solver type '{type_name}' "
                          f"(known: {', '.join(SOLVERS)})")
    return cls


def get_solver(solver, action_request=None, path=None):
    """Build the solver a solver prototxt (path, text or SolverParameter)
    asks for (pycaffe's `caffe.get_solver`); `path` names the file a
    SolverParameter was read from."""
    param, path = load_solver_param(solver, path)
    cls = solver_class(param.type, path or "<solver>")
    return cls(param, action_request=action_request, path=path)


__all__ = ["AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "NesterovSolver",
           "RMSPropSolver", "SGDSolver", "Solver", "SOLVERS", "get_solver",
           "load_solver_param", "solver_class"]
