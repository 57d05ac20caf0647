"""Terminal events with the fixed-grid methods, as torchdiffeq 0.2.5's ``integrate_until_event`` does it.

Steps of ``options['step_size']`` from t0 (required, as in torchdiffeq), the event's sign checked after each step;
in the step where it changes, the event time is found by bisection on the step's interpolant (linear or cubic
Hermite, ``options['interp']``) to the solve's ``atol`` and the state there is the interpolant's value (with
its autograd graph: the state at the event is differentiable with the event time held fixed, as in
torchdiffeq). A decreasing t is solved in s = −t with −f(−s, y) and event_fn(−s, y), as torchdiffeq does; times
are in the state's dtype (torchdiffeq casts t0 to it). Python, one step at a time: a Runge–Kutta step from the
method's tableau (``_C.tableau``) or the Adams stepper (fastdiffeq._adams).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Tuple

import torch

from . import _C
from ._adams import _NEXT, _NONE, _PREV, AdamsStepper, CountingField, _cubic, _linear
from ._stats import SolveStats, _record
from ._status import Status, status_name

MAX_STEPS = 20000  # torchdiffeq's max_itrs


class TableauStepper:
    """One explicit Runge–Kutta step from the method's tableau: step(t0, t1, y) -> (dy, f(t0, y))."""

    def __init__(self, f: CountingField, method: str, perturb: bool) -> None:
        tableau = _C.tableau(method)
        self.f, self.perturb = f, perturb
        self.c, self.a, self.b = tableau["c"], tableau["a"], tableau["b"]

    def step(self, t0: torch.Tensor, t1: torch.Tensor, y: torch.Tensor,
             dt: Any = None) -> Tuple[torch.Tensor, torch.Tensor]:
        dt = t1 - t0 if dt is None else dt
        k = [self.f(t0, y, _NEXT if self.perturb else _NONE)]
        for i in range(1, len(self.c)):
            yi = y + dt * sum(a * kj for a, kj in zip(self.a[i], k) if a != 0.0)
            if self.c[i] == 1.0:
                k.append(self.f(t1, yi, _PREV if self.perturb else _NONE))
            else:
                k.append(self.f(t0 + self.c[i] * dt, yi))
        return dt * sum(b * ki for b, ki in zip(self.b, k) if b != 0.0), k[0]


def fixed_grid_until_event(p: Any, t: torch.Tensor, event_fn: Callable, event_values: Callable):
    """(event_t, solution [2, *y0.shape]) for a fixed-grid method; p is odeint's prepared problem."""
    if p.fixed["step_size"] is None:
        raise ValueError(f"event_fn with the fixed-grid method {p.method!r} needs options['step_size'] (as in "
                         "torchdiffeq)")
    dtype = p.dtype
    reverse = bool(t[1] < t[0])
    sign = -1.0 if reverse else 1.0

    # The state in the user's shape (a tuple state: flat), as torchdiffeq steps it (its arithmetic to the bit).
    def user_state(y: torch.Tensor) -> Any:
        if not p.is_tuple:
            return y
        return tuple(x[0] for x in p.unflatten(y.reshape(1, -1)))

    def field(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = p.flat_field(sign * s, y.reshape(-1)).reshape(y.shape)
        return -out if reverse else out

    def event(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return event_values(event_fn, sign * s, user_state(y), "event_fn(t, y)")

    f = CountingField(field, dtype)
    perturb = p.fixed["perturb"]
    if p.fixed["adams"] is not None:
        stepper = AdamsStepper(f, p.fixed["adams"], perturb, p.rtols[0], p.atols[0], p.flat_y0())
    else:
        stepper = TableauStepper(f, p.method, perturb)
    y0 = p.flat_y0().reshape(p.user_shape)
    y = y0
    s0 = (sign * t[0].detach()).to(dtype)
    dt = p.fixed["step_size"]
    sign0 = torch.sign(event(s0, y))
    if sign0.numel() != 1:
        raise ValueError(f"event_fn must return one value with the fixed-grid method {p.method!r} (as in "
                         f"torchdiffeq), got shape {tuple(sign0.shape)}")
    for n_steps in range(1, MAX_STEPS + 1):
        s1 = s0 + dt
        dy, f0 = stepper.step(s0, s1, y, dt)  # dt the step size itself, as torchdiffeq passes it
        y1 = y + dy
        if bool(torch.sign(event(s1, y1)) != sign0):
            if p.fixed["interp"] == "linear":
                def interp(s, a=s0, b=s1, ya=y, yb=y1):
                    return _linear(a, b, ya, yb, s)
            else:
                f1 = f(s1, y1)

                def interp(s, a=s0, b=s1, ya=y, fa=f0, yb=y1, fb=f1):
                    return _cubic(a, ya, fa, b, yb, fb, s)
            event_s, y_event = _bisect(interp, sign0, s0, s1, event, float(p.atols[0]))
            _record(SolveStats(method=p.method, nfe=f.calls, n_accepted=n_steps, n_rejected=0,
                               t_final=float(sign * event_s), status=status_name(Status.SUCCESS), field=p.field_path))
            event_t = (sign * event_s).to(t.dtype)
            return event_t, p.unflatten(torch.stack([y0, y_event]))
        s0, y = s1, y1
    raise RuntimeError(f"fastdiffeq: no event within {MAX_STEPS} steps of step_size {dt} (torchdiffeq's limit) with "
                       f"the fixed-grid method {p.method!r}")


def _bisect(interp: Callable, sign0: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor, event: Callable,
            tol: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """torchdiffeq's find_event: ceil(log2((s1 − s0) / tol)) halvings, then the interpolant at the midpoint."""
    with torch.no_grad():
        n = max(0, math.ceil(math.log(float(s1 - s0) / tol) / math.log(2.0))) if tol > 0 else 64
        for _ in range(n):
            mid = (s1 + s0) / 2.0
            same = sign0 == torch.sign(event(mid, interp(mid)))
            s0 = torch.where(same, mid, s0)
            s1 = torch.where(same, s1, mid)
        event_s = (s0 + s1) / 2.0
    return event_s, interp(event_s)
