"""Counters of the most recent solve, per thread."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

__all__ = ["SolveStats", "last_stats", "last_backward_stats"]


@dataclass(frozen=True)
class SolveStats:
    """What a solve cost.

    Attributes:
        method: the Runge-Kutta method used.
        nfe: evaluations of the vector field (the initial-step probe and f(t0) included).
        n_accepted: accepted steps.
        n_rejected: rejected step attempts.
        n_steps: step attempts, n_accepted + n_rejected (a property).
        t_final: the time the solver reached (past the last output time: outputs are interpolated).
        status: the lower-case name of a :class:`fastdiffeq.Status`: 'success', 'max_steps', 'step_underflow',
            'non_finite' (or 'invalid_index', which only a CUDA kernel fed an invalid index reports).
        field: which path evaluated the vector field: 'native' (in C++, e.g. :class:`fastdiffeq.nn.MLP`) or
            'python' (a call into Python per evaluation).
    """

    method: str
    nfe: int
    n_accepted: int
    n_rejected: int
    t_final: float
    status: str
    field: str = "python"

    @property
    def n_steps(self) -> int:
        """Step attempts, accepted and rejected."""
        return self.n_accepted + self.n_rejected

    def __repr__(self) -> str:
        # Every counter, n_steps (a property) included.
        return (f"SolveStats(method={self.method!r}, nfe={self.nfe}, n_steps={self.n_steps}, "
                f"n_accepted={self.n_accepted}, n_rejected={self.n_rejected}, t_final={self.t_final!r}, "
                f"status={self.status!r}, field={self.field!r})")


_local = threading.local()


def _record(stats: SolveStats) -> None:
    _local.stats = stats


def last_stats() -> Optional[SolveStats]:
    """The :class:`SolveStats` of the last solve started by this thread, or None if there was none.

    Example:
        >>> y = fastdiffeq.odeint(func, y0, t)
        >>> fastdiffeq.last_stats().nfe
        62
    """
    return getattr(_local, "stats", None)


def _record_backward(stats: SolveStats) -> None:
    _local.backward_stats = stats


def last_backward_stats() -> Optional[SolveStats]:
    """Counters of the last backward pass run by this thread that solved something (odeint_adjoint's
    reverse-time solves, summed over output intervals; the step replays of gradient='checkpoint').

    Example:
        >>> loss = fastdiffeq.odeint_adjoint(func, y0, t).square().sum(); loss.backward()
        >>> fastdiffeq.last_backward_stats().nfe
        131
    """
    return getattr(_local, "backward_stats", None)
