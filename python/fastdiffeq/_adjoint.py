"""Drop-in ``odeint_adjoint``: constant-memory gradients by solving the adjoint system backwards in time.

The forward solve keeps only the outputs (or, with ``adjoint_options=dict(trajectory="interpolated")``, the
dense record of its accepted steps). The backward pass is ONE reverse-time solve in C++
(``_C.rk_adjoint``) of the augmented state [y, a, dL/dtheta] from t[-1] to t[0], stepping onto every output
time, where y is re-anchored to the stored output and a += dL/dy(t_i). Each evaluation is one
vector-Jacobian product of the field (torch autograd driven from C++). Python only builds the autograd
Function.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import _C
from ._fixed_grid import adjoint_fixed, parse_fixed_options, solve_fixed
from ._odeint import (ADJOINT_CALLBACK_NAMES, FIXED_GRID_METHODS, METHODS, check_event_method, _gradient_params, _grid_after, _parse_options, _prepare, _Problem, _raise_status,
                      _run, gc_paused, output_time_gradients, solver_options)
from ._native import field_for
from ._progress import ProgressBar, progress_bar
from ._stats import SolveStats, _record_backward
from ._status import Status, status_name
from ._validate import TensorOrTuple, positive_float

__all__ = ["odeint_adjoint"]

_TRAJECTORIES = ("resolve", "interpolated")


def _adjoint_tolerance(value: Any, name: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (list, tuple)) or isinstance(value, torch.Tensor):
        raise ValueError(f"`{name}` must be a single number for the adjoint solve")
    return positive_float(value, name, allow_zero=True)


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_flat: torch.Tensor, problem: _Problem, adjoint: "_AdjointConfig",
                *params: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if adjoint.trajectory == "interpolated":
                res = _run(problem, y_flat.detach(), "record", who="odeint_adjoint", dense=True)
                ctx.tape = res["tape"]
            else:
                res = _run(problem, y_flat.detach(), "masked", who="odeint_adjoint")
                ctx.tape = None
        ys = res["ys"]
        ctx.problem = problem
        ctx.adjoint = adjoint
        ctx.save_for_backward(ys, *params)
        return ys

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "fastdiffeq.odeint_adjoint does not support double backward (create_graph=True): its gradient is a "
                "numerical solve, not a differentiable graph. Use odeint(..., gradient='direct') for higher-order "
                "derivatives."
            )
        ys, *params = ctx.saved_tensors
        grad_y0, grad_params = ctx.adjoint.solve_backward(ctx.problem, ys, grad_ys, params, ctx.tape)
        return (grad_y0, None, None, *grad_params)


class _FixedAdjointSolve(torch.autograd.Function):
    """A fixed-grid forward solve without a graph; backward: torchdiffeq's adjoint on the fixed grids."""

    @staticmethod
    def forward(ctx, y_flat: torch.Tensor, problem: _Problem, method: str, fixed: Dict[str, Any],
                *params: torch.Tensor) -> torch.Tensor:
        ys = solve_fixed(problem, y_flat.detach(), None, (), output_time_gradients)
        ctx.problem, ctx.method, ctx.fixed = problem, method, fixed
        ctx.save_for_backward(ys, *params)
        return ys

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError("fastdiffeq.odeint_adjoint does not support double backward (create_graph=True)")
        ys, *params = ctx.saved_tensors
        grad_y0, grad_params = adjoint_fixed(ctx.problem, ys, grad_ys, params, ctx.method, ctx.fixed,
                                             ctx.fixed.get("tolerances", (0.0, 0.0)))
        return (grad_y0, None, None, None, *grad_params)


