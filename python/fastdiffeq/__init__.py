"""fastdiffeq: fused, compiled ODE solvers for PyTorch.

Public API:
    odeint(func, y0, t, *, rtol, atol, method, options)  -- drop-in for torchdiffeq.odeint
    last_stats() -> SolveStats                           -- NFE, accepted/rejected steps of the last solve
    SolverError, MaxStepsError, StepSizeUnderflowError, NonFiniteStateError
"""

import torch  # noqa: F401  (loads libtorch before the extension, which has no RPATH to it)

from . import _C  # noqa: F401
from ._errors import MaxStepsError, NonFiniteStateError, SolverError, StepSizeUnderflowError
from ._odeint import METHODS, odeint
from ._stats import SolveStats, last_stats

__version__ = "0.1.0"

__all__ = [
    "odeint",
    "last_stats",
    "SolveStats",
    "SolverError",
    "MaxStepsError",
    "StepSizeUnderflowError",
    "NonFiniteStateError",
    "METHODS",
]
