"""Solver status codes and counter indices, derived from the values the compiled core exports
(csrc/core/status.h): nothing here retypes a number."""

from __future__ import annotations

import enum

from . import _C

__all__ = ["Status", "Counter", "MAX_NON_FINITE_RETRIES"]

#: A solve's (or a sample's) status, as the C++ loops and kernels set it. ``Status.SUCCESS.name.lower()``
#: is what :attr:`fastdiffeq.SolveStats.status` reports.
Status = enum.IntEnum("Status", {name.upper(): value for name, value in _C.status_codes.items()},
                      module=__name__)
Status.__doc__ = """Solver status codes, as the compiled core defines them (csrc/core/status.h).

Members: RUNNING, SUCCESS, MAX_STEPS, STEP_UNDERFLOW, NON_FINITE, INVALID_INDEX. A solve that ends with
anything but SUCCESS raises a :class:`fastdiffeq.SolverError` subclass; :attr:`SolveStats.status` is the
member's lower-case name.

Example:
    >>> fastdiffeq.odeint(func, y0, t)
    >>> fastdiffeq.Status[fastdiffeq.last_stats().status.upper()] is fastdiffeq.Status.SUCCESS
    True
"""

#: Column indices of the solver's int64 counters tensor ``[B, len(Counter)]``.
Counter = enum.IntEnum("Counter", {name.upper(): value for name, value in _C.counter_indices.items()},
                       module=__name__)
Counter.__doc__ = "Columns of the solver's counters tensor (csrc/core/status.h)."

#: Consecutive attempts with a non-finite error estimate after which a solve stops with NON_FINITE.
MAX_NON_FINITE_RETRIES: int = _C.max_non_finite_retries


def status_name(code: int) -> str:
    """The SolveStats.status string of a status code ('success', 'max_steps', ...)."""
    return Status(code).name.lower()
