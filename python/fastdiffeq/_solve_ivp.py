"""``solve_ivp``: a batch of independent initial value problems, each sample with its own step size.

Each sample of ``y0 [B, ...]`` is its own problem: its own output times (``t_eval [B, T]``, forward or
backward), step size, error norm, accept/reject and status. Nothing couples the samples, so a sample's
trajectory is the same alone or in any batch, and a sample that fails is marked (``on_failure='mark'``)
without disturbing the others. The forward solve is the fused masked loop (``_C.rk_solve``, no host
synchronisation inside a step); gradients come from the per-sample C++ loops (csrc/solver/rk_per_sample.h):
direct backprop through a differentiable per-sample loop, per-sample checkpoint replay, or the per-sample
reverse-time adjoint with one parameter-sized accumulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.autograd.function import once_differentiable

from . import _C
from ._errors import SolverError
from ._native import field_for, native_field
from ._odeint import _STATUS_ERRORS, ADAPTIVE_METHODS, FIXED_GRID_METHODS, _parse_options, gc_paused, solver_options
from ._progress import ProgressBar, check_progress, progress_bar
from ._reversible import DEFAULT_COUPLING, check_coupling, solve_ivp_reversible
from ._stats import SolveStats, _record, _record_backward
from ._tape import keep_tape, replay_per_sample
from ._status import Counter, Status, status_name
from ._validate import check_func, check_state_tensor, check_tolerance

__all__ = ["solve_ivp", "Solution"]

_GRADIENTS = ("direct", "adjoint", "checkpoint", "reversible")
_FAILURES = ("raise", "mark")


@dataclass
class Solution:
    """The result of :func:`solve_ivp`.

    Attributes:
        ys: ``[B, T, *state]`` the solution of each sample at each of its output times; the rows after a
            failed sample's failure are NaN (``on_failure='mark'``).
        t_eval: float64 ``[B, T]``, each sample's output times.
        status: int32 ``[B]``, a :class:`fastdiffeq.Status` per sample (``Status.SUCCESS`` when it reached
            its last output time).
        n_steps, n_accepted, n_rejected: int64 ``[B]``, each sample's step attempts, accepted and rejected.
        nfe: evaluations of ``func`` (each evaluates the whole batch).
        t_events, y_events: with ``event_fn``, each sample's event time (float64 ``[B]``, NaN when its event
            did not occur before its last output time) and state there (``[B, *state]``).
    """

    ys: torch.Tensor
    t_eval: torch.Tensor
    status: torch.Tensor
    n_steps: torch.Tensor
    n_accepted: torch.Tensor
    n_rejected: torch.Tensor
    nfe: int
    t_events: Optional[torch.Tensor] = None
    y_events: Optional[torch.Tensor] = None

    @property
    def success(self) -> torch.Tensor:
        """bool ``[B]``: which samples reached their last output time."""
        return self.status == int(Status.SUCCESS)

    def __repr__(self) -> str:
        ok = int(self.success.sum())
        return (f"Solution(ys={tuple(self.ys.shape)}, samples={self.status.numel()}, succeeded={ok}, "
                f"steps per sample mean={self.n_steps.double().mean().item():.1f} max={int(self.n_steps.max())}, "
                f"nfe={self.nfe}" + (", with events" if self.t_events is not None else "") + ")")


def _check_t_eval(t_eval: Any, B: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """t_eval as float64 [B, T] on the CPU, and each sample's direction (+1 / -1, float64 [B])."""
    if not isinstance(t_eval, torch.Tensor):
        raise TypeError(f"`t_eval` must be a torch.Tensor of times ([T] or [B, T]), got {type(t_eval).__name__}")
    if not t_eval.is_floating_point():
        raise TypeError(f"`t_eval` must be a floating-point tensor, got {t_eval.dtype}")
    if t_eval.device.type not in ("cpu", "cuda"):
        raise ValueError(f"`t_eval` must be on a CPU or CUDA device, got {t_eval.device}")
    if t_eval.dim() not in (1, 2):
        raise ValueError(f"`t_eval` must be [T] or [B, T], got shape {tuple(t_eval.shape)}")
    if t_eval.requires_grad and torch.is_grad_enabled():
        raise ValueError("`t_eval` requires grad: solve_ivp does not differentiate the output times (detach it)")
    t64 = t_eval.detach().to(device="cpu", dtype=torch.float64)
    if t64.dim() == 1:
        t64 = t64.unsqueeze(0).expand(B, -1)
    elif t64.shape[0] != B:
        raise ValueError(f"`t_eval` has {t64.shape[0]} rows but y0 has {B} samples (t_eval must be [T] or [B, T])")
    if t64.shape[1] == 0:
        raise ValueError("`t_eval` must hold at least one time per sample")
    if not bool(torch.isfinite(t64).all()):
        raise ValueError("`t_eval` contains NaN or inf")
    direction = torch.ones(B, dtype=torch.float64)
    if t64.shape[1] > 1:
        d = t64[:, 1:] - t64[:, :-1]
        up, down = (d > 0).all(1), (d < 0).all(1)
        bad = ~(up | down)
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            raise ValueError(f"`t_eval` must be strictly increasing or strictly decreasing in each row; rows {rows[:10]} "
                             "are not")
        direction = torch.where(down, -1.0, 1.0).to(torch.float64)
    return t64.contiguous(), direction


