"""Drop-in ``odeint_adjoint``: constant-memory gradients by solving the adjoint system backwards in time.

The forward solve keeps only the outputs. The backward pass integrates the augmented state
[y, a, dL/dtheta] from t[i] to t[i-1] for each output interval with the same C++ loop and fused ops, re-anchors
y to the stored output and adds dL/dy(t[i-1]) to a, as torchdiffeq does. The vector-Jacobian products come
from torch autograd, one per evaluation of the augmented field.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ._odeint import (METHODS, _gradient_params, _grid_after, _parse_options, _prepare, _Problem, _run,
                      output_time_gradients)
from ._stats import SolveStats, _record_backward
from ._status import Counter, Status, status_name
from ._validate import TensorOrTuple, positive_float

__all__ = ["odeint_adjoint"]


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
            ys = _run(problem, y_flat.detach(), "masked", who="odeint_adjoint")["ys"]
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
        grad_y0, grad_params = ctx.adjoint.solve_backward(ctx.problem, ys, grad_ys, params)
        return (grad_y0, None, None, *grad_params)


class _AdjointConfig:
    """The adjoint solve's settings and the augmented dynamics."""

    def __init__(self, problem: _Problem, rtol: float, atol: float, method: str, options: Dict[str, Any],
                 seminorm: bool, norm: Optional[Callable]) -> None:
        self.rtol, self.atol, self.method, self.options = rtol, atol, method, options
        self.seminorm = seminorm
        self.norm = norm

    def solve_backward(self, p: _Problem, ys: torch.Tensor, grad_ys: torch.Tensor,
                       params: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        D = ys.shape[-1]
        n_params = [q.numel() for q in params]
        P = sum(n_params)
        # Segments of the augmented state: y's and a's per tuple element, then one per parameter tensor
        # (torchdiffeq's default adjoint norm is the max over these per-tensor RMS norms). The seminorm
        # leaves the parameter channels out of the error control (infinite atol makes their terms 0).
        state_ends = p.segment_ends
        ends = list(state_ends) + [D + e for e in state_ends]
        param_ends = list(itertools.accumulate(n_params))
        ends += [2 * D + e for e in param_ends]
        n_state_segments = 2 * len(state_ends)
        rtols = [self.rtol] * len(ends)
        atols = [self.atol] * n_state_segments + [math.inf if self.seminorm else self.atol] * len(params)
        field_flat = p.flat_field

        def augmented(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            y, a = s[:D], s[D:2 * D]
            with torch.enable_grad():
                y_ = y.detach().requires_grad_(True)
                f = field_flat(t, y_)
                grads = torch.autograd.grad(f, (y_, *params), -a, allow_unused=True) if f.requires_grad else \
                    (None,) * (1 + len(params))
            parts = [f.detach(), torch.zeros_like(y) if grads[0] is None else grads[0]]
            parts += [torch.zeros(n, dtype=s.dtype, device=s.device) if g is None else g.reshape(-1).to(s.dtype)
                      for g, n in zip(grads[1:], n_params)]
            return torch.cat(parts)

        user_norm = None
        if self.norm is not None:
            def user_norm(x: torch.Tensor) -> Any:
                y_parts = [x[e - n:e] for e, n in zip(state_ends, p.sizes)]
                a_parts = [x[D + e - n:D + e] for e, n in zip(state_ends, p.sizes)]
                param_parts = [x[e - n:e].view_as(q) for e, n, q in zip(ends[n_state_segments:], n_params, params)]
                return self.norm((torch.zeros((), dtype=x.dtype), *y_parts, *a_parts, *param_parts))

        aug = _Problem(
            func=augmented, method=self.method, is_tuple=False, shapes=[torch.Size([2 * D + P])],
            sizes=[2 * D + P], segment_ends=ends, rtols=rtols, atols=atols, opts=self.options, parts=(),
            t=p.t, t64=p.t64, field=augmented, user_shape=[2 * D + P], user_norm=user_norm, step_t=[], jump_t=[],
            device=p.device, dtype=p.dtype,
        )
        T = ys.shape[0]
        direction = 1.0 if T < 2 or float(p.t64[1]) > float(p.t64[0]) else -1.0
        a = grad_ys[-1].reshape(-1).clone()
        g = torch.zeros(P, dtype=ys.dtype, device=ys.device)
        nfe = n_acc = n_rej = 0
        # Each output interval is its own solve (the adjoint jumps by dL/dy(t_i) there). The step size is
        # carried from one interval to the next instead of re-selected by Hairer's rule, which saves the
        # probe evaluation and the small first steps of every interval (torchdiffeq restarts each time).
        base_opts = self.options
        carried_h = 0.0
        for i in range(T - 1, 0, -1):
            if carried_h > 0 and base_opts["first_step"] == 0.0:
                control = base_opts["control"]
                aug.opts = dict(base_opts, first_step=min(max(carried_h, control.min_step), control.max_step))
            aug.t64 = p.t64[i - 1:i + 1].flip(0).contiguous()
            state = torch.cat([ys[i].reshape(-1), a, g]).reshape(1, -1)
            # The backward solve steps onto step_t / jump_t points inside this interval too (torchdiffeq).
            aug.step_t = _grid_after(self.options["step_t"], float(p.t64[i]), -direction)
            aug.jump_t = _grid_after(self.options["jump_t"], float(p.t64[i]), -direction)
            res = _run(aug, state, "masked", who="odeint_adjoint (backward)", record=False)
            carried_h = abs(float(res["h"][0]))
            end = res["ys"][1, 0]
            a = end[D:2 * D] + grad_ys[i - 1].reshape(-1)
            g = end[2 * D:]
            nfe += int(res["nfe"])
            c = res["counters"][0].tolist()
            n_acc += int(c[Counter.ACCEPTED])
            n_rej += int(c[Counter.REJECTED])
        _record_backward(SolveStats(method=self.method, nfe=nfe, n_accepted=n_acc, n_rejected=n_rej,
                                    t_final=float(p.t64[0]), status=status_name(Status.SUCCESS)))
        grad_params = [g[e - n:e].view_as(q) for e, n, q in
                       zip(param_ends, n_params, params)]
        return a.reshape(1, -1), grad_params


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
) -> TensorOrTuple:
    """``odeint`` with gradients by the adjoint method (torchdiffeq's ``odeint_adjoint`` semantics).

    Memory does not grow with the number of steps: the forward pass keeps only the outputs and the
    backward pass solves the adjoint system backwards in time. Its gradients are those of the continuous
    problem, accurate to the adjoint tolerances (not the exact gradients of the discrete forward solve;
    use ``odeint(..., gradient='checkpoint')`` for those).

    Args:
        func, y0, t, rtol, atol, method, options: as in :func:`fastdiffeq.odeint`.
        event_fn: not supported yet (raises NotImplementedError).
        adjoint_rtol, adjoint_atol: tolerances of the backward solve (default: rtol, atol; numbers).
        adjoint_method: method of the backward solve (default: method).
        adjoint_options: options of the backward solve (default: ``options`` without 'norm'); the extra
            ``norm='seminorm'`` leaves the parameter-gradient channels out of the error control (Kidger,
            Chen & Lyons 2021), usually saving many backward steps. A callable norm receives the tuple
            (t_vjp, *y, *a, *param_grads) with t_vjp a zero scalar (time gradients are computed separately).
        adjoint_params: the tensors to differentiate inside ``func`` (default ``func.parameters()``; required
            when ``func`` is not an nn.Module, ``()`` if there are none). Unused ones get zero gradients.

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
    p = _prepare(func, y0, t, rtol, atol, method, options, event_fn)
    adj_method = p.method if adjoint_method is None else adjoint_method
    if adj_method != p.method and options is not None and adjoint_options is None:
        raise ValueError("`adjoint_options` must be given when `adjoint_method` differs from `method` and `options` "
                         "is given (they cannot be inferred)")
    if adjoint_options is None:
        adjoint_options = {k: v for k, v in (options or {}).items() if k != "norm"}
    elif not isinstance(adjoint_options, dict):
        raise TypeError(f"`adjoint_options` must be a dict or None, got {type(adjoint_options).__name__}")
    adjoint_options = dict(adjoint_options)
    norm = adjoint_options.pop("norm", None)
    seminorm = norm == "seminorm"
    if isinstance(norm, str) and not seminorm:
        raise ValueError(f"adjoint_options['norm'] must be 'seminorm' or a callable, got {norm!r}")
    if norm is not None and not seminorm and not callable(norm):
        raise TypeError(f"adjoint_options['norm'] must be 'seminorm' or a callable, got {type(norm).__name__}")
    adj_opts = _parse_options(adjoint_options, 1)
    if adj_method not in METHODS:
        raise ValueError(f"`adjoint_method` must be one of {list(METHODS)}, got {adj_method!r}")
    config = _AdjointConfig(
        p,
        _adjoint_tolerance(rtol if adjoint_rtol is None else adjoint_rtol, "adjoint_rtol"),
        _adjoint_tolerance(atol if adjoint_atol is None else adjoint_atol, "adjoint_atol"),
        adj_method, adj_opts, seminorm, None if seminorm else norm,
    )
    params = _gradient_params(func, adjoint_params, "fastdiffeq.odeint_adjoint", "adjoint_params")
    y_flat = p.flat_y0()
    needs = torch.is_grad_enabled() and (p.t.requires_grad or any(q.requires_grad for q in p.parts) or bool(params))
    if not needs:
        with torch.no_grad():
            return p.unflatten(_run(p, y_flat.detach(), "masked", who="odeint_adjoint")["ys"])
    ys = output_time_gradients(p, y_flat, lambda y: _AdjointSolve.apply(y, p, config, *params))
    return p.unflatten(ys)
