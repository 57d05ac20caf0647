"""Drop-in ``odeint``: torchdiffeq's signature and semantics, every per-step operation fused in C++."""

from __future__ import annotations

import contextlib
import gc
import itertools
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.autograd.function import once_differentiable

from . import _C
from ._adams import ADAMS_METHODS
from ._fixed_grid import parse_fixed_options, solve_fixed
from ._scipy import SCIPY_METHOD, parse_scipy_options, solve_scipy
from ._errors import MaxStepsError, NonFiniteStateError, SolverError, StepSizeUnderflowError
from ._native import native_field
from ._progress import ProgressBar, check_progress, progress_bar
from ._reversible import DEFAULT_COUPLING, check_coupling, solve_reversible
from ._stats import SolveStats, _record
from ._status import Counter, Status, status_name
from ._tape import keep_tape, replay_joint
from ._validate import (TensorOrTuple, check_func, check_state_tensor, check_time_grid, check_tolerance,
                        max_num_steps_option, positive_float, real_option, time_points)

__all__ = ["odeint", "METHODS"]

# Each Runge-Kutta method's stepping comes with its tableau (csrc/core/tableau.h); 'scipy_solver' is scipy.
# The Adams methods are multistep (fastdiffeq._adams): fixed-grid, with a history instead of a tableau.
FIXED_GRID_METHODS: Tuple[str, ...] = tuple(m for m in _C.methods if _C.tableau(m)["stepping"] == "fixed") \
    + ADAMS_METHODS
ADAPTIVE_METHODS: Tuple[str, ...] = tuple(m for m in _C.methods if m not in FIXED_GRID_METHODS)
METHODS: Tuple[str, ...] = tuple(_C.methods) + ADAMS_METHODS + (SCIPY_METHOD,)

_ADAPTIVE_OPTIONS = frozenset({
    "first_step", "min_step", "max_step", "safety", "ifactor", "dfactor", "max_num_steps", "step_t", "jump_t",
    "dtype", "norm",
})

_STATUS_ERRORS = {Status.MAX_STEPS: MaxStepsError, Status.STEP_UNDERFLOW: StepSizeUnderflowError,
                  Status.NON_FINITE: NonFiniteStateError}

# Controller options and their defaults: fields of _C.ControllerParams (exponent comes from the method).
_CONTROL_OPTIONS = ("safety", "ifactor", "dfactor", "min_step", "max_step")


def _needs_grad(func: Any, y0s: Tuple[torch.Tensor, ...], t: torch.Tensor) -> bool:
    if not torch.is_grad_enabled():
        return False
    if t.requires_grad or any(y.requires_grad for y in y0s):
        return True
    if isinstance(func, torch.nn.Module):
        return any(p.requires_grad for p in func.parameters())
    return True  # a closure may capture tensors that require grad: keep the graph


_DEFAULT_OPTIONS: Dict[str, Any] = {}


def _parse_options(options: Optional[Dict[str, Any]], n_parts: int) -> Dict[str, Any]:
    """Validated options (the defaults, parsed once, when none are given: a solve's fixed cost)."""
    if options is None or (isinstance(options, dict) and not options):
        if not _DEFAULT_OPTIONS:
            _DEFAULT_OPTIONS.update(_parse_given_options({}))
        return dict(_DEFAULT_OPTIONS)
    return _parse_given_options(options)


def _parse_given_options(options: Dict[str, Any]) -> Dict[str, Any]:
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
    # The controller: one _C.ControllerParams; its range rules are the core's (csrc/core/controller.h).
    defaults = _C.ControllerParams()
    control = _C.ControllerParams(**{
        name: real_option(options[name], name) if options.get(name) is not None else getattr(defaults, name)
        for name in _CONTROL_OPTIONS
    })
    problem = control.problem()
    if problem is not None:
        field, requirement, value = problem
        raise ValueError(f"options['{field}'] must be {requirement}, got {value}")
    out["control"] = control
    out["max_num_steps"] = max_num_steps_option(options.get("max_num_steps", 2**31 - 1))
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


