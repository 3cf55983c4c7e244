"""Caffe's solvers: the training loop, six update rules, lr policies, snapshots and max-norm.

    solver = torchcaffe.get_solver("solver.prototxt")     # the class named by `type`
    solver = torchcaffe.SGDSolver("solver.prototxt")      # pycaffe style: the class decides
    solver.net.copy_from("init.caffemodel")
    solver.step(100)                                      # or solver.solve()

See ``docs/solvers.md`` for the rules as Caffe states them and where we differ.
"""
from __future__ import annotations

from .base import Solver, SolverError, read_solver_param
from .lr_policies import POLICIES, learning_rate
from .maxnorm import renorm, renorm_
from .sgd import (SOLVER_TYPES, AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,
                  SGDSolver)
from .snapshot import SnapshotError, read_solverstate

__all__ = ["get_solver", "Solver", "SolverError", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "SOLVER_TYPES", "POLICIES", "learning_rate",
           "renorm", "renorm_", "read_solverstate", "SnapshotError"]


def get_solver(solver, device=None, source: str | None = None, amp: str | None = None,
               allow_nonfinite: bool = False, allow_python_layers: bool = True) -> Solver:
    """The solver a solver file asks for (pycaffe's ``caffe.get_solver``): its ``type`` (or the
    deprecated ``solver_type`` enum) picks the class. ``solver`` is a path, prototxt text or a
    ``caffe_pb2.SolverParameter`` (``source`` then names it in error messages); ``amp`` is
    ``None``, ``"bf16"`` or ``"fp16"`` (see ``Solver.amp``); ``allow_nonfinite=True`` trains on
    through NaN/Inf instead of stopping (see ``torchcaffe/net/debug.py``);
    ``allow_python_layers=False`` refuses the nets' Python layers."""
    param, source = read_solver_param(solver, source)
    cls = SOLVER_TYPES.get(param.type)
    if cls is None:
        known = ", ".join(f'"{name}"' for name in SOLVER_TYPES)
        raise SolverError(f"{source}: unknown solver type \"{param.type}\" (field type); known types: {known}")
    return cls(param, device, source=source, amp=amp, allow_nonfinite=allow_nonfinite,
               allow_python_layers=allow_python_layers)