@dataclass
class _Batch:
    """A validated solve_ivp call in the solver's layout: y0 as [B, D], one direction for all rows."""

    func: Callable
    field: Callable            # what the C++ loops call: field(t [B], y [B, *state])
    method: str
    rtol: float
    atol: float
    opts: Dict[str, Any]
    y0: torch.Tensor           # the caller's y0 [B, *state]
    state_shape: Tuple[int, ...]
    t_eval: torch.Tensor       # float64 [B, T] on the CPU (the caller's times)
    t_solve: torch.Tensor      # float64 [B, T] as the loops integrate it (mixed directions flipped to forward)
    user_norm: Optional[Callable]
    progress: bool
    flip: torch.Tensor         # float64 [B]: -1 for the rows solved in s = -t (mixed directions), else +1
    native: bool = False       # field is func's native (C++) description (fastdiffeq._native)

    @property
    def field_path(self) -> str:
        return "native" if self.native else "python"

    @property
    def B(self) -> int:
        return self.y0.shape[0]

    @property
    def T(self) -> int:
        return self.t_eval.shape[1]

    def t_out(self) -> torch.Tensor:
        t = self.t_solve
        if bool((t == t[:1]).all()):
            t = t[0]  # one shared grid [T]
        return t if self.y0.device.type == "cpu" else t.to(self.y0.device)

    def options(self, record_dense: bool = False) -> Any:
        return solver_options(self.method, [self.rtol], [self.atol], [self.D], self.opts, [], [], self.y0.device,
                              record_dense=record_dense)

    @property
    def D(self) -> int:
        return self.y0[0].numel()

    def flat_y0(self) -> torch.Tensor:
        return self.y0.reshape(self.B, -1).contiguous()

    def user_shape(self) -> List[int]:
        return [self.B, *self.state_shape]

    def unflatten(self, ys_tbd: torch.Tensor) -> torch.Tensor:
        """[T, B, D] from the loops -> [B, T, *state]."""
        return ys_tbd.transpose(0, 1).reshape(self.B, self.T, *self.state_shape)