@dataclass
class _Problem:
    """A validated odeint call, flattened to the solver's [1, D] layout."""

    func: Callable
    method: str
    is_tuple: bool
    shapes: List[torch.Size]
    sizes: List[int]
    segment_ends: List[int]
    rtols: List[float]
    atols: List[float]
    opts: Dict[str, Any]
    parts: Tuple[torch.Tensor, ...]
    t: torch.Tensor              # the caller's t (may require grad)
    t64: torch.Tensor            # float64 copy on the CPU
    field: Callable              # what the C++ loop calls: field(t, y) with y in user_shape
    user_shape: List[int]
    user_norm: Optional[Callable]
    step_t: List[float]
    jump_t: List[float]
    device: torch.device
    dtype: torch.dtype
    progress: bool = False       # a progress bar for each solve (fastdiffeq._progress)
    native: bool = False         # field is func's native (C++) description (fastdiffeq._native)
    fixed: Optional[Dict[str, Any]] = None  # a fixed-grid method's options (fastdiffeq._fixed_grid)
    callbacks: Optional[Tuple[Optional[Callable], ...]] = None  # func's step callbacks (step_callbacks)
    scipy: Optional[Dict[str, Any]] = None  # method='scipy_solver': its options (fastdiffeq._scipy)

    @property
    def field_path(self) -> str:
        return "native" if self.native else "python"

    def flat_y0(self) -> torch.Tensor:
        """y0 as [1, D], keeping its autograd graph."""
        if not self.is_tuple:
            return self.parts[0].reshape(1, -1).contiguous()  # one op for the common case (a view when contiguous)
        return torch.cat([p.reshape(-1) for p in self.parts]).reshape(1, -1)

    def flat_field(self, t_scalar: torch.Tensor, y_flat: torch.Tensor) -> torch.Tensor:
        """f(t, y) on the flat [D] layout (t a 0-dim float64 or state-dtype tensor)."""
        out = self.field(t_scalar.to(self.dtype).reshape(()), y_flat.reshape(self.user_shape))
        return out.reshape(-1)

    def unflatten(self, ys: torch.Tensor) -> TensorOrTuple:
        n = ys.shape[0]
        ys = ys.reshape(n, -1)
        if not self.is_tuple:
            return ys.reshape(n, *self.shapes[0])
        return tuple(ys[:, s - k:s].reshape(n, *shape)
                     for s, k, shape in zip(self.segment_ends, self.sizes, self.shapes))


CALLBACK_NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")
ADJOINT_CALLBACK_NAMES = tuple(n + "_adjoint" for n in CALLBACK_NAMES)


def _valid_callbacks(method: str) -> Tuple[str, ...]:
    """The callbacks a method calls (torchdiffeq's valid_callbacks)."""
    if method == SCIPY_METHOD:
        return ()
    return ("callback_step",) if method in FIXED_GRID_METHODS else CALLBACK_NAMES


def step_callbacks(func: Any, unflatten_state: Optional[Callable], direction: float,
                   method: str) -> Optional[Tuple]:
    """torchdiffeq's step callbacks of func, as the C++ loops call them: None when func defines none (the loops
    then call nothing), else (step, accept, reject), each None or cb(t0, y0, dt) with torchdiffeq's
    arguments: t0 the original time, y0 the state as the user passed it (a tuple for tuple states) and dt
    the step in torchdiffeq's (for a decreasing t: negated) time, so positive."""
    found = [getattr(func, name, None) for name in CALLBACK_NAMES]
    if not any(callable(cb) for cb in found):
        return None
    valid = _valid_callbacks(method)
    unused = {name for name, cb in zip(CALLBACK_NAMES, found) if callable(cb) and name not in valid}
    if unused:  # torchdiffeq's warning, word for word
        warnings.warn("Solver '{}' does not support callbacks {}".format(method, unused))
    found = [cb if name in valid else None for name, cb in zip(CALLBACK_NAMES, found)]
    if not any(callable(cb) for cb in found):
        return None

    def wrap(cb: Any) -> Optional[Callable]:
        if not callable(cb):
            return None

        def call(t0: torch.Tensor, y: torch.Tensor, h: torch.Tensor) -> None:
            cb(t0, y if unflatten_state is None else unflatten_state(y), h * direction)

        return call

    return tuple(wrap(cb) for cb in found)


