"""gradient='reversible': algebraically reversible Runge-Kutta solves (McCallum & Foster, 2024).

Any explicit base method (adaptive or fixed-grid) is made reversible by carrying a second state z alongside
y (z_0 = y_0) and coupling them with the parameter lambda (``coupling``, default 0.999):

    y_{n+1} = lambda y_n + (1 - lambda) z_n + Psi_h(t_n, z_n)
    z_{n+1} = z_n - Psi_{-h}(t_{n+1}, y_{n+1})

where Psi_h(t, x) is the base method's increment over one step h from (t, x). The map is inverted exactly
(to rounding) by evaluating the same two base steps in the opposite order, so the backward pass rebuilds
every earlier state from the final pair instead of storing it: memory O(state) plus the accepted (t, h),
time about that of one more forward solve with a graph. The gradients are exact gradients of the discrete
reversible solve (step sizes are constants). The loops are C++ (csrc/solver/reversible.cpp for odeint,
reversible_per_sample.cpp for solve_ivp: each sample with its own steps).

Adaptive methods: the error ratio of a step is the larger of the two base steps' embedded error ratios
(each the RMS of err / (atol + rtol max(|x_start|, |x_end|))), with the usual controller; fixed-grid methods
step on torchdiffeq's grid. Output times are not stepped to: an output inside step n is the cubic Hermite
interpolant through (y_n, f(t_n, y_n)) and (y_{n+1}, f(t_{n+1}, y_{n+1})), whose slopes are evaluations the
step makes anyway (the first stage of its second base step), for either value of options['interp'].
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch.autograd.function import once_differentiable

from . import _C
from ._stats import SolveStats, _record
from ._tape import keep_tape, replay_joint, replay_per_sample
from ._status import Status, status_name

DEFAULT_COUPLING = 0.999


def check_coupling(coupling: Any) -> float:
    """The coupling parameter lambda as a float in (0, 1], or a ValueError/TypeError naming it."""
    if isinstance(coupling, bool) or not isinstance(coupling, (int, float)):
        raise TypeError(f"`reversible_coupling` must be a number in (0, 1], got {type(coupling).__name__}")
    c = float(coupling)
    if not (0.0 < c <= 1.0):
        raise ValueError(f"`reversible_coupling` must lie in (0, 1], got {coupling!r}")
    return c


def check_reversible_problem(p: Any) -> None:
    """What the reversible loop does not support, each a ValueError naming it."""
    if p.fixed is not None and p.fixed.get("adams") is not None:
        raise ValueError(f"gradient='reversible' needs a one-step Runge-Kutta method; {p.method!r} is a multistep "
                         "(Adams) method")
    if p.step_t or p.jump_t:
        raise ValueError("gradient='reversible' does not support options['step_t'] / options['jump_t'] yet")
    if p.user_norm is not None:
        raise ValueError("gradient='reversible' does not support options['norm'] yet (the RMS norm is used)")
    if p.callbacks is not None:
        raise ValueError("gradient='reversible' does not support step callbacks (func.callback_step, ...)")
    if p.progress:
        raise ValueError("gradient='reversible' does not support progress=True yet")
    if p.fixed is not None and p.fixed["perturb"]:
        raise ValueError("gradient='reversible' does not support options['perturb']")


def _grid(p: Any) -> list:
    """Fixed-grid methods: torchdiffeq's grid (outputs between grid points are interpolated)."""
    if p.fixed is None:
        return []
    from ._fixed_grid import _grid_y0, time_grid
    return time_grid(p.fixed, p.func, _grid_y0(p), p.t).tolist()


def _options(p: Any) -> Any:
    o = _C.RkOptions()
    o.method = p.method
    o.rtol, o.atol, o.segment_ends = list(p.rtols), list(p.atols), list(p.segment_ends)
    if p.fixed is None:
        o.control = p.opts["control"]
        o.first_step, o.max_num_steps = p.opts["first_step"], p.opts["max_num_steps"]
    return o