def _prepare(func: Callable, y0: Any, t_eval: Any, method: str, rtol: Any, atol: Any,
             options: Optional[Dict[str, Any]], progress: bool) -> _Batch:
    check_func(func)
    check_progress(progress)
    if not isinstance(method, str) or method not in ADAPTIVE_METHODS:
        extra = " (the fixed-grid methods are odeint's only)" if method in FIXED_GRID_METHODS else ""
        raise ValueError(f"`method` must be one of {list(ADAPTIVE_METHODS)}{extra}, got {method!r}")
    y0 = check_state_tensor(y0, "y0")
    if y0.dim() < 1 or y0.shape[0] == 0:
        raise ValueError(f"`y0` must be [B, ...] with at least one sample, got shape {tuple(y0.shape)}")
    B = y0.shape[0]
    t_eval64, direction = _check_t_eval(t_eval, B)
    (rtol_v,) = check_tolerance(rtol, "rtol", 1)
    (atol_v,) = check_tolerance(atol, "atol", 1)
    if rtol_v == 0 and atol_v == 0:
        raise ValueError("`rtol` and `atol` cannot both be 0: no error would ever be accepted")
    opts = _parse_options(options, 1)
    if opts["step_t"] or opts["jump_t"]:
        raise ValueError("options['step_t'] and options['jump_t'] are not supported by solve_ivp (use odeint)")
    state_shape = tuple(y0.shape[1:])

    native = native_field(func, y0)
    field = func if native is None else native
    t_solve = t_eval64
    flip = torch.ones(B, dtype=torch.float64)
    if bool((direction != direction[0]).any()):
        # Mixed directions: a backward sample is solved forward in s = -t with -func(-s, y) (torchdiffeq's
        # rule for decreasing t, per sample), so every row of the loop runs the same way.
        sign64 = direction.to(y0.device)
        t_solve = t_eval64 * direction.unsqueeze(1)
        flip = direction
        view = (B,) + (1,) * len(state_shape)

        def flipped_field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            sign = sign64.to(y.dtype)
            out = func(t * sign, y)
            # The checks the C++ side makes of what func returns, before the sign could broadcast it.
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"fastdiffeq: func must return a torch.Tensor, got {type(out).__name__}")
            if out.shape != y.shape:
                raise ValueError(f"fastdiffeq: func returned shape {list(out.shape)} but the state has shape "
                                 f"{list(y.shape)}")
            if out.dtype != y.dtype:
                raise TypeError(f"fastdiffeq: func returned dtype {out.dtype} but the state is {y.dtype}")
            if out.device != y.device:
                raise ValueError(f"fastdiffeq: func returned a tensor on {out.device} but the state is on {y.device}")
            return out * sign.view(view)

        field = flipped_field  # (a native field is autonomous, but its sign flips: it runs in Python here)

    return _Batch(func=func, field=field, method=method, rtol=rtol_v, atol=atol_v, opts=opts, y0=y0,
                  state_shape=state_shape, t_eval=t_eval64, t_solve=t_solve.contiguous(), user_norm=opts["norm"],
                  progress=progress, flip=flip, native=native is not None and field is native)


def _solve_params(func: Callable, params: Optional[Sequence[torch.Tensor]], gradient: str) -> Tuple[torch.Tensor, ...]:
    if params is None:
        if isinstance(func, torch.nn.Module):
            params = list(func.parameters())
        elif gradient == "direct":
            return ()
        else:
            raise ValueError(
                f"solve_ivp(gradient='{gradient}'): func is not an nn.Module, so pass the tensors it differentiates "
                "as `params=` (`params=()` if none)"
            )
    out = tuple(params)
    for i, q in enumerate(out):
        if not isinstance(q, torch.Tensor):
            raise TypeError(f"`params` must hold tensors, element {i} is {type(q).__name__}")
    return tuple(q for q in out if q.requires_grad)


def _run_forward(b: _Batch, y_flat: torch.Tensor, mode: str, record_dense: bool = False) -> Dict[str, Any]:
    opts = b.options(record_dense)
    t_bar = b.t_solve[0]
    with progress_bar(b.progress, t_bar, "solve_ivp") as bar:
        with gc_paused():
            if mode == "masked":
                return _C.rk_solve(b.field, y_flat, b.t_out(), opts, norm=b.user_norm, user_shape=b.user_shape(),
                                   joint=False, mode="masked", progress=bar, progress_interval=ProgressBar.interval)
            return _C.rk_solve_per_sample(b.field, y_flat, b.t_out(), opts, norm=b.user_norm,
                                          user_shape=b.user_shape(), mode=mode, progress=bar,
                                          progress_interval=ProgressBar.interval)