def _prepare(func: Callable, y0: TensorOrTuple, t: torch.Tensor, rtol: Any, atol: Any, method: Optional[str],
             options: Optional[Dict[str, Any]], event_fn: Optional[Callable], progress: bool = False) -> _Problem:
    check_func(func)
    check_progress(progress)
    if event_fn is not None:
        raise ValueError("fastdiffeq: internal: event_fn is handled before _prepare")
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
    rtols = check_tolerance(rtol, "rtol", len(parts))
    atols = check_tolerance(atol, "atol", len(parts))
    for i, (r, a) in enumerate(zip(rtols, atols)):
        if r == 0 and a == 0:
            where = f" for y0[{i}]" if is_tuple else ""
            raise ValueError(f"`rtol` and `atol` cannot both be 0{where}: no error would ever be accepted")
    fixed = scipy = None
    if method == SCIPY_METHOD:
        scipy = parse_scipy_options(options)
        if progress:
            raise ValueError("progress=True is not supported with method 'scipy_solver'")
        options = None
    if method in FIXED_GRID_METHODS:
        fixed = parse_fixed_options(options, method)
        if progress:
            raise ValueError(f"progress=True is not supported with the fixed-grid method {method!r}")
        options = None  # the adaptive options keep their defaults (unused)
    opts = _parse_options(options, len(parts))

    device, dtype = parts[0].device, parts[0].dtype
    shapes = [p.shape for p in parts]
    sizes = [p.numel() for p in parts]
    segment_ends = list(itertools.accumulate(sizes))

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

        user_shape = [sum(sizes)]
        norm = opts["norm"]
        if norm is None:
            user_norm = None  # the fused kernel's segmented norm is torchdiffeq's tuple default
        else:
            def user_norm(x: torch.Tensor) -> Any:
                return norm(tuple(x[s - n:s].view(shape) for s, n, shape in zip(segment_ends, sizes, shapes)))
    else:
        native = native_field(func, parts[0])
        field = func if native is None else native
        user_shape = list(parts[0].shape)
        user_norm = opts["norm"]

    t0 = float(t64[0])
    direction = 1.0 if t64.numel() < 2 or float(t64[1]) > t0 else -1.0
    unflatten_state = None
    if is_tuple:
        def unflatten_state(y: torch.Tensor) -> Tuple[torch.Tensor, ...]:
            return tuple(y[s - n:s].view(shape) for s, n, shape in zip(segment_ends, sizes, shapes))
    callbacks = step_callbacks(func, unflatten_state, direction, method)
    return _Problem(
        func=func, method=method, is_tuple=is_tuple, shapes=shapes, sizes=sizes, segment_ends=segment_ends,
        rtols=rtols, atols=atols, opts=opts, parts=parts, t=t, t64=t64, field=field, user_shape=user_shape,
        user_norm=user_norm, step_t=_grid_after(opts["step_t"], t0, direction),
        jump_t=_grid_after(opts["jump_t"], t0, direction), device=device, dtype=dtype, progress=progress,
        native=not is_tuple and field is not func,
        fixed=fixed, callbacks=callbacks, scipy=scipy,
    )


def solver_options(method: str, rtols: Sequence[float], atols: Sequence[float], segment_ends: Sequence[int],
                   opts: Dict[str, Any], step_t: Sequence[float], jump_t: Sequence[float], device: torch.device,
                   record_dense: bool = False) -> Any:
    """The C++ loop's settings (``_C.RkOptions``) from validated options."""
    o = _C.RkOptions()
    o.method = method
    o.rtol, o.atol, o.segment_ends = list(rtols), list(atols), list(segment_ends)
    o.control = opts["control"]
    o.first_step, o.max_num_steps = opts["first_step"], opts["max_num_steps"]
    o.step_t, o.jump_t = list(step_t), list(jump_t)
    # The masked loop reads "all done" every check_every steps: free on the CPU, a sync on CUDA.
    o.check_every = 1 if device.type == "cpu" else 8
    o.record_dense = record_dense
    return o