class _AdjointConfig:
    """The backward solve's settings."""

    def __init__(self, rtol: float, atol: float, method: str, options: Dict[str, Any], seminorm: bool,
                 norm: Optional[Callable], trajectory: str, progress: bool = False) -> None:
        self.rtol, self.atol, self.method, self.options = rtol, atol, method, options
        self.seminorm = seminorm
        self.norm = norm
        self.trajectory = trajectory
        self.progress = progress

    def _flat_norm(self, p: _Problem, params: List[torch.Tensor]) -> Optional[Callable]:
        """A user norm sees torchdiffeq's adjoint state (t, *y, *a, *param_grads); C++ gives the flat
        augmented state [(y,) a, theta_bar] (no y in interpolated mode: its parts are passed as zeros)."""
        if self.norm is None:
            return None
        norm, D, with_y = self.norm, p.segment_ends[-1], self.trajectory == "resolve"

        def flat_norm(x: torch.Tensor) -> Any:
            a0 = D if with_y else 0
            # Each part with its tensor's shape, as torchdiffeq passes them (a 0-dim y0 gives 0-dim parts).
            a_parts = [x[a0 + e - n:a0 + e].view(shape) for e, n, shape in zip(p.segment_ends, p.sizes, p.shapes)]
            y_parts = ([x[e - n:e].view(shape) for e, n, shape in zip(p.segment_ends, p.sizes, p.shapes)] if with_y
                       else [torch.zeros_like(a) for a in a_parts])
            offset, param_parts = a0 + D, []
            for q in params:
                param_parts.append(x[offset:offset + q.numel()].view_as(q))
                offset += q.numel()
            return norm((torch.zeros((), dtype=x.dtype, device=x.device), *y_parts, *a_parts, *param_parts))

        return flat_norm

    def _adjoint_callbacks(self, p: _Problem, params: List[torch.Tensor], direction: float) -> Optional[Tuple]:
        """func's callback_*_adjoint for the C++ backward solve, or None: (step, accept, reject), each called
        with t0 (the caller's time), the augmented state as a tuple ((y,) dL/dy, *dL/dtheta; y only when it is
        re-solved, trajectory='resolve') and dt > 0 (torchdiffeq's backward solves see an increasing time)."""
        found = [getattr(p.func, n, None) for n in ADJOINT_CALLBACK_NAMES]
        if not any(callable(cb) for cb in found):
            return None
        D, with_y = p.segment_ends[-1], self.trajectory == "resolve"
        shapes = ([p.user_shape] if with_y else []) + [p.user_shape] + [q.shape for q in params]
        sizes = ([D] if with_y else []) + [D] + [q.numel() for q in params]

        def wrap(cb: Any) -> Optional[Callable]:
            if not callable(cb):
                return None

            def call(t0: torch.Tensor, state: torch.Tensor, h: torch.Tensor) -> None:
                parts = tuple(x.view(shape) for x, shape in zip(state.reshape(-1).split(sizes), shapes))
                cb(t0, parts, h * direction)

            return call

        return tuple(wrap(cb) for cb in found)

    def solve_backward(self, p: _Problem, ys: torch.Tensor, grad_ys: torch.Tensor, params: List[torch.Tensor],
                       tape: Any) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        T = ys.shape[0]
        direction = 1.0 if T < 2 or float(p.t64[1]) > float(p.t64[0]) else -1.0
        # The backward solve also steps onto step_t / jump_t points (torchdiffeq's backward solves do).
        t_end = float(p.t64[-1])
        options = solver_options(self.method, [self.rtol], [self.atol], p.segment_ends, self.options,
                                 _grid_after(self.options["step_t"], t_end, -direction),
                                 _grid_after(self.options["jump_t"], t_end, -direction), p.device)
        with progress_bar(self.progress, p.t64, "odeint_adjoint (backward)", reverse=True) as bar:
            with gc_paused():
                field, path = field_for(p.field, p.func, p.native, params)
                res = _C.rk_adjoint(field, list(params), p.t64.to(p.device), ys if tape is None else None, tape,
                                    grad_ys.to(ys.dtype).contiguous(), options, seminorm=self.seminorm,
                                    trajectory=self.trajectory, norm=self._flat_norm(p, params),
                                    user_shape=p.user_shape, joint=True, progress=bar,
                                    progress_interval=ProgressBar.interval,
                                    callbacks=self._adjoint_callbacks(p, params, -direction))
            status = int(res["status"])
            stats = SolveStats(method=self.method, nfe=int(res["nfe"]), n_accepted=int(res["n_accepted"]),
                               n_rejected=int(res["n_rejected"]), t_final=float(res["t"]),
                               status=status_name(status), field=path)
            _record_backward(stats)
            if status != Status.SUCCESS:
                _raise_status(status, float(res["t"]), stats, self.options, "odeint_adjoint (backward)")
        return res["grad_y0"], res["grad_params"]