def _failure_message(status: torch.Tensor, t_reached: torch.Tensor, who: str) -> Tuple[str, type]:
    failed = (status != int(Status.SUCCESS)).nonzero().flatten().tolist()
    kinds = sorted({int(status[i]) for i in failed})
    parts = [f"sample {i}: {status_name(int(status[i]))} at t={float(t_reached[i]):.6g}" for i in failed[:8]]
    more = f" (and {len(failed) - 8} more)" if len(failed) > 8 else ""
    msg = (f"fastdiffeq.{who}: {len(failed)} of {status.numel()} samples failed: " + "; ".join(parts) + more +
           ". Pass on_failure='mark' to get the other samples' results (failed samples are NaN after their "
           "failure); loosen rtol/atol or raise options['max_num_steps'] for stiff samples")
    cls = _STATUS_ERRORS.get(kinds[0], SolverError) if len(kinds) == 1 else SolverError
    return msg, cls


class _AdjointSolve(torch.autograd.Function):
    """Forward: the masked per-sample loop, keeping only the outputs. Backward: the per-sample adjoint."""

    @staticmethod
    def forward(ctx, y_flat: torch.Tensor, batch: _Batch, res_box: list, interpolated: bool,
                *params: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if interpolated:  # the per-sample loop keeps every accepted step's dense output
                res = _run_forward(batch, y_flat.detach(), "record", record_dense=True)
            else:
                res = _run_forward(batch, y_flat.detach(), "masked")
        res_box.append(res)
        ctx.batch = batch
        ctx.status = res["status"]
        ctx.tape = res.get("tape")
        ctx.save_for_backward(res["ys"], *params)
        return res["ys"]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor):
        b: _Batch = ctx.batch
        ys, *params = ctx.saved_tensors
        active = ctx.status == int(Status.SUCCESS)
        grad_ys = torch.where(active.to(grad_ys.device).view(1, -1, 1), grad_ys, 0.0).contiguous()
        ys = torch.where(active.to(ys.device).view(1, -1, 1), ys, 0.0).contiguous()
        opts = b.options()
        with progress_bar(b.progress, b.t_solve[0], "solve_ivp (adjoint)", reverse=True) as bar:
            with gc_paused():
                field, path = field_for(b.field, b.func, b.native, params)
                res = _C.rk_adjoint_per_sample(field, list(params), b.t_out(), None if ctx.tape else ys, grad_ys,
                                               active.cpu(), opts, user_shape=b.user_shape(), tape=ctx.tape,
                                               progress=bar, progress_interval=ProgressBar.interval)
            status = res["status"]
            counters = res["counters"]
            _record_backward(SolveStats(
                method=b.method, nfe=int(res["nfe"]), n_accepted=int(counters[:, Counter.ACCEPTED].sum()),
                n_rejected=int(counters[:, Counter.REJECTED].sum()), t_final=float(res["t"].min()),
                status=status_name(int(status.max()) if bool((status != int(Status.SUCCESS)).any())
                                   else int(Status.SUCCESS)), field=path))
            if bool((status != int(Status.SUCCESS)).any()):
                msg, cls = _failure_message(status, res["t"], "solve_ivp (adjoint backward)")
                raise cls(msg, t=float(res["t"].min()))  # (in the solver's time)
        return (res["grad_y0"], None, None, None, *res["grad_params"])


class _CheckpointSolve(torch.autograd.Function):
    """Forward: the per-sample loop recording its iterations; backward: their replay (C++)."""

    @staticmethod
    def forward(ctx, y_flat: torch.Tensor, batch: _Batch, res_box: list, *params: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            res = _run_forward(batch, y_flat.detach(), "record")
        res_box.append(res)
        return keep_tape(ctx, res, params, batch=batch)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor):
        grad_y0, grad_params = replay_per_sample(ctx, grad_ys, _C.rk_checkpoint_backward_per_sample,
                                                 ctx.tape.n_steps)
        return (grad_y0, None, None, *grad_params)


def _needs_grad(y0: torch.Tensor, params: Tuple[torch.Tensor, ...], func: Callable) -> bool:
    if not torch.is_grad_enabled():
        return False
    if y0.requires_grad or params:
        return True
    return not isinstance(func, torch.nn.Module)  # a closure may capture tensors that require grad