@contextlib.contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector while a C++ loop calls the field.

    Every call of the field creates Python tensor objects, which triggers the collector every few steps (a
    fifth of the loop's time in profiles). Tensors are freed by reference counting anyway; collection is
    restored after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _run(p: _Problem, y_flat: torch.Tensor, mode: str, *, who: str = "odeint", record: bool = True,
         dense: bool = False) -> Dict[str, Any]:
    """One call of the C++ loop; records the stats (unless ``record`` is False) and raises the typed error
    when the solve fails. ``dense`` (mode 'record'): the tape also holds the dense trajectory."""
    options = solver_options(p.method, p.rtols, p.atols, p.segment_ends, p.opts, p.step_t, p.jump_t, p.device,
                             record_dense=dense)
    if p.callbacks is not None and mode == "masked":
        mode = "graph"  # the callbacks need the host-driven loop (the caller holds no_grad)
    with progress_bar(p.progress, p.t64, who) as bar:
        with gc_paused():
            t_out = p.t64 if p.device.type == "cpu" else p.t64.to(p.device)  # t64 lives on the CPU
            res = _C.rk_solve(p.field, y_flat, t_out, options, norm=p.user_norm,
                              user_shape=p.user_shape, joint=True, mode=mode, progress=bar,
                              progress_interval=ProgressBar.interval, callbacks=p.callbacks)
        status = res["status"].tolist()[0]
        counters = res["counters"].tolist()[0]
        t_final = res["t"].tolist()[0]
        stats = SolveStats(method=p.method, nfe=int(res["nfe"]), n_accepted=int(counters[Counter.ACCEPTED]),
                           n_rejected=int(counters[Counter.REJECTED]), t_final=t_final, status=status_name(status),
                           field=p.field_path)
        if record:
            _record(stats)
        if status != Status.SUCCESS:
            _raise_status(status, t_final, stats, p.opts, who)  # (closes the bar where the solve stopped)
    return res


class _InitialTimeLink(torch.autograd.Function):
    """Identity on y0 whose backward gives dL/dt0 = -f(t0, y0) . dL/dy0 (the flow's dependence on t0)."""

    @staticmethod
    def forward(ctx, y_flat: torch.Tensor, t: torch.Tensor, problem: _Problem) -> torch.Tensor:
        ctx.problem = problem
        ctx.save_for_backward(y_flat, t)
        return y_flat.view_as(y_flat)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        y_flat, t = ctx.saved_tensors
        f0 = ctx.problem.flat_field(t[0], y_flat.reshape(-1))
        grad_t = torch.zeros_like(t)
        grad_t[0] = -(f0.to(torch.float64) * grad_y.reshape(-1).to(torch.float64)).sum()
        return grad_y, grad_t, None


class _OutputTimeLink(torch.autograd.Function):
    """Identity on the outputs whose backward gives dL/dt_i = f(t_i, y_i) . dL/dy_i for i >= 1."""

    @staticmethod
    def forward(ctx, ys: torch.Tensor, t: torch.Tensor, problem: _Problem) -> torch.Tensor:
        ctx.problem = problem
        ctx.save_for_backward(ys, t)
        return ys.view_as(ys)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor):
        ys, t = ctx.saved_tensors
        grad_t = torch.zeros_like(t)
        for i in range(1, ys.shape[0]):
            f = ctx.problem.flat_field(t[i], ys[i].reshape(-1))
            grad_t[i] = (f.to(torch.float64) * grad_ys[i].reshape(-1).to(torch.float64)).sum()
        return grad_ys, grad_t, None


def output_time_gradients(p: _Problem, y_flat: torch.Tensor, solve: Callable[[torch.Tensor], torch.Tensor]):
    """Wrap a differentiable solve so gradients reach ``t`` (when it requires grad).

    The gradients w.r.t. the times are those of the exact flow: dL/dt_i = f(t_i, y_i) . g_i for the output
    times and dL/dt_0 = -f(t_0, y_0) . (dL/dy_0 - g_0); each costs one evaluation of f in the backward pass.
    """
    if not (p.t.requires_grad and torch.is_grad_enabled()):
        return solve(y_flat)
    ys = solve(_InitialTimeLink.apply(y_flat, p.t, p))
    ys = _OutputTimeLink.apply(ys, p.t, p)
    # Row 0 is y0 itself and does not move with t0.
    return torch.cat([y_flat.unsqueeze(0), ys[1:]], 0)


