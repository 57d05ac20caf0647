"""The fixed-grid methods (euler, midpoint, heun2, heun3, rk4): torchdiffeq's options and time grid, the C++
loop (``_C.fixed_grid_solve``) and its three gradient modes.

torchdiffeq 0.2.5 semantics: one step per interval of the grid (``options['step_size']``, a
``grid_constructor(func, y0, t)`` or, by default, ``t`` itself), ``f(t0, y0)`` evaluated at every step
(no FSAL), outputs interpolated inside the step that reaches them, linearly or (``interp='cubic'``) by the
cubic Hermite polynomial through (y0, f0) and (y1, f(t1, y1)), which costs one evaluation per output time.
A decreasing ``t`` is solved as torchdiffeq does (the grid is built on ``-t``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from . import _C
from ._adams import ADAMS_METHODS, ADAMS_OPTIONS, adams_integrate, parse_adams_options
from ._stats import SolveStats, _record, _record_backward
from ._status import Status, status_name
from ._tape import keep_tape, replay_joint
from ._validate import positive_float

__all__ = ["FIXED_OPTIONS", "parse_fixed_options", "solve_fixed", "adjoint_fixed"]

FIXED_OPTIONS = frozenset({"step_size", "grid_constructor", "interp", "perturb"})
_INTERPS = ("linear", "cubic")


def parse_fixed_options(options: Optional[Dict[str, Any]], method: str) -> Dict[str, Any]:
    """Validated fixed-grid options (ValueError / TypeError naming the option)."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"`options` must be a dict or None, got {type(options).__name__}")
    known = FIXED_OPTIONS | ADAMS_OPTIONS if method in ADAMS_METHODS else FIXED_OPTIONS
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"`options` has unknown key(s) {unknown} for the fixed-grid method {method!r}; known keys: "
                         f"{sorted(known)}")
    step_size = options.get("step_size")
    grid_constructor = options.get("grid_constructor")
    if step_size is not None and grid_constructor is not None:
        raise ValueError("options['step_size'] and options['grid_constructor'] are mutually exclusive")
    if step_size is not None:
        step_size = positive_float(step_size, "step_size")
    if grid_constructor is not None and not callable(grid_constructor):
        raise TypeError(f"options['grid_constructor'] must be callable, got {type(grid_constructor).__name__}")
    interp = options.get("interp", "linear")
    if interp not in _INTERPS:
        raise ValueError(f"options['interp'] must be one of {list(_INTERPS)}, got {interp!r}")
    perturb = options.get("perturb", False)
    if not isinstance(perturb, bool):
        raise TypeError(f"options['perturb'] must be a bool, got {type(perturb).__name__}")
    adams = parse_adams_options(options, method) if method in ADAMS_METHODS else None
    return dict(step_size=step_size, grid_constructor=grid_constructor, interp=interp, perturb=perturb, adams=adams)