# Opaque to torch.compile, as odeint (see _odeint.py).
@torch.compiler.disable
def solve_ivp(
    func: Callable,
    y0: torch.Tensor,
    t_eval: torch.Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    gradient: str = "direct",
    options: Optional[Dict[str, Any]] = None,
    on_failure: str = "raise",
    event_fn: Optional[Callable] = None,
    params: Optional[Sequence[torch.Tensor]] = None,
    adjoint_options: Optional[Dict[str, Any]] = None,
    progress: bool = False,
    reversible_coupling: float = DEFAULT_COUPLING,
) -> Solution:
    """Solve a batch of independent problems dy_b/dt = func(t, y)_b, each sample with its own step size.

    Unlike :func:`odeint` (one step size for the whole state, torchdiffeq's semantics), every sample has its
    own time, step size, error norm (RMS over the sample's elements), accept/reject decision and status:
    a hard sample no longer slows the others down or changes their results, and a sample's trajectory is the
    same whatever else is in the batch.

    Args:
        func: ``func(t, y)`` with ``t`` a ``[B]`` tensor (each sample's time, in y's dtype) and ``y``
            ``[B, ...]``; returns dy/dt with y's shape and dtype. Row b of the output must depend on row b of
            ``y`` (and ``t[b]``) only.
        y0: ``[B, ...]`` float32/float64 tensor, one initial state per sample.
        t_eval: ``[T]`` output times shared by all samples, or ``[B, T]`` (each sample its own); each row is
            strictly increasing or strictly decreasing (rows may run in different directions); column 0 holds
            the initial times.
        method: 'dopri5' (default), 'tsit5' or 'bosh3'.
        rtol, atol: the tolerances (numbers >= 0, not both 0).
        gradient: when y0 or the parameters require grad: 'direct' (backprop through the per-sample loop;
            memory grows with the steps), 'checkpoint' (per-sample replay: the same gradients, one iteration's
            graph at a time) or 'adjoint' (the per-sample reverse-time adjoint: memory independent of the
            steps, gradients of the continuous problem within the tolerances) or 'reversible' (each sample
            solved by the method made algebraically reversible, as ``odeint(gradient='reversible')``, with its
            own steps: memory independent of the steps, exact gradients of that solve; not with event_fn, a
            user norm or progress). Step sizes are constants.
        options: first_step, min_step, max_step, safety, ifactor, dfactor, max_num_steps (attempts per output
            interval, per sample), norm (``norm(x)`` with x ``[B, ...]`` returning each sample's norm ``[B]``).
        on_failure: 'raise' (default) raises a :class:`SolverError` naming the failed samples; 'mark' returns
            the solution with each sample's ``status``, the failed samples NaN after their failure. Failed
            samples contribute no gradient.
        event_fn: ``event_fn(t, y) -> [B]``: a terminal event per sample; a sample stops where its value
            changes sign (``Solution.t_events`` / ``y_events``).
        params: for 'adjoint', 'checkpoint' and 'reversible', the tensors ``func`` uses that are differentiated (default:
            ``func.parameters()``; required when func is not an nn.Module).
        adjoint_options: for gradient='adjoint': ``trajectory='resolve'`` (default: y is re-solved backwards
            with the adjoint, re-anchored at every output time; memory independent of the steps) or
            ``'interpolated'`` (y is read from the forward solve's dense output: 3 x state per forward step
            and sample; stable where re-solving y backwards is not — contracting dynamics, limit cycles —
            and usually fewer backward steps).
        progress: a tqdm bar of integration time (the slowest sample).
        reversible_coupling: with gradient='reversible', the coupling parameter in (0, 1] (default 0.999).

    Returns:
        A :class:`Solution`: ``ys [B, T, ...]``, ``status [B]``, ``n_steps / n_accepted / n_rejected [B]``,
        ``nfe``.

    Example:
        >>> mu = torch.linspace(1, 25, 256, dtype=torch.float64)
        >>> def vdp(t, y):
        ...     x, v = y.unbind(-1)
        ...     return torch.stack([v, mu * (1 - x**2) * v - x], -1)
        >>> sol = fastdiffeq.solve_ivp(vdp, torch.tensor([2.0, 0.0]).repeat(256, 1).double(),
        ...                            torch.linspace(0, 10, 200), rtol=1e-5, atol=1e-5)
        >>> sol.ys.shape, sol.n_steps[0] < sol.n_steps[-1]
        (torch.Size([256, 200, 2]), tensor(True))
    """
    if gradient not in _GRADIENTS:
        raise ValueError(f"`gradient` must be one of {list(_GRADIENTS)}, got {gradient!r}")
    if on_failure not in _FAILURES:
        raise ValueError(f"`on_failure` must be one of {list(_FAILURES)}, got {on_failure!r}")
    if adjoint_options is None:
        adjoint_options = {}
    if not isinstance(adjoint_options, dict):
        raise TypeError(f"`adjoint_options` must be a dict or None, got {type(adjoint_options).__name__}")
    unknown = sorted(set(adjoint_options) - {"trajectory"})
    if unknown:
        raise ValueError(f"`adjoint_options` has unknown key(s) {unknown}; known: ['trajectory']")
    trajectory = adjoint_options.get("trajectory", "resolve")
    if trajectory not in ("resolve", "interpolated"):
        raise ValueError(f"adjoint_options['trajectory'] must be 'resolve' or 'interpolated', got {trajectory!r}")
    if gradient == "reversible":
        reversible_coupling = check_coupling(reversible_coupling)
        if event_fn is not None:
            raise ValueError("solve_ivp(gradient='reversible') does not support event_fn yet")
    b = _prepare(func, y0, t_eval, method, rtol, atol, options, progress)
    if event_fn is not None:
        from ._events import solve_ivp_events
        return solve_ivp_events(b, event_fn, gradient, on_failure, params)
    y_flat = b.flat_y0()
    grad_params = _solve_params(func, params, gradient) if torch.is_grad_enabled() else ()
    box: list = []
    if gradient == "reversible":
        ys, res = solve_ivp_reversible(b, y_flat, grad_params, reversible_coupling,
                                       _needs_grad(y0, grad_params, func))
        return _solution(b, res, b.unflatten(ys), on_failure, "solve_ivp")
    if not _needs_grad(y0, grad_params, func):
        with torch.no_grad():
            res = _run_forward(b, y_flat.detach(), "masked")
        ys = res["ys"]
    elif gradient == "direct":
        res = _run_forward(b, y_flat, "graph")
        ys = res["ys"]
        failed = (res["status"] != int(Status.SUCCESS)).to(ys.device)
        if bool(failed.any()):
            ys = torch.where(failed.view(1, -1, 1), ys.detach(), ys)  # failed samples: no gradient
    elif gradient == "checkpoint":
        ys = _CheckpointSolve.apply(y_flat, b, box, *grad_params)
        res = box[0]
    else:
        ys = _AdjointSolve.apply(y_flat, b, box, trajectory == "interpolated", *grad_params)
        res = box[0]
    return _solution(b, res, b.unflatten(ys), on_failure, "solve_ivp")


def _solution(b: _Batch, res: Dict[str, Any], ys: torch.Tensor, on_failure: str, who: str) -> Solution:
    status = res["status"].cpu()
    counters = res["counters"].cpu()
    n_acc = counters[:, Counter.ACCEPTED].clone()
    n_rej = counters[:, Counter.REJECTED].clone()
    failed = status != int(Status.SUCCESS)
    t_reached = res["t"].cpu() * b.flip  # in the caller's time
    _record(SolveStats(method=b.method, nfe=int(res["nfe"]), n_accepted=int(n_acc.sum()),
                       n_rejected=int(n_rej.sum()), t_final=float(t_reached[0]),
                       status=status_name(int(status[failed][0]) if bool(failed.any()) else int(Status.SUCCESS)),
                       field=b.field_path))
    if bool(failed.any()) and on_failure == "raise":
        msg, cls = _failure_message(status, t_reached, who)
        raise cls(msg, t=float(t_reached[failed][0]))
    return Solution(ys=ys, t_eval=b.t_eval, status=status, n_steps=n_acc + n_rej, n_accepted=n_acc,
                    n_rejected=n_rej, nfe=int(res["nfe"]))

