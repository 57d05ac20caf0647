"""Drop-in ``odeint``: torchdiffeq's signature and semantics, every per-step operation fused in C++."""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from . import _C
from ._errors import MaxStepsError, NonFiniteStateError, SolverError, StepSizeUnderflowError
from ._stats import SolveStats, _record
from ._validate import (TensorOrTuple, check_func, check_state_tensor, check_time_grid, check_tolerance,
                        positive_float, time_points)

__all__ = ["odeint", "METHODS"]

METHODS: Tuple[str, ...] = tuple(_C.methods)

_ADAPTIVE_OPTIONS = frozenset({
    "first_step", "min_step", "max_step", "safety", "ifactor", "dfactor", "max_num_steps", "step_t", "jump_t",
    "dtype", "norm",
})

_STATUS_NAMES = {1: "success", 2: "max_steps", 3: "step_underflow", 4: "non_finite"}
_STATUS_ERRORS = {2: MaxStepsError, 3: StepSizeUnderflowError, 4: NonFiniteStateError}


def _needs_grad(func: Any, y0s: Tuple[torch.Tensor, ...], t: torch.Tensor) -> bool:
    if not torch.is_grad_enabled():
        return False
    if t.requires_grad or any(y.requires_grad for y in y0s):
        return True
    if isinstance(func, torch.nn.Module):
        return any(p.requires_grad for p in func.parameters())
    return False


def _parse_options(options: Optional[Dict[str, Any]], n_parts: int) -> Dict[str, Any]:
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"`options` must be a dict or None, got {type(options).__name__}")
    unknown = sorted(set(options) - _ADAPTIVE_OPTIONS)
    if unknown:
        raise ValueError(
            f"`options` has unknown key(s) {unknown} for the adaptive methods; known keys: {sorted(_ADAPTIVE_OPTIONS)}"
        )
    out: Dict[str, Any] = {}
    out["first_step"] = 0.0
    if options.get("first_step") is not None:
        out["first_step"] = positive_float(options["first_step"], "first_step")
    out["min_step"] = positive_float(options.get("min_step", 0.0), "min_step", allow_zero=True)
    out["max_step"] = positive_float(options.get("max_step", math.inf), "max_step", allow_inf=True)
    if out["max_step"] < out["min_step"]:
        raise ValueError(f"options['max_step'] ({out['max_step']}) must be >= options['min_step'] ({out['min_step']})")
    out["safety"] = positive_float(options.get("safety", 0.9), "safety")
    out["ifactor"] = positive_float(options.get("ifactor", 10.0), "ifactor")
    if out["ifactor"] < 1:
        raise ValueError(f"options['ifactor'] must be >= 1, got {out['ifactor']}")
    out["dfactor"] = positive_float(options.get("dfactor", 0.2), "dfactor")
    if out["dfactor"] > 1:
        raise ValueError(f"options['dfactor'] must be in (0, 1], got {out['dfactor']}")
    mns = options.get("max_num_steps", 2**31 - 1)
    if isinstance(mns, torch.Tensor) and mns.numel() == 1:
        mns = mns.item()
    if isinstance(mns, bool) or not isinstance(mns, numbers.Integral) or mns <= 0:
        raise ValueError(f"options['max_num_steps'] must be a positive integer, got {mns!r}")
    out["max_num_steps"] = int(mns)
    dtype = options.get("dtype", torch.float64)
    if dtype != torch.float64:
        raise ValueError(f"options['dtype'] (the time dtype) must be torch.float64, got {dtype}")
    norm = options.get("norm")
    if norm is not None and not callable(norm):
        raise TypeError(f"options['norm'] must be callable, got {type(norm).__name__}")
    out["norm"] = norm
    out["step_t"] = time_points(options["step_t"], "step_t") if options.get("step_t") is not None else []
    out["jump_t"] = time_points(options["jump_t"], "jump_t") if options.get("jump_t") is not None else []
    if set(out["step_t"]) & set(out["jump_t"]):
        raise ValueError("options['step_t'] and options['jump_t'] must not share any time")
    return out


def _grid_after(points: list, t0: float, direction: float) -> list:
    """Grid points strictly after t0 in the direction of integration, in the order they are reached."""
    ahead = sorted({p for p in points if direction * (p - t0) > 0})
    return ahead if direction > 0 else ahead[::-1]


