"""Adams methods on a fixed grid: explicit_adams, implicit_adams and fixed_adams, as torchdiffeq 0.2.5 runs them.

A multistep method keeps the derivatives of earlier steps, so it is not a tableau: this is a Python loop over
the grid (the per-step work is a weighted sum of the history and one or a few field calls). torchdiffeq's
algorithm, step by step:
  f0 = f(t0, y0) joins the history (newest first, at most max_order − 1 entries); while the history holds fewer
  than 3 derivatives the step is the 3/8-rule rk4 (reusing f0); then the Adams–Bashforth predictor of order
  min(len(history), max_order − 1) and, for the implicit methods, up to max_iters Adams–Moulton corrections
  (each one evaluation at t1), stopped when max |Δ| / (atol + rtol max(|dy_old|, |dy|)) < 1 with the solve's
  rtol / atol. A corrector that does not converge warns and drops the oldest derivative, as torchdiffeq does.
  fixed_adams is torchdiffeq's alias of implicit_adams.
The coefficients are computed here, exactly (fractions), from their definition: ∫₀¹ of the Lagrange basis on
the nodes 0, −1, …, −(k−1) (Bashforth, k steps) or 1, 0, …, −(k−1) (Moulton, k + 1 nodes).
"""

from __future__ import annotations

import warnings
from collections import deque
from fractions import Fraction
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

ADAMS_METHODS: Tuple[str, ...] = ("explicit_adams", "implicit_adams", "fixed_adams")
ADAMS_OPTIONS = frozenset({"max_order", "max_iters"})
MIN_ORDER, MAX_ORDER, MAX_ITERS = 4, 12, 4


def _integrated_lagrange(nodes: List[int]) -> List[Fraction]:
    """∫₀¹ L_j(u) du for each Lagrange basis polynomial on the nodes."""
    weights = []
    for j, xj in enumerate(nodes):
        poly = [Fraction(1)]  # coefficients, lowest degree first
        for i, xi in enumerate(nodes):
            if i == j:
                continue
            scale = Fraction(1, xj - xi)
            shifted = [Fraction(0)] + poly  # u · poly
            poly = [(shifted[k] - xi * (poly[k] if k < len(poly) else 0)) * scale for k in range(len(shifted))]
        weights.append(sum(c / (k + 1) for k, c in enumerate(poly)))
    return weights


def _coefficients() -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    bashforth = [torch.zeros(0, dtype=torch.float64)]
    moulton = [torch.zeros(0, dtype=torch.float64)]
    for k in range(1, MAX_ORDER + 1):
        bashforth.append(torch.tensor([float(w) for w in _integrated_lagrange([-i for i in range(k)])],
                                      dtype=torch.float64))
        moulton.append(torch.tensor([float(w) for w in _integrated_lagrange([1] + [-i for i in range(k - 1)])],
                                    dtype=torch.float64))
    return bashforth, moulton


BASHFORTH, MOULTON = _coefficients()  # [k]: k coefficients, newest derivative first


def parse_adams_options(options: Dict[str, Any], method: str) -> Dict[str, Any]:
    """max_order (1..12, default 12) and max_iters (≥ 1, default 4), with errors naming the option."""
    max_order = options.get("max_order", MAX_ORDER)
    max_iters = options.get("max_iters", MAX_ITERS)
    for name, value in (("max_order", max_order), ("max_iters", max_iters)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"options[{name!r}] must be an int, got {type(value).__name__}")
    if not 1 <= max_order <= MAX_ORDER:
        raise ValueError(f"options['max_order'] must be in [1, {MAX_ORDER}] for {method!r}, got {max_order}")
    if max_iters < 1:
        raise ValueError(f"options['max_iters'] must be >= 1, got {max_iters}")
    if max_order < MIN_ORDER:
        warnings.warn(f"max_order is below {MIN_ORDER}, so the solver reduces to `rk4`.")
    return dict(max_order=max_order, max_iters=max_iters, implicit=method != "explicit_adams")


_NONE, _NEXT, _PREV = 0, 1, -1  # torchdiffeq's Perturb: evaluate at t, one ulp after, one ulp before


def _rk4_38(f: Callable, t0: torch.Tensor, dt: torch.Tensor, t1: torch.Tensor, y0: torch.Tensor,
            k1: torch.Tensor, perturb: bool) -> torch.Tensor:
    """One 3/8-rule step's increment with k1 given (torchdiffeq's rk4_alt_step_func)."""
    third, two_thirds = 1 / 3, 2 / 3
    k2 = f(t0 + dt * third, y0 + dt * k1 * third)
    k3 = f(t0 + dt * two_thirds, y0 + dt * (k2 - k1 * third))
    k4 = f(t1, y0 + dt * (k1 - k2 + k3), _PREV if perturb else _NONE)
    return (k1 + 3 * (k2 + k3) + k4) * dt * 0.125


def _weighted(coefficients: torch.Tensor, history: deque) -> torch.Tensor:
    return sum(c * f for c, f in zip(coefficients, history))


