"""Exceptions raised by fastdiffeq's solvers.

Bad arguments raise ``ValueError`` / ``TypeError`` naming the argument. A solve that starts but cannot
finish raises a :class:`SolverError` subclass carrying where it stopped and the solver's counters.
"""

from __future__ import annotations

from typing import Optional

from ._stats import SolveStats

__all__ = ["SolverError", "MaxStepsError", "StepSizeUnderflowError", "NonFiniteStateError"]


class SolverError(RuntimeError):
    """A solve stopped before reaching the last output time.

    Attributes:
        t: the time the solver had reached (float, in the caller's time direction).
        n_steps: step attempts made (accepted + rejected).
        stats: the :class:`SolveStats` of the failed solve.
    """

    def __init__(self, message: str, *, t: float, stats: Optional[SolveStats] = None) -> None:
        super().__init__(message)
        self.t = t
        self.stats = stats
        self.n_steps = 0 if stats is None else stats.n_accepted + stats.n_rejected


class MaxStepsError(SolverError):
    """``max_num_steps`` step attempts were made without reaching the next output time."""


class StepSizeUnderflowError(SolverError):
    """The step size became too small to advance time (``t + h == t`` in float64)."""


class NonFiniteStateError(SolverError):
    """The vector field kept producing NaN or inf, even after the step size was cut repeatedly."""