# Opaque to torch.compile, as odeint (one graph break; the solver runs eagerly).
@torch.compiler.disable
def odeint_adjoint(
    func: Callable,
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: Any = 1e-7,
    atol: Any = 1e-9,
    method: Optional[str] = None,
    options: Optional[Dict[str, Any]] = None,
    event_fn: Optional[Callable] = None,
    adjoint_rtol: Optional[float] = None,
    adjoint_atol: Optional[float] = None,
    adjoint_method: Optional[str] = None,
    adjoint_options: Optional[Dict[str, Any]] = None,
    adjoint_params: Optional[Sequence[torch.Tensor]] = None,
    progress: bool = False,
) -> TensorOrTuple:
    """``odeint`` with gradients by the adjoint method (torchdiffeq's ``odeint_adjoint`` semantics).

    Memory does not grow with the number of steps: the forward pass keeps only the outputs and the
    backward pass solves the adjoint system backwards in time. Its gradients are those of the continuous
    problem, accurate to the adjoint tolerances (not the exact gradients of the discrete forward solve;
    use ``odeint(..., gradient='checkpoint')`` for those).

    Args:
        func, y0, t, rtol, atol, method, options: as in :func:`fastdiffeq.odeint`.
        event_fn: as in :func:`fastdiffeq.odeint` (returns ``(event_t, solution)``); the adjoint solve runs
            from the event time back to t0 with the event time held fixed (torchdiffeq's semantics).
        adjoint_rtol, adjoint_atol: tolerances of the backward solve (default: rtol, atol; numbers).
        adjoint_method: method of the backward solve (default: method).
        adjoint_options: options of the backward solve (default: ``options`` without 'norm'), plus:
            ``norm='seminorm'`` leaves the parameter-gradient channels out of the error control (Kidger,
            Chen & Lyons 2021), often saving backward steps. A callable norm receives the tuple
            (t_vjp, *y, *a, *param_grads) with t_vjp a zero scalar (time gradients are computed separately).
            ``trajectory='resolve'`` (default) integrates y backwards together with the adjoint, re-anchored
            to the stored output at every output time (torchdiffeq's algorithm): memory stays flat, but
            re-solving y backwards is unstable when the forward dynamics are dissipative or stiff
            (eigenvalues with large negative real part grow backwards) and y's error then dominates the
            step count. ``trajectory='interpolated'`` records the forward solve's accepted steps (state,
            derivative and midpoint slope: 3 x the state per step) and reads y(t) from their dense output,
            so y leaves the backward solve and its error control: use it for dissipative / stiff-ish
            fields or when the backward pass takes many more steps than the forward; memory grows with the
            number of forward steps. (A callable norm then sees zeros for the y parts.)
        adjoint_params: the tensors to differentiate inside ``func`` (default ``func.parameters()``; required
            when ``func`` is not an nn.Module, ``()`` if there are none). Unused ones get zero gradients.
        progress: tqdm bars of integration time for the forward solve and, during ``backward()``, the
            reverse-time adjoint solve (needs tqdm). Off (default), it costs nothing.

    Returns:
        As :func:`fastdiffeq.odeint`. Gradients flow to ``y0``, ``t`` and ``adjoint_params``; the backward
        pass's counters are in :func:`fastdiffeq.last_backward_stats`.

    Raises:
        As :func:`fastdiffeq.odeint`; a RuntimeError on double backward (not supported).

    Example:
        >>> field = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
        >>> ys = fastdiffeq.odeint_adjoint(lambda t, y: field(y), torch.randn(8, 2), torch.linspace(0, 1, 5),
        ...                                adjoint_params=tuple(field.parameters()),
        ...                                adjoint_options=dict(norm="seminorm"))
        >>> ys.square().mean().backward()
    """
    if adjoint_params is None and not isinstance(func, torch.nn.Module):
        raise ValueError(
            "fastdiffeq.odeint_adjoint: func must be an nn.Module so its parameters can be found, or pass them as "
            "`adjoint_params` (`adjoint_params=()` if it has none)"
        )
    adjoint_callbacks = [n for n in ADJOINT_CALLBACK_NAMES if callable(getattr(func, n, None))]
    backward_method = adjoint_method if adjoint_method is not None else (method or "dopri5")
    unused = sorted(set(adjoint_callbacks) - {"callback_step_adjoint"})
    if unused and backward_method in FIXED_GRID_METHODS:
        # torchdiffeq's warning, word for word (its backward odeint sees them without the suffix)
        warnings.warn("Solver '{}' does not support callbacks {}".format(
            backward_method, {n[:-len("_adjoint")] for n in unused}))
    if event_fn is not None:
        check_event_method(method, func, "odeint_adjoint")
        from ._events import odeint_until_event
        return odeint_until_event(
            func, y0, t, rtol=rtol, atol=atol, method=method, options=options, event_fn=event_fn, progress=progress,
            solve_to=lambda t_pair: odeint_adjoint(
                func, y0, t_pair, rtol=rtol, atol=atol, method=method, options=options, adjoint_rtol=adjoint_rtol,
                adjoint_atol=adjoint_atol, adjoint_method=adjoint_method, adjoint_options=adjoint_options,
                adjoint_params=adjoint_params, progress=progress),
            who="odeint_adjoint")
    p = _prepare(func, y0, t, rtol, atol, method, options, event_fn, progress)
    adj_method = p.method if adjoint_method is None else adjoint_method
    if adj_method != p.method and options is not None and adjoint_options is None:
        raise ValueError("`adjoint_options` must be given when `adjoint_method` differs from `method` and `options` "
                         "is given (they cannot be inferred)")
    if adjoint_options is None:
        adjoint_options = {k: v for k, v in (options or {}).items() if k != "norm"}
    elif not isinstance(adjoint_options, dict):
        raise TypeError(f"`adjoint_options` must be a dict or None, got {type(adjoint_options).__name__}")
    if adj_method not in METHODS:
        raise ValueError(f"`adjoint_method` must be one of {list(METHODS)}, got {adj_method!r}")
    if p.scipy is not None or adj_method == "scipy_solver":
        raise ValueError("fastdiffeq.odeint_adjoint: method 'scipy_solver' is not supported (it gives no gradients)")
    if p.fixed is not None or adj_method in FIXED_GRID_METHODS:
        if p.fixed is None or adj_method not in FIXED_GRID_METHODS:
            raise ValueError(
                f"fastdiffeq.odeint_adjoint: method={p.method!r} with adjoint_method={adj_method!r} is not supported: "
                "the forward and adjoint methods must both be fixed-grid or both adaptive")
        fixed = parse_fixed_options(adjoint_options, adj_method)
        if fixed["adams"] is not None:  # its corrector's convergence test, as torchdiffeq: adjoint_rtol / atol
            fixed["tolerances"] = (
                _adjoint_tolerance(rtol if adjoint_rtol is None else adjoint_rtol, "adjoint_rtol"),
                _adjoint_tolerance(atol if adjoint_atol is None else adjoint_atol, "adjoint_atol"))
        params = _gradient_params(func, adjoint_params, "fastdiffeq.odeint_adjoint", "adjoint_params")
        y_flat = p.flat_y0()
        if not (torch.is_grad_enabled() and (p.t.requires_grad or any(q.requires_grad for q in p.parts) or params)):
            return p.unflatten(solve_fixed(p, y_flat, None, (), output_time_gradients))
        return p.unflatten(output_time_gradients(
            p, y_flat, lambda y: _FixedAdjointSolve.apply(y, p, adj_method, fixed, *params)))
    adjoint_options = dict(adjoint_options)
    norm = adjoint_options.pop("norm", None)
    trajectory = adjoint_options.pop("trajectory", "resolve")
    if trajectory not in _TRAJECTORIES:
        raise ValueError(f"adjoint_options['trajectory'] must be one of {list(_TRAJECTORIES)}, got {trajectory!r}")
    seminorm = norm == "seminorm"
    if isinstance(norm, str) and not seminorm:
        raise ValueError(f"adjoint_options['norm'] must be 'seminorm' or a callable, got {norm!r}")
    if norm is not None and not seminorm and not callable(norm):
        raise TypeError(f"adjoint_options['norm'] must be 'seminorm' or a callable, got {type(norm).__name__}")
    adj_opts = _parse_options(adjoint_options, 1)
    config = _AdjointConfig(
        _adjoint_tolerance(rtol if adjoint_rtol is None else adjoint_rtol, "adjoint_rtol"),
        _adjoint_tolerance(atol if adjoint_atol is None else adjoint_atol, "adjoint_atol"),
        adj_method, adj_opts, seminorm, None if seminorm else norm, trajectory, progress,
    )
    params = _gradient_params(func, adjoint_params, "fastdiffeq.odeint_adjoint", "adjoint_params")
    y_flat = p.flat_y0()
    needs = torch.is_grad_enabled() and (p.t.requires_grad or any(q.requires_grad for q in p.parts) or bool(params))
    if not needs:
        with torch.no_grad():
            return p.unflatten(_run(p, y_flat.detach(), "masked", who="odeint_adjoint")["ys"])
    ys = output_time_gradients(p, y_flat, lambda y: _AdjointSolve.apply(y, p, config, *params))
    return p.unflatten(ys)