class _CheckpointSolve(torch.autograd.Function):
    """Forward without a graph, recording accepted steps; backward replays them one at a time (C++)."""

    @staticmethod
    def forward(ctx, y_flat: torch.Tensor, problem: _Problem, *params: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            res = _run(problem, y_flat.detach(), "record")
        return keep_tape(ctx, res, params, problem=problem)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor):
        grad_y0, grad_params = replay_joint(
            ctx, grad_ys, lambda field, tape, g, params, shape: _C.rk_checkpoint_backward(field, tape, g, params,
                                                                                         shape, True))
        return (grad_y0, None, *grad_params)


def _gradient_params(func: Callable, gradient_params: Optional[Sequence[torch.Tensor]], who: str,
                     arg: str) -> Tuple[torch.Tensor, ...]:
    if gradient_params is None:
        if not isinstance(func, torch.nn.Module):
            raise ValueError(
                f"{who}: func must be an nn.Module so its parameters can be found, or pass them as `{arg}` "
                f"(`{arg}=()` if it has none)"
            )
        gradient_params = list(func.parameters())
    params = tuple(gradient_params)
    for i, q in enumerate(params):
        if not isinstance(q, torch.Tensor):
            raise TypeError(f"`{arg}` must hold tensors, element {i} is {type(q).__name__}")
    return tuple(q for q in params if q.requires_grad)