class CountingField:
    """field(t, y) with t cast to the state's dtype (moved one ulp of that dtype when perturbed, as torchdiffeq's
    Perturb does) and the calls counted."""

    def __init__(self, field: Callable, dtype: torch.dtype) -> None:
        self.field, self.dtype, self.calls = field, dtype, 0

    def __call__(self, t: torch.Tensor, y: torch.Tensor, shift: int = _NONE) -> torch.Tensor:
        self.calls += 1
        t = t.to(self.dtype)
        if shift:
            t = torch.nextafter(t, t + shift)
        return self.field(t, y)


class AdamsStepper:
    """One Adams step at a time (the history lives here): step(t0, t1, y) -> (dy, f0), torchdiffeq's _step_func."""

    def __init__(self, f: CountingField, adams: Dict[str, Any], perturb: bool, rtol: float, atol: float,
                 like: torch.Tensor) -> None:
        self.f, self.adams, self.perturb = f, adams, perturb
        self.history: deque = deque(maxlen=max(adams["max_order"] - 1, 1))
        self.history_t: Optional[float] = None
        self.rtol = torch.as_tensor(rtol, dtype=like.dtype, device=like.device)
        self.atol = torch.as_tensor(atol, dtype=like.dtype, device=like.device)

    def step(self, t0: torch.Tensor, t1: torch.Tensor, y: torch.Tensor,
             dt: Any = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """dt: the step as torchdiffeq passes it (default t1 - t0; the event loop passes step_size itself)."""
        f, adams, history, dtype = self.f, self.adams, self.history, y.dtype
        dt = t1 - t0 if dt is None else dt
        f0 = f(t0, y, _NEXT if self.perturb else _NONE)
        if self.history_t is None or self.history_t != float(t0):
            history.appendleft(f0)
            self.history_t = float(t0)
        order = min(len(history), adams["max_order"] - 1)
        if order < MIN_ORDER - 1:
            return _rk4_38(f, t0, dt, t1, y, history[0], self.perturb), f0
        dy = _weighted(dt * BASHFORTH[order], history).to(dtype)
        if adams["implicit"]:
            moulton = MOULTON[order + 1]
            delta = dt * _weighted(moulton[1:], history).to(dtype)  # torchdiffeq's order: cast, then dt
            converged = False
            for _ in range(adams["max_iters"]):
                dy_old = dy
                f1 = f(t1, y + dy, _PREV if self.perturb else _NONE)
                dy = (dt * moulton[0] * f1).to(dtype) + delta
                tol = self.atol + self.rtol * torch.max(dy_old.abs(), dy.abs())
                converged = bool(((dy_old - dy).abs() / tol).abs().max() < 1)
                if converged:
                    break
            if not converged:
                warnings.warn("Functional iteration did not converge. Solution may be incorrect.")
                history.pop()
        return dy, f0


def adams_integrate(field: Callable, y0: torch.Tensor, grid: torch.Tensor, t_out: torch.Tensor, *,
                    adams: Dict[str, Any], interp: str, perturb: bool, rtol: float, atol: float,
                    callback_step: Optional[Callable] = None) -> Tuple[torch.Tensor, int, int]:
    """Integrate y' = field(t, y) over an increasing grid (float64 times) with an Adams method.

    field(t, y) takes a 0-dim time tensor in the state's dtype. Returns (ys [len(t_out), *y0.shape], the number
    of field evaluations, the number of steps). Differentiable (a plain torch loop).
    """
    f = CountingField(field, y0.dtype)
    stepper = AdamsStepper(f, adams, perturb, rtol, atol, y0)
    outputs = [y0]
    j, n_out, y = 1, t_out.numel(), y0
    for i in range(grid.numel() - 1):
        t0, t1 = grid[i], grid[i + 1]
        if callback_step is not None:
            callback_step(t0, y, t1 - t0)
        dy, f0 = stepper.step(t0, t1, y)
        y1 = y + dy
        while j < n_out and bool(t1 >= t_out[j]):
            outputs.append(interpolate(interp, f, t0, y, f0, t1, y1, t_out[j]))
            j += 1
        y = y1
    return torch.stack(outputs), f.calls, grid.numel() - 1


def interpolate(interp: str, f: Callable, t0, y0, f0, t1, y1, t) -> torch.Tensor:
    """torchdiffeq's fixed-grid output: linear, or cubic Hermite with f(t1, y1) evaluated here."""
    if interp == "linear":
        return _linear(t0, t1, y0, y1, t)
    return _cubic(t0, y0, f0, t1, y1, f(t1, y1), t)


def _linear(t0, t1, y0, y1, t):
    if t == t0:
        return y0
    if t == t1:
        return y1
    return y0 + ((t - t0) / (t1 - t0)).to(y0.dtype) * (y1 - y0)


def _cubic(t0, y0, f0, t1, y1, f1, t):
    h = ((t - t0) / (t1 - t0)).to(y0.dtype)
    dt = (t1 - t0).to(y0.dtype)
    h00 = (1 + 2 * h) * (1 - h) * (1 - h)
    h10 = h * (1 - h) * (1 - h)
    h01 = h * h * (3 - 2 * h)
    h11 = h * h * (h - 1)
    return h00 * y0 + h10 * dt * f0 + h01 * y1 + h11 * dt * f1
