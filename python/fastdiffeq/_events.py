"""Terminal events: ``odeint(..., event_fn=...)``, ``odeint_adjoint(..., event_fn=...)``, ``odeint_event`` (with
torchdiffeq's semantics) and per-sample events in ``solve_ivp``.

The root is found by the per-sample C++ loop (csrc/solver/rk_solve_per_sample.cpp, event_locate.cpp): after
each accepted step the event is evaluated at the step's end; when its sign differs from its sign at t0 (or it
is 0) the root is located by bisection on the step's dense output to float64 resolution, and the sample
stops there. The event time is then made differentiable by the implicit function theorem
(:class:`_ImplicitEventTime`): with g(tau, y(tau)) = 0,

    d tau = -(dg/dy . d y(tau)) / (dg/dt + dg/dy . f(tau, y(tau))),

applied in the backward pass to the cotangent of the state at the event, whose graph holds y(tau) with tau
fixed (torchdiffeq's rerouting; our own implementation).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

from . import _C
from ._errors import SolverError
from ._odeint import (_Problem, _prepare, _raise_status, gc_paused, solver_options)
from ._stats import SolveStats, _record
from ._status import Counter, Status, status_name
from ._validate import TensorOrTuple, check_func

__all__ = ["odeint_event", "odeint_until_event", "fixed_grid_event", "solve_ivp_events"]


def _event_t_grid(t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.numel() != 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"with `event_fn`, `t` must be a 1-D tensor of 2 times [t0, t1] (t1 only sets the direction of "
                         f"integration, as in torchdiffeq), got {shape}")
    return t


def _event_values(event_fn: Callable, t: torch.Tensor, y: Any, what: str) -> torch.Tensor:
    v = event_fn(t, y)
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"`event_fn` must return a tensor ({what}), got {type(v).__name__}")
    if v.is_complex():
        raise TypeError(f"`event_fn` must return a real tensor ({what}), got {v.dtype}")
    if v.device.type not in ("cpu", "cuda"):
        raise ValueError(f"`event_fn` returned a tensor on {v.device} ({what}); expected a CPU or CUDA tensor")
    if v.numel() == 0:
        raise ValueError(f"`event_fn` returned an empty tensor ({what})")
    return v


def _locate(p: _Problem, y_flat: torch.Tensor, event_fn: Callable, who: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Solve from t[0] in the direction of t[1] until event_fn changes sign (joint mode, no graph): the event
    time (float64 0-dim, CPU) and the state there ([1, D])."""
    if p.step_t or p.jump_t:
        raise ValueError("options['step_t'] / ['jump_t'] cannot be combined with `event_fn`")
    t0 = float(p.t64[0])
    direction = 1.0 if float(p.t64[1]) > t0 else -1.0
    t0_tensor = p.t64[0].clone()
    with torch.no_grad():
        # torchdiffeq's rule for a vector of events: each component's sign at t0 flips it positive, and the
        # event is the first time any of them reaches 0: g = min(event * sign(event(t0, y0))).
        sign0 = torch.sign(_event_values(event_fn, t0_tensor, p.unflatten(y_flat.detach())[0], "at t0").detach())

        def combined(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            v = _event_values(event_fn, t, p.unflatten(y.reshape(1, -1))[0], "during the solve")
            return (v.detach() * sign0).min()

        max_step = p.opts["control"].max_step
        span = min(1e300, max_step * float(p.opts["max_num_steps"]))
        t_end = t0 + direction * span
        if t_end == t0:
            raise ValueError(f"options['max_step'] ({max_step:g}) x options['max_num_steps'] "
                             f"({p.opts['max_num_steps']}) cannot move t from t0 = {t0:g}: no event can be reached")
        t_out = torch.tensor([t0, t_end], dtype=torch.float64)
        options = solver_options(p.method, p.rtols, p.atols, p.segment_ends, p.opts, [], [], p.device)
        with gc_paused():
            res = _C.rk_solve_per_sample(p.field, y_flat.detach(), t_out.to(p.device), options, norm=p.user_norm,
                                         user_shape=p.user_shape, mode="graph", event_fn=combined, joint=True)
    status = int(res["status"][0])
    counters = res["counters"][0].tolist()
    t_final = float(res["t"][0])
    stats = SolveStats(method=p.method, nfe=int(res["nfe"]), n_accepted=int(counters[Counter.ACCEPTED]),
                       n_rejected=int(counters[Counter.REJECTED]), t_final=t_final, status=status_name(status),
                       field=p.field_path)
    _record(stats)
    if status != Status.SUCCESS:
        _raise_status(status, t_final, stats, p.opts, who)
    t_event = res["t_event"][0]
    if math.isnan(float(t_event)):
        raise SolverError(f"fastdiffeq.{who}: event_fn did not change sign before t={t_final:.6g}", t=t_final,
                          stats=stats)
    return t_event, res["y_event"]


def odeint_until_event(func: Callable, y0: TensorOrTuple, t: torch.Tensor, *, rtol: Any, atol: Any,
                       method: Optional[str], options: Optional[Dict[str, Any]], event_fn: Callable,
                       progress: bool, solve_to: Callable[[torch.Tensor], TensorOrTuple], who: str):
    """``odeint(..., event_fn=...)``: (event_t, solution) with solution [2, *y0.shape] = [y0, y(event_t)].

    The event is located by a solve without a graph; when gradients are needed, ``solve_to(t_pair)`` solves
    again to the event time with the caller's gradient mode (the same steps: output times never change
    them), so y(event_t) is differentiable with the event time held fixed, as in torchdiffeq (odeint_event
    adds the event time's own dependence)."""
    check_func(event_fn, "event_fn")
    t = _event_t_grid(t)
    p = _prepare(func, y0, t, rtol, atol, method, options, None, progress)
    y_flat = p.flat_y0()
    t_event64, y_event = _locate(p, y_flat, event_fn, who)
    event_t = t_event64.to(device=t.device, dtype=t.dtype)
    t_pair = torch.stack([t[0], event_t.detach()])
    needs_graph = torch.is_grad_enabled() and (
        t.requires_grad or any(q.requires_grad for q in p.parts) or
        (not isinstance(func, torch.nn.Module) or any(q.requires_grad for q in func.parameters())))
    if float(t_event64) == float(p.t64[0]):  # the event holds at t0: nothing to integrate
        return event_t, p.unflatten(torch.cat([y_flat, y_flat], 0))
    if needs_graph:
        if who == "odeint_adjoint":  # torchdiffeq returns it from its autograd Function: backward-able, zero grad
            inputs = [x for x in (t, *p.parts, *(func.parameters() if isinstance(func, torch.nn.Module) else ()))
                      if x.requires_grad]
            event_t = _HeldEventTime.apply(event_t, *inputs)
        return event_t, solve_to(t_pair)
    ys = torch.cat([y_flat.detach(), y_event.to(y_flat.dtype)], 0)
    return event_t, p.unflatten(ys)


def fixed_grid_event(func: Callable, y0: TensorOrTuple, t: torch.Tensor, *, rtol: Any, atol: Any, method: str,
                     options: Optional[Dict[str, Any]], event_fn: Callable, progress: bool):
    """``odeint(..., event_fn=...)`` with a fixed-grid method (fastdiffeq._fixed_events: torchdiffeq's loop)."""
    from ._fixed_events import fixed_grid_until_event

    check_func(event_fn, "event_fn")
    t = _event_t_grid(t)
    p = _prepare(func, y0, t, rtol, atol, method, options, None, progress)
    return fixed_grid_until_event(p, t, event_fn, _event_values)


class _HeldEventTime(torch.autograd.Function):
    """odeint_adjoint's event time as torchdiffeq returns it: an output of the solve whose backward passes zero
    gradients (the time is held fixed, as in torchdiffeq; odeint_event gives its real dependence)."""

    @staticmethod
    def forward(ctx, event_t: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.like = [(x.shape, x.dtype, x.device) for x in inputs]
        return event_t.detach().clone()

    @staticmethod
    def backward(ctx, grad_t: torch.Tensor):
        return (None, *[torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.like])


class _ImplicitEventTime(torch.autograd.Function):
    """(event_t, y_event) -> the same values; backward: the event time's dependence on everything upstream by
    the implicit function theorem, folded into the cotangent of y_event (whose graph holds y(tau) at a fixed
    tau). Per sample: rows b of t [B] and y [B, ...] are independent events."""

    @staticmethod
    def forward(ctx, func: Callable, event_fn: Callable, per_sample: bool, event_t: torch.Tensor,
                y_event: torch.Tensor, *params: torch.Tensor):
        ctx.func, ctx.event_fn, ctx.per_sample = func, event_fn, per_sample
        ctx.save_for_backward(event_t, y_event)
        return event_t.detach().clone(), y_event.detach().clone()

    @staticmethod
    def backward(ctx, grad_t: torch.Tensor, grad_y: torch.Tensor):
        event_t, y_event = ctx.saved_tensors
        with torch.enable_grad():
            tau = event_t.detach().requires_grad_(True)
            y = y_event.detach().requires_grad_(True)
            f = ctx.func(tau.to(y.dtype), y).detach()
            g = ctx.event_fn(tau, y)
            if not ctx.per_sample:
                g = g.min() if g.dim() > 0 else g  # (the combined event; its active component at the root)
            if g.requires_grad:
                g_t, g_y = torch.autograd.grad(g.sum(), (tau, y), allow_unused=True)
            else:  # a piecewise-constant event (a comparison, a constant): no derivative, no correction
                g_t = g_y = None
        g_t = torch.zeros_like(tau) if g_t is None else g_t
        g_y = torch.zeros_like(y) if g_y is None else g_y
        if grad_t is None:
            grad_t = torch.zeros_like(tau)
        if grad_y is None:
            grad_y = torch.zeros_like(y)
        reduce_dims = tuple(range(1, y.dim())) if ctx.per_sample else tuple(range(y.dim()))
        dg_dt = g_t.to(y.dtype) + (g_y * f).sum(reduce_dims)
        a = grad_t.to(y.dtype) + (grad_y * f).sum(reduce_dims)
        scale = a / dg_dt
        scale = torch.where(torch.isfinite(scale), scale, torch.zeros_like(scale))  # no event: no correction
        shape = (-1,) + (1,) * (y.dim() - 1) if ctx.per_sample else ()
        grad_y_total = grad_y - g_y * scale.reshape(shape)
        return (None, None, None, None, grad_y_total) + (None,) * (len(ctx.needs_input_grad) - 5)


def odeint_event(func: Callable, y0: TensorOrTuple, t0: torch.Tensor, *, event_fn: Callable,
                 reverse_time: bool = False, odeint_interface: Optional[Callable] = None, **kwargs: Any):
    """Solve from ``t0`` until ``event_fn(t, y)`` changes sign; returns ``(event_t, solution)`` as torchdiffeq's
    ``odeint_event``: ``solution`` is ``[2, *y0.shape]`` (y0 and the state at the event), and ``event_t`` is
    differentiable w.r.t. y0, t0 and the parameters of ``func`` by the implicit function theorem.

    Args:
        func, y0: as in :func:`fastdiffeq.odeint` (tuples allowed).
        t0: the initial time (a 0-dim or one-element tensor; may require grad).
        event_fn: ``event_fn(t, y)`` -> a tensor; the event is the first time any component reaches 0 (each
            component's sign at t0 sets which way it must cross).
        reverse_time: integrate towards decreasing t.
        odeint_interface: :func:`fastdiffeq.odeint` (default) or :func:`fastdiffeq.odeint_adjoint`.
        **kwargs: passed to the interface (rtol, atol, method, options, adjoint_params, ...).

    Example (a falling body hitting the ground):
        >>> g = torch.tensor(9.81, requires_grad=True)
        >>> y0 = torch.tensor([10.0, 0.0], dtype=torch.float64, requires_grad=True)
        >>> t, sol = fastdiffeq.odeint_event(lambda t, y: torch.stack([y[1], -g.double()]), y0,
        ...                                  torch.tensor(0.0, dtype=torch.float64), event_fn=lambda t, y: y[0])
        >>> t.backward()   # dt/dy0[0] = 1 / (g t)
    """
    from ._odeint import odeint
    check_func(event_fn, "event_fn")
    if odeint_interface is None:
        odeint_interface = odeint
    check_func(odeint_interface, "odeint_interface")
    if not isinstance(t0, torch.Tensor) or t0.numel() != 1:
        raise ValueError(f"`t0` must be a tensor holding one time, got "
                         f"{tuple(t0.shape) if isinstance(t0, torch.Tensor) else type(t0).__name__}")
    t0 = t0.reshape(())
    t = torch.stack([t0, t0.detach() + (-1.0 if reverse_time else 1.0)])
    event_t, sol = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)
    is_tuple = isinstance(sol, tuple)
    if is_tuple:
        sizes = [s[0].numel() for s in sol]
        shapes = [s.shape[1:] for s in sol]
        state = torch.cat([s[-1].reshape(-1) for s in sol])

        def flat_func(tt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            parts = torch.split(y, sizes)
            out = func(tt, tuple(q.view(sh) for q, sh in zip(parts, shapes)))
            return torch.cat([o.reshape(-1) for o in out])

        def flat_event(tt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            parts = torch.split(y, sizes)
            return event_fn(tt, tuple(q.view(sh) for q, sh in zip(parts, shapes)))
    else:
        state, flat_func, flat_event = sol[-1], func, event_fn
    # The combined event as located: min over components of event * sign(event at t0).
    with torch.no_grad():
        y_start = tuple(s[0] for s in sol) if is_tuple else sol[0]
        sign0 = torch.sign(event_fn(t0.detach().to(torch.float64), y_start))

    def combined(tt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (flat_event(tt, y) * sign0).min() if sign0.dim() > 0 else flat_event(tt, y) * sign0

    params = tuple(func.parameters()) if isinstance(func, torch.nn.Module) else ()
    event_t, state = _ImplicitEventTime.apply(flat_func, combined, False, event_t, state, *params)
    if is_tuple:
        rows = torch.split(state, sizes)
        sol = tuple(torch.cat([s[:-1], r.view(1, *sh)]) for s, r, sh in zip(sol, rows, shapes))
    else:
        sol = torch.cat([sol[:-1], state.unsqueeze(0)])
    return event_t, sol


def solve_ivp_events(b: Any, event_fn: Callable, gradient: str, on_failure: str,
                     params: Optional[Sequence[torch.Tensor]]):
    """solve_ivp with per-sample terminal events (the per-sample C++ loop, direct gradients only)."""
    from ._solve_ivp import _solution, _needs_grad, _solve_params
    check_func(event_fn, "event_fn")
    if gradient != "direct":
        raise ValueError(f"solve_ivp with `event_fn` supports gradient='direct' only, got {gradient!r}")
    flip = b.flip
    flipped = bool((flip < 0).any())
    flip_dev = flip.to(b.y0.device)

    def event(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tt = t * flip_dev.to(t.dtype) if flipped else t
        v = _event_values(event_fn, tt, y, "per sample")
        if v.shape != (b.B,):
            raise ValueError(f"`event_fn` must return one value per sample, shape [{b.B}], got {tuple(v.shape)}")
        return v

    grad_params = _solve_params(b.func, params, gradient) if torch.is_grad_enabled() else ()
    needs = _needs_grad(b.y0, grad_params, b.func)
    opts = b.options()
    with torch.set_grad_enabled(needs), gc_paused():
        res = _C.rk_solve_per_sample(b.field, b.flat_y0() if needs else b.flat_y0().detach(), b.t_out(), opts,
                                     norm=b.user_norm, user_shape=b.user_shape(), mode="graph", event_fn=event)
    ys = res["ys"]
    sol = _solution(b, res, b.unflatten(ys), on_failure, "solve_ivp")
    t_events = res["t_event"] * flip
    y_events = res["y_event"].reshape(b.B, *b.state_shape)
    if needs:
        failed = (res["status"] != int(Status.SUCCESS)).to(ys.device)
        if bool(failed.any()):
            sol.ys = torch.where(failed.view(-1, *([1] * (sol.ys.dim() - 1))), sol.ys.detach(), sol.ys)
        has_event = torch.isfinite(t_events)
        t_dev = t_events.to(b.y0.device)
        t_events, y_events = _ImplicitEventTime.apply(b.func, event_fn, True, t_dev, y_events, *grad_params)
        t_events = torch.where(has_event.to(t_events.device), t_events, t_dev.detach())
    sol.t_events = t_events
    sol.y_events = y_events
    return sol