# Opaque to torch.compile: a compiled caller graph-breaks once at the call and the solver runs eagerly (its
# C++ loop and Python callbacks cannot be traced); a vector field the user compiled stays compiled inside.
@torch.compiler.disable
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
    gradient: str = "direct",
    gradient_params: Optional[Sequence[torch.Tensor]] = None,
    progress: bool = False,
    reversible_coupling: float = DEFAULT_COUPLING,
) -> TensorOrTuple:
    """Integrate dy/dt = func(t, y) from y(t[0]) = y0 and return y at every time in ``t``.

    A drop-in replacement for ``torchdiffeq.odeint``. Adaptive methods: the whole state is one system with
    one step size (joint mode), the step-size controller, initial step and error norm are torchdiffeq's, so
    they take torchdiffeq's steps; output times are interpolated, not stepped to. Fixed-grid methods take one
    step per interval of torchdiffeq's grid and interpolate the outputs as it does.

    Args:
        func: callable ``func(t, y)`` returning dy/dt with y's shape and dtype; ``t`` is a 0-dim tensor
            in y's dtype. With a tuple ``y0``, ``y`` is a tuple and ``func`` returns a tuple.
        y0: float32/float64 tensor of any shape (0-dim included), or a tuple of such tensors on one device.
        t: 1-D floating tensor of output times, strictly increasing or strictly decreasing; ``t[0]`` is
            the initial time.
        rtol, atol: relative and absolute tolerances (numbers >= 0, or one per tuple element).
        method: adaptive: 'dopri5' (default), 'tsit5', 'bosh3', 'fehlberg2', 'adaptive_heun', 'dopri8';
            fixed-grid: 'euler', 'midpoint', 'heun2', 'heun3', 'rk4' (torchdiffeq's 3/8 rule), and the multistep
            'explicit_adams', 'implicit_adams', 'fixed_adams' (options max_order <= 12, max_iters; not with
            gradient='checkpoint').
        options: fixed-grid methods: step_size or grid_constructor (``grid_constructor(func, y0, t)`` -> the
            grid, from t[0] to t[-1]; default: t itself), interp ('linear' (default) or 'cubic': one more
            evaluation of func per output time), perturb (bool). Adaptive methods: a dict with any of first_step, min_step, max_step, safety (0.9), ifactor (10),
            dfactor (0.2), max_num_steps (attempts allowed between two outputs), step_t, jump_t
            (times to step onto; after a jump_t time f is re-evaluated), dtype (time dtype: float64 only),
            norm (callable on the scaled error; the default is the RMS norm, for tuples the max of the
            per-element RMS norms).
        event_fn: ``event_fn(t, y)`` -> a tensor: solve from ``t[0]`` (``t`` then holds 2 times; ``t[1]`` only
            sets the direction) until the first time any component of event_fn changes sign from its sign at
            t0 (or reaches 0), located by bisection on the dense output to float64 resolution; returns
            ``(event_t, solution)`` with solution ``[2, *y0.shape]`` (y0 and the state at the event), as
            torchdiffeq. The state at the event is differentiable with the event time held fixed; use
            :func:`fastdiffeq.odeint_event` for a differentiable event time. With gradients the solve runs
            twice (once to find the event, once to the event time in the chosen gradient mode).
        gradient: how gradients are computed when y0, t or the parameters require grad:
            'direct' (default) back-propagates through the solver's operations (memory grows with the
            number of steps); 'checkpoint' records (t, h, y) of the accepted steps and replays each step
            under autograd in the backward pass — the same exact gradients of the discrete solve, with one
            step's graph in memory at a time. For constant memory use :func:`odeint_adjoint`. Step sizes
            are constants of the solve in both modes (they are not differentiated).
            'reversible' (McCallum & Foster 2024) solves with the method made algebraically reversible (a
            coupled pair (y, z), see ``reversible_coupling``): the backward pass rebuilds each step's states
            exactly from the final pair instead of storing them, so memory does not grow with the number of
            steps and the gradients are exact for that (reversible) discrete solve. It changes the forward
            solve: each step costs two base steps, an adaptive step's error is the larger of the two base
            steps' estimates, and outputs are cubic Hermite interpolants (from slopes the steps compute
            anyway). Rounding in the rebuilt states grows like (1/coupling)^steps: keep the coupling close
            to 1. Not with event_fn, step_t / jump_t, a user norm, step callbacks, progress or perturb.
        gradient_params: with gradient='checkpoint' or 'reversible', the tensors to differentiate inside ``func``
            (default: ``func.parameters()``; required when ``func`` is not an nn.Module).
        progress: show a tqdm bar of integration time while the solve runs (updated at most every 0.1 s;
            needs tqdm). Off (default), it costs nothing.
        reversible_coupling: with gradient='reversible', the coupling parameter lambda in (0, 1] of
            y_{n+1} = lambda y_n + (1 - lambda) z_n + Psi_h(t_n, z_n) (default 0.999, as in the paper's code).

    Returns:
        A tensor ``[len(t), *y0.shape]`` (a tuple of them for tuple ``y0``). The counters of the solve
        are available afterwards from :func:`fastdiffeq.last_stats`.

    Raises:
        TypeError / ValueError: bad arguments (named in the message), or ``func`` returning the wrong
            type, shape, dtype or device.
        ImportError: progress=True without tqdm installed.
        MaxStepsError, StepSizeUnderflowError, NonFiniteStateError: the solve could not finish
            (subclasses of :class:`fastdiffeq.SolverError`, carrying ``t`` and ``stats``).

    Example:
        >>> import torch, fastdiffeq
        >>> A = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
        >>> ys = fastdiffeq.odeint(lambda t, y: y @ A.T, torch.tensor([1.0, 0.0]), torch.linspace(0, 3, 4))
        >>> ys.shape
        torch.Size([4, 2])
    """
    if gradient not in ("direct", "checkpoint", "reversible"):
        raise ValueError(f"`gradient` must be 'direct', 'checkpoint' or 'reversible', got {gradient!r}")
    if gradient == "reversible":
        reversible_coupling = check_coupling(reversible_coupling)
        if event_fn is not None:
            raise ValueError("event_fn is not supported with gradient='reversible' yet")
    if event_fn is not None:
        check_event_method(method, func)
        from ._events import fixed_grid_event, odeint_until_event
        if method in FIXED_GRID_METHODS:
            return fixed_grid_event(func, y0, t, rtol=rtol, atol=atol, method=method, options=options,
                                    event_fn=event_fn, progress=progress)
        return odeint_until_event(
            func, y0, t, rtol=rtol, atol=atol, method=method, options=options, event_fn=event_fn, progress=progress,
            solve_to=lambda t_pair: odeint(func, y0, t_pair, rtol=rtol, atol=atol, method=method, options=options,
                                           gradient=gradient, gradient_params=gradient_params, progress=progress),
            who="odeint")
    p = _prepare(func, y0, t, rtol, atol, method, options, event_fn, progress)
    y_flat = p.flat_y0()
    if p.scipy is not None:  # as torchdiffeq's: the result carries no gradient (a backward() through it raises)
        if gradient == "reversible":
            raise ValueError("gradient='reversible' needs a Runge-Kutta method, not 'scipy_solver'")
        return p.unflatten(solve_scipy(p))
    if gradient == "reversible":
        needs = _needs_grad(func, p.parts, t)
        params = _gradient_params(func, gradient_params, "fastdiffeq.odeint(gradient='reversible')",
                                  "gradient_params") if needs else ()
        return p.unflatten(solve_reversible(p, y_flat, params, reversible_coupling, needs, output_time_gradients,
                                            _raise_status))
    if p.fixed is not None:
        if not _needs_grad(func, p.parts, t):
            mode, params = None, ()
        else:
            mode = gradient
            params = () if gradient == "direct" else _gradient_params(
                func, gradient_params, "fastdiffeq.odeint(gradient='checkpoint')", "gradient_params")
        return p.unflatten(solve_fixed(p, y_flat, mode, params, output_time_gradients))
    if not _needs_grad(func, p.parts, t):
        with torch.no_grad():
            return p.unflatten(_run(p, y_flat.detach(), "masked")["ys"])
    if gradient == "direct":
        ys = output_time_gradients(p, y_flat, lambda y: _run(p, y, "graph")["ys"])
    else:
        params = _gradient_params(func, gradient_params, "fastdiffeq.odeint(gradient='checkpoint')",
                                  "gradient_params")
        ys = output_time_gradients(p, y_flat, lambda y: _CheckpointSolve.apply(y, p, *params))
    return p.unflatten(ys)