def time_grid(fixed: Dict[str, Any], func: Callable, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The grid of step boundaries, float64 on the CPU, in t's direction (built as torchdiffeq builds it)."""
    t = t.detach()
    if fixed["grid_constructor"] is not None:
        # torchdiffeq wraps a user's constructor so that it sees the caller's t (a decreasing one included) and
        # returns times in it.
        grid = fixed["grid_constructor"](func, y0, t)
        if not isinstance(grid, torch.Tensor) or grid.dim() != 1 or not grid.is_floating_point():
            raise TypeError("options['grid_constructor'] must return a 1-D floating-point tensor of times")
        return grid.detach().to(device="cpu", dtype=torch.float64)
    reverse = t.numel() >= 2 and bool(t[1] < t[0])
    tt = -t if reverse else t  # torchdiffeq solves a decreasing t as an increasing -t
    if fixed["step_size"] is not None:
        step = fixed["step_size"]
        n = int(torch.ceil((tt[-1] - tt[0]) / step + 1).item())
        grid = torch.arange(0, n, dtype=tt.dtype, device=tt.device) * step + tt[0]
        grid[-1] = tt[-1]
    else:
        grid = tt
    grid = grid.to(device="cpu", dtype=torch.float64)
    return -grid if reverse else grid


def _run_adams(field: Callable, y_flat: torch.Tensor, grid: torch.Tensor, t64: torch.Tensor, fixed: Dict[str, Any],
               rtol: float, atol: float, callback_step: Optional[Callable] = None) -> Dict[str, Any]:
    """An Adams solve of y_flat [1, D] (fastdiffeq._adams), in torchdiffeq's time: a decreasing t is solved in
    s = −t with −field(−s, y), so the multistep history and perturbed times are torchdiffeq's."""
    reverse = t64.numel() >= 2 and bool(t64[1] < t64[0])
    f, g, t_out, cb = field, grid, t64, callback_step
    if reverse:
        f = lambda s, y: -field(-s, y)  # noqa: E731
        g, t_out = -grid, -t64
        cb = None if callback_step is None else (lambda s0, y, ds: callback_step(-s0, y, -ds))
    ys, nfe, n_steps = adams_integrate(f, y_flat, g, t_out, adams=fixed["adams"], interp=fixed["interp"],
                                       perturb=fixed["perturb"], rtol=rtol, atol=atol, callback_step=cb)
    return {"ys": ys, "nfe": nfe, "n_steps": n_steps}


def _single_tolerances(p: Any) -> Tuple[float, float]:
    if len(set(p.rtols)) > 1 or len(set(p.atols)) > 1:
        raise ValueError(f"method {p.method!r} takes one rtol and one atol (its corrector's convergence test), not "
                         "one per tuple element")
    return p.rtols[0], p.atols[0]


def _run(p: Any, y_flat: torch.Tensor, mode: str, grid: torch.Tensor, *, record: bool = True) -> Dict[str, Any]:
    if p.fixed["adams"] is not None:
        step_cb = None
        if p.callbacks and p.callbacks[0] is not None:  # the state as the C++ loops pass it: in the user's shape
            step_cb = lambda t0, y, h: p.callbacks[0](t0, y.reshape(p.user_shape), h)  # noqa: E731
        # The loop runs on the state in the user's shape (a tuple state: flat), so its arithmetic is torchdiffeq's
        # to the bit: for a 0-dim state torchdiffeq's float64 coefficients promote the weighted sums to float64.
        res = _run_adams(lambda t, y: p.flat_field(t, y.reshape(-1)).reshape(y.shape), y_flat.reshape(p.user_shape),
                         grid, p.t64, p.fixed, *_single_tolerances(p), callback_step=step_cb)
        res["ys"] = res["ys"].reshape(res["ys"].shape[0], 1, -1)
        if record:
            _record(SolveStats(method=p.method, nfe=res["nfe"], n_accepted=res["n_steps"], n_rejected=0,
                               t_final=float(p.t64[-1]), status=status_name(Status.SUCCESS), field=p.field_path))
        return res
    res = _C.fixed_grid_solve(p.field, y_flat, grid, p.t64, method=p.method, interp=p.fixed["interp"],
                              perturb=p.fixed["perturb"], user_shape=p.user_shape, mode=mode,
                              callbacks=p.callbacks)
    if record:
        _record(SolveStats(method=p.method, nfe=int(res["nfe"]), n_accepted=int(res["n_steps"]), n_rejected=0,
                           t_final=float(p.t64[-1]), status=status_name(Status.SUCCESS), field=p.field_path))
    return res


class _FixedCheckpointSolve(torch.autograd.Function):
    """Forward without a graph, recording the state at every grid point; backward replays each step (C++)."""

    @staticmethod
    def forward(ctx, y_flat: torch.Tensor, problem: Any, grid: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            res = _run(problem, y_flat.detach(), "record", grid)
        return keep_tape(ctx, res, params, problem=problem)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor):
        grad_y0, grad_params = replay_joint(ctx, grad_ys, _C.fixed_grid_backward)
        return (grad_y0, None, None, *grad_params)


def _grid_y0(p: Any) -> torch.Tensor:
    """The y0 torchdiffeq hands a grid constructor (a tuple state flattened to one vector)."""
    return p.parts[0] if not p.is_tuple else p.flat_y0().reshape(-1)


def solve_fixed(p: Any, y_flat: torch.Tensor, gradient: Optional[str], params: Tuple[torch.Tensor, ...],
                output_time_gradients: Callable) -> torch.Tensor:
    """ys [T, 1, D] of a fixed-grid solve; gradient None (no graph), 'direct' or 'checkpoint'."""
    grid = time_grid(p.fixed, p.func, _grid_y0(p), p.t)
    if gradient is None:
        with torch.no_grad():
            return _run(p, y_flat.detach(), "graph", grid)["ys"]
    if gradient == "direct":
        return output_time_gradients(p, y_flat, lambda y: _run(p, y, "graph", grid)["ys"])
    if p.fixed["adams"] is not None:
        raise ValueError(f"gradient='checkpoint' is not supported with the Adams method {p.method!r} (its history "
                         "of derivatives spans steps); use gradient='direct' or odeint_adjoint")
    return output_time_gradients(p, y_flat, lambda y: _FixedCheckpointSolve.apply(y, p, grid, *params))


def adjoint_fixed(p: Any, ys: torch.Tensor, grad_ys: torch.Tensor, params: List[torch.Tensor], method: str,
                  fixed: Dict[str, Any], tolerances: Tuple[float, float]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """torchdiffeq's adjoint with a fixed-grid adjoint method: for each output interval, from t_i back to
    t_{i-1}, the augmented state [y, a, dL/dtheta] is integrated on the interval's own grid (built from the
    adjoint options as torchdiffeq builds it); then y is reset to the stored output and a += dL/dy(t_{i-1}).
    Each evaluation is one vector-Jacobian product of the field (torch autograd)."""
    T, D = ys.shape[0], ys.shape[-1]
    sizes = [q.numel() for q in params]
    P = sum(sizes)
    dtype = ys.dtype

    def aug_field(tt: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        y, a = s[:D], s[D:2 * D]
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            f = p.flat_field(tt, y)
            grads = torch.autograd.grad(f, (y, *params), -a, allow_unused=True)
        vjp_y = grads[0] if grads[0] is not None else torch.zeros_like(y)
        vjp_p = [g.reshape(-1).to(dtype) if g is not None else torch.zeros(n, dtype=dtype, device=s.device)
                 for g, n in zip(grads[1:], sizes)]
        return torch.cat([f.detach(), vjp_y, *vjp_p])

    aug_shape = [2 * D + P]
    # func.callback_step_adjoint(t0, (y, dL/dy, *dL/dtheta), dt) before each backward step, as torchdiffeq's
    # backward odeint calls it (t0 in the caller's time, dt > 0; torchdiffeq's tuple also leads with its
    # time-gradient channel, which this adjoint does not integrate).
    step_adjoint = getattr(p.func, "callback_step_adjoint", None)
    callbacks = None
    if callable(step_adjoint):
        def split(s: torch.Tensor) -> Tuple[torch.Tensor, ...]:
            s = s.reshape(-1)
            parts = [s[:D].view(p.user_shape), s[D:2 * D].view(p.user_shape)]
            offset = 2 * D
            for q, n in zip(params, sizes):
                parts.append(s[offset:offset + n].view_as(q))
                offset += n
            return tuple(parts)

        def on_step(t0: torch.Tensor, s: torch.Tensor, h: torch.Tensor) -> None:
            step_adjoint(t0, split(s), -h)  # the backward solve runs towards t[0]: its steps are negative

        callbacks = (on_step, None, None)
    a = grad_ys[-1].reshape(-1).to(dtype)
    theta = torch.zeros(P, dtype=dtype, device=ys.device)
    nfe = n_steps = 0
    with torch.no_grad():
        for i in range(T - 1, 0, -1):
            s0 = torch.cat([ys[i].reshape(-1), a, theta]).reshape(1, -1)
            t_pair = p.t64[i - 1:i + 1].flip(0).contiguous()
            grid = time_grid(fixed, aug_field, s0.reshape(-1), t_pair)
            if fixed["adams"] is not None:  # Adams on the augmented state, with the adjoint's tolerances
                res = _run_adams(lambda tt, s: aug_field(tt, s.reshape(-1)).reshape(1, -1), s0, grid, t_pair, fixed,
                                 *tolerances, callback_step=None if callbacks is None else callbacks[0])
            else:
                res = _C.fixed_grid_solve(aug_field, s0, grid, t_pair, method=method, interp=fixed["interp"],
                                          perturb=fixed["perturb"], user_shape=aug_shape, mode="graph",
                                          callbacks=callbacks)
            nfe += int(res["nfe"])
            n_steps += int(res["n_steps"])
            s1 = res["ys"][-1].reshape(-1)
            a = s1[D:2 * D] + grad_ys[i - 1].reshape(-1).to(dtype)
            theta = s1[2 * D:]
    _record_backward(SolveStats(method=method, nfe=nfe, n_accepted=n_steps, n_rejected=0, t_final=float(p.t64[0]),
                                status=status_name(Status.SUCCESS)))
    grad_params, offset = [], 0
    for q, n in zip(params, sizes):
        grad_params.append(theta[offset:offset + n].view_as(q).to(q.dtype))
        offset += n
    return a.reshape(1, -1), grad_params