def run_reversible(p: Any, y_flat: torch.Tensor, coupling: float, raise_status) -> Dict[str, Any]:
    """One forward reversible solve (no graph); records the stats and raises the typed error on failure."""
    from ._odeint import gc_paused
    with torch.no_grad(), gc_paused():
        res = _C.reversible_solve(p.field, y_flat.detach(), p.t64, _options(p), coupling=coupling, grid=_grid(p),
                                  user_shape=p.user_shape)
    stats = SolveStats(method=p.method, nfe=int(res["nfe"]), n_accepted=int(res["n_accepted"]),
                       n_rejected=int(res["n_rejected"]), t_final=float(res["t_final"]),
                       status=status_name(res["status"]), field=p.field_path)
    _record(stats)
    if res["status"] != Status.SUCCESS:
        raise_status(res["status"], float(res["t_final"]), stats, p.opts, "odeint")
    return res


class ReversibleSolve(torch.autograd.Function):
    """Forward keeps the final pair and the accepted steps; backward rebuilds and back-propagates (C++)."""

    @staticmethod
    def forward(ctx, y_flat: torch.Tensor, problem: Any, coupling: float, raise_status: Any,
                *params: torch.Tensor) -> torch.Tensor:
        return keep_tape(ctx, run_reversible(problem, y_flat, coupling, raise_status), params, problem=problem)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor):
        grad_y0, grad_params = replay_joint(ctx, grad_ys, lambda *args: _C.reversible_backward(*args)[:3])
        return (grad_y0, None, None, None, *grad_params)


def solve_reversible(p: Any, y_flat: torch.Tensor, params: Tuple[torch.Tensor, ...], coupling: float,
                     needs_grad: bool, output_time_gradients, raise_status) -> torch.Tensor:
    """ys [T, 1, D] of the reversible solve; differentiable w.r.t. y0, params (and t) when needs_grad."""
    check_reversible_problem(p)
    if not needs_grad:
        return run_reversible(p, y_flat, coupling, raise_status)["ys"]
    return output_time_gradients(
        p, y_flat, lambda y: ReversibleSolve.apply(y, p, coupling, raise_status, *params))


# ---- solve_ivp(gradient='reversible'): the per-sample loop (csrc/solver/reversible_per_sample.cpp).

def run_reversible_per_sample(b: Any, y_flat: torch.Tensor, coupling: float) -> Dict[str, Any]:
    """One forward per-sample reversible solve of a solve_ivp batch (no graph)."""
    from ._odeint import gc_paused
    with torch.no_grad(), gc_paused():
        return _C.reversible_solve_per_sample(b.field, y_flat.detach(), b.t_out(), b.options(), coupling=coupling,
                                              user_shape=b.user_shape())


class ReversibleSolvePerSample(torch.autograd.Function):
    """Forward keeps each sample's final pair and the iterations' steps; backward rebuilds and back-propagates.
    Samples that failed contribute no gradient (their cotangents are zeroed), as in solve_ivp's other modes."""

    @staticmethod
    def forward(ctx, y_flat: torch.Tensor, batch: Any, coupling: float, res_box: list,
                *params: torch.Tensor) -> torch.Tensor:
        res = run_reversible_per_sample(batch, y_flat, coupling)
        res_box.append(res)
        return keep_tape(ctx, res, params, batch=batch)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor):
        grad_y0, grad_params = replay_per_sample(ctx, grad_ys, _C.reversible_backward_per_sample,
                                                 ctx.tape.n_iterations)
        return (grad_y0, None, None, None, *grad_params)


def solve_ivp_reversible(b: Any, y_flat: torch.Tensor, params: Tuple[torch.Tensor, ...], coupling: float,
                         needs_grad: bool) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """(ys [T, B, D], the loop's result) of solve_ivp(gradient='reversible')."""
    if b.user_norm is not None:
        raise ValueError("solve_ivp(gradient='reversible') does not support options['norm'] yet")
    if b.progress:
        raise ValueError("solve_ivp(gradient='reversible') does not support progress=True yet")
    if not needs_grad:
        res = run_reversible_per_sample(b, y_flat, coupling)
        return res["ys"], res
    box: list = []
    ys = ReversibleSolvePerSample.apply(y_flat, b, coupling, box, *params)
    return ys, box[0]