def check_event_method(method: Any, func: Any, who: str = "odeint") -> None:
    """event_fn needs an adaptive method (the dense output locates the event) or, in odeint, a fixed-grid one
    (fastdiffeq._fixed_events); no step callbacks."""
    defined = [n for n in CALLBACK_NAMES if callable(getattr(func, n, None))]
    if defined:
        raise ValueError(f"func defines {defined}: step callbacks are not supported with event_fn yet")
    if method == SCIPY_METHOD or (method in FIXED_GRID_METHODS and who != "odeint"):
        kind = "fixed-grid method" if method in FIXED_GRID_METHODS else "method"
        raise ValueError(f"event_fn is not supported with the {kind} {method!r} in {who}; use an adaptive method "
                         f"({', '.join(ADAPTIVE_METHODS)})")


def _raise_status(status: int, t_final: float, stats: SolveStats, opts: Dict[str, Any], who: str) -> None:
    if status == Status.MAX_STEPS:
        msg = (f"max_num_steps={opts['max_num_steps']} step attempts were made at t={t_final:.6g} without reaching "
               f"the next output time ({stats.n_accepted} accepted, {stats.n_rejected} rejected in total); "
               "raise options['max_num_steps'] or loosen rtol/atol")
    elif status == Status.STEP_UNDERFLOW:
        msg = (f"step size underflow at t={t_final:.17g}: the controller asked for a step too small to advance "
               "time in float64. The problem may be stiff or have a singularity there; loosen rtol/atol or set "
               "options['min_step']")
    elif status == Status.NON_FINITE:
        msg = (f"func returned NaN or inf at t={t_final:.6g} and kept doing so after the step size was cut "
               "repeatedly: the solution may blow up there")
    else:
        msg = f"solver stopped at t={t_final:.6g} with status {status_name(status)}"
    raise _STATUS_ERRORS.get(status, SolverError)(f"fastdiffeq.{who}: {msg}", t=t_final, stats=stats)