def odeint(
    func: Callable,
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: Any = 1e-7,
    atol: Any = 1e-9,
    method: Optional[str] = None,
    options: Optional[Dict[str, Any]] = None,
    event_fn: Optional[Callable] = None,
) -> TensorOrTuple:
    """Integrate dy/dt = func(t, y) from y(t[0]) = y0 and return y at every time in ``t``.

    A drop-in replacement for ``torchdiffeq.odeint`` for the adaptive methods 'dopri5' (default),
    'tsit5' and 'bosh3': the whole state is one system with one step size (joint mode), the step-size
    controller, initial step and error norm are torchdiffeq's, so dopri5 takes the same steps. Output
    times are interpolated, not stepped to.

    Args:
        func: callable ``func(t, y)`` returning dy/dt with y's shape and dtype; ``t`` is a 0-dim tensor
            in y's dtype. With a tuple ``y0``, ``y`` is a tuple and ``func`` returns a tuple.
        y0: float32/float64 tensor of any shape (0-dim included), or a tuple of such tensors on one device.
        t: 1-D floating tensor of output times, strictly increasing or strictly decreasing; ``t[0]`` is
            the initial time.
        rtol, atol: relative and absolute tolerances (numbers >= 0, or one per tuple element).
        method: 'dopri5' (default), 'tsit5' or 'bosh3'.
        options: dict with any of first_step, min_step, max_step, safety (0.9), ifactor (10),
            dfactor (0.2), max_num_steps (attempts allowed between two outputs), step_t, jump_t
            (times to step onto; after a jump_t time f is re-evaluated), dtype (time dtype: float64 only),
            norm (callable on the scaled error; the default is the RMS norm, for tuples the max of the
            per-element RMS norms).
        event_fn: not supported yet (raises NotImplementedError).

    Returns:
        A tensor ``[len(t), *y0.shape]`` (a tuple of them for tuple ``y0``). The counters of the solve
        are available afterwards from :func:`fastdiffeq.last_stats`.

    Raises:
        TypeError / ValueError: bad arguments (named in the message), or ``func`` returning the wrong
            type, shape, dtype or device.
        MaxStepsError, StepSizeUnderflowError, NonFiniteStateError: the solve could not finish
            (subclasses of :class:`fastdiffeq.SolverError`, carrying ``t`` and ``stats``).
        NotImplementedError: gradients were requested (they arrive with odeint_adjoint / direct backprop).

    Example:
        >>> import torch, fastdiffeq
        >>> A = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
        >>> ys = fastdiffeq.odeint(lambda t, y: y @ A.T, torch.tensor([1.0, 0.0]), torch.linspace(0, 3, 4))
        >>> ys.shape
        torch.Size([4, 2])
    """
    check_func(func)
    if event_fn is not None:
        raise NotImplementedError("fastdiffeq.odeint: `event_fn` (event handling) is not supported yet")
    if method is None:
        method = "dopri5"
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"`method` must be one of {list(METHODS)}, got {method!r}")

    is_tuple = not isinstance(y0, torch.Tensor)
    if is_tuple:
        if not isinstance(y0, tuple):
            raise TypeError(f"`y0` must be a torch.Tensor or a tuple of tensors, got {type(y0).__name__}")
        if len(y0) == 0:
            raise ValueError("`y0` is an empty tuple")
        parts = tuple(check_state_tensor(y, f"y0[{i}]") for i, y in enumerate(y0))
        if len({p.dtype for p in parts}) > 1:
            raise TypeError(f"all tensors in `y0` must share one dtype, got {[p.dtype for p in parts]}")
        if len({p.device for p in parts}) > 1:
            raise ValueError(f"all tensors in `y0` must be on one device, got {[str(p.device) for p in parts]}")
    else:
        parts = (check_state_tensor(y0, "y0"),)
    t64 = check_time_grid(t)
    if _needs_grad(func, parts, t):
        raise NotImplementedError(
            "fastdiffeq.odeint does not compute gradients yet (direct backprop and odeint_adjoint are the next "
            "milestone). Call it under torch.no_grad(), or detach y0/t and the parameters of func."
        )

    rtols = check_tolerance(rtol, "rtol", len(parts))
    atols = check_tolerance(atol, "atol", len(parts))
    opts = _parse_options(options, len(parts))

    device, dtype = parts[0].device, parts[0].dtype
    shapes = [p.shape for p in parts]
    sizes = [p.numel() for p in parts]
    segment_ends = torch.tensor(sizes).cumsum(0).tolist()
    flat = torch.cat([p.detach().reshape(-1) for p in parts]) if is_tuple else parts[0].detach().reshape(-1)
    y_flat = flat.to(dtype).contiguous().reshape(1, -1)

    if is_tuple:
        def field(tt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = func(tt, tuple(y[s - n:s].view(shape) for s, n, shape in zip(segment_ends, sizes, shapes)))
            if not isinstance(out, (tuple, list)) or len(out) != len(shapes):
                raise TypeError(
                    f"func must return a tuple of {len(shapes)} tensors for a tuple y0, got {type(out).__name__}"
                )
            for i, (o, shape) in enumerate(zip(out, shapes)):
                if not isinstance(o, torch.Tensor):
                    raise TypeError(f"func's output [{i}] must be a torch.Tensor, got {type(o).__name__}")
                if o.shape != shape:
                    raise ValueError(f"func's output [{i}] has shape {tuple(o.shape)}, expected {tuple(shape)}")
                if o.dtype != dtype:
                    raise TypeError(f"func's output [{i}] has dtype {o.dtype}, expected {dtype}")
            return torch.cat([o.reshape(-1) for o in out])

        user_shape = [y_flat.shape[1]]
        norm = opts["norm"]
        if norm is None:
            user_norm = None  # the fused kernel's segmented norm is torchdiffeq's tuple default
        else:
            def user_norm(x: torch.Tensor) -> Any:
                return norm(tuple(x[s - n:s].view(shape) for s, n, shape in zip(segment_ends, sizes, shapes)))
    else:
        field = func
        user_shape = list(parts[0].shape)
        user_norm = opts["norm"]

    t0 = float(t64[0])
    direction = 1.0 if t64.numel() < 2 or float(t64[1]) > t0 else -1.0
    step_t = _grid_after(opts["step_t"], t0, direction)
    jump_t = _grid_after(opts["jump_t"], t0, direction)

    with torch.no_grad():
        res = _C.rk_solve(
            field, y_flat, t64.to(device),
            method=method, rtol=rtols, atol=atols, segment_ends=segment_ends,
            safety=opts["safety"], ifactor=opts["ifactor"], dfactor=opts["dfactor"],
            min_step=opts["min_step"], max_step=opts["max_step"], first_step=opts["first_step"],
            max_num_steps=opts["max_num_steps"], step_t=step_t, jump_t=jump_t, norm=user_norm,
            user_shape=user_shape, joint=True, check_every=1 if device.type == "cpu" else 8,
        )

    status = int(res["status"][0])
    counters = res["counters"][0].tolist()
    t_final = float(res["t"][0])
    stats = SolveStats(method=method, nfe=int(res["nfe"]), n_accepted=int(counters[0]),
                       n_rejected=int(counters[1]), t_final=t_final, status=_STATUS_NAMES.get(status, "running"))
    _record(stats)
    if status != 1:
        _raise_status(status, t_final, stats, opts)

    ys = res["ys"].reshape(t64.numel(), -1)
    if not is_tuple:
        return ys.reshape(t64.numel(), *shapes[0])
    return tuple(ys[:, s - n:s].reshape(t64.numel(), *shape) for s, n, shape in zip(segment_ends, sizes, shapes))


def _raise_status(status: int, t_final: float, stats: SolveStats, opts: Dict[str, Any]) -> None:
    if status == 2:
        msg = (f"max_num_steps={opts['max_num_steps']} step attempts were made at t={t_final:.6g} without reaching "
               f"the next output time ({stats.n_accepted} accepted, {stats.n_rejected} rejected in total); "
               "raise options['max_num_steps'] or loosen rtol/atol")
    elif status == 3:
        msg = (f"step size underflow at t={t_final:.17g}: the controller asked for a step too small to advance "
               "time in float64. The problem may be stiff or have a singularity there; loosen rtol/atol or set "
               "options['min_step']")
    elif status == 4:
        msg = (f"func returned NaN or inf at t={t_final:.6g} and kept doing so after the step size was cut "
               "repeatedly: the solution may blow up there")
    else:
        msg = f"solver stopped at t={t_final:.6g} with status {status}"
    raise _STATUS_ERRORS.get(status, SolverError)(f"fastdiffeq.odeint: {msg}", t=t_final, stats=stats)
