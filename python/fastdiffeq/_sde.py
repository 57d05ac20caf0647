"""sdeint: torchsde 0.2.6's solver, its semantics and defaults (REFERENCE §3), with a leaner loop.

What is the same as torchsde: the contract checks, the method formulas, the step grid (t ← min(t + dt, t_end),
not landing on intermediate output times; outputs linearly interpolated), adaptive step doubling with its PI
controller, the order in which the Brownian motion is queried (so the same torchsde BrownianInterval gives the
same path), logqp, extra / extra_solver_state, names=.

What is leaner: the Brownian increments of a fixed grid are drawn before the steps, in blocks (one vectorised
call for a fastdiffeq BrownianInterval; the same sequence of calls for any other bm), each method evaluates each
stage's drift and diffusion once (torchsde's srk evaluates them again per later stage), and the default Brownian
motion is fastdiffeq's BrownianInterval (torchsde's default builds a tree down to its tolerance on the first
query: ~1.5 s for a (1024, 32) motion on [0, 1]).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ._sde_methods import Method, check_method, default_method, select
from ._sde_view import NOISE_TYPES, SDE_TYPES, LogqpSDE, SDEView, rename

_BROWNIAN_BLOCK = 64  # fixed-grid increments drawn per block (memory: block × batch × channels)
MAX_STEPS = 10_000_000  # a fixed grid longer than this is refused (dt is absolute: a long span means many steps)


def sdeint(sde: Any, y0: torch.Tensor, ts: torch.Tensor | Sequence[float], bm: Any = None,
           method: str | None = None, dt: float = 1e-3, adaptive: bool = False, rtol: float = 1e-5,
           atol: float = 1e-4, dt_min: float = 1e-5, options: dict | None = None, names: dict | None = None,
           logqp: bool = False, extra: bool = False, extra_solver_state: tuple | None = None, **unused_kwargs):
    """Solve an SDE (drop-in for ``torchsde.sdeint``): ys of shape (T, B, d).

    Args:
        sde: object with ``noise_type`` ('diagonal' | 'additive' | 'scalar' | 'general'), ``sde_type`` ('ito' |
            'stratonovich'), and ``f(t, y)`` / ``g(t, y)`` (or ``f_and_g``, ``g_prod(t, y, v)``,
            ``f_and_g_prod``; ``h`` for logqp). g is (B, d) for diagonal noise, (B, d, m) otherwise.
        y0: (B, d) initial state.
        ts: increasing output times; ys[0] = y0.
        bm: Brownian motion with torchsde's interface (``bm(ta, tb)`` → (B, m) increment); default a
            ``fastdiffeq.BrownianInterval`` on [ts[0], ts[-1]] (with space-time Lévy area for srk, Davie's for
            log_ode).
        method: euler, milstein, srk, midpoint, heun, euler_heun, log_ode, reversible_heun; default srk (Itô,
            non-general noise), euler (Itô general), midpoint (Stratonovich).
        dt: the step (fixed) or the first step (adaptive). Steps do not land on intermediate ts.
        adaptive, rtol, atol, dt_min: step doubling with a PI controller, as torchsde.
        options: method options (``grad_free`` for milstein).
        names: rename the sde's methods (keys drift, diffusion, prior_drift, diffusion_prod,
            drift_and_diffusion, drift_and_diffusion_prod).
        logqp: also return the KL path increments ∫ ½‖(f − h)/g‖² dt per output interval, (T − 1, B).
        extra: also return the solver's extra state (reversible_heun: (f, g, z)).
        extra_solver_state: start the solver from this extra state.

    Gradients: direct backpropagation through the steps (use ``sdeint_adjoint`` for the stochastic adjoint).
    """
    _warn_unused(unused_kwargs, "sdeint")
    p = prepare(sde, y0, ts, bm, method, dt, adaptive, rtol, atol, dt_min, options, names, logqp)
    if extra_solver_state is None:
        extra_solver_state = init_extra(p.method, p.view, p.ts[0], p.y0)
    ys, extra_state = integrate(p.view, p.method, p.bm, p.y0, p.ts, dt, adaptive, rtol, atol, dt_min, p.options,
                                extra_solver_state)
    return parse_return(p.y0, ys, extra_state, extra, logqp)


@dataclass
class Problem:
    """One solve's pieces after the checks: the SDE view, y0 (with the logqp channel), ts, bm, method, options."""

    view: SDEView
    y0: torch.Tensor
    ts: torch.Tensor
    bm: Any
    method: Method
    options: dict


def prepare(sde, y0, ts, bm, method, dt, adaptive, rtol, atol, dt_min, options, names, logqp) -> Problem:
    """torchsde's contract checks, with ValueErrors naming the argument; returns the solve's pieces."""
    sde = rename(sde, names)
    for attr, allowed in (("noise_type", NOISE_TYPES), ("sde_type", SDE_TYPES)):
        if not hasattr(sde, attr):
            raise ValueError(f"sde does not have the attribute {attr}")
        if getattr(sde, attr) not in allowed:
            raise ValueError(f"sde.{attr}: expected one of {list(allowed)}, got {getattr(sde, attr)!r}")
    if not torch.is_tensor(y0):
        raise ValueError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if y0.dim() != 2:
        raise ValueError(f"y0 must be a 2-dimensional tensor of shape (batch, channels), got shape "
                         f"{tuple(y0.shape)}")
    if not y0.is_floating_point():
        raise ValueError(f"y0 must have a floating-point dtype, got {y0.dtype}")
    if y0.is_meta:
        raise ValueError("y0 must not be a meta tensor: the solve needs values")
    for name, value in (("dt", dt), ("rtol", rtol), ("atol", atol), ("dt_min", dt_min)):
        check_number(value, name)
    if float(dt) <= 0:
        raise ValueError(f"dt must be > 0, got {float(dt)}")
    if adaptive and float(dt_min) <= 0:
        raise ValueError(f"dt_min must be > 0 with adaptive=True, got {float(dt_min)}")
    options = check_method_options(options, "options")

    if logqp:
        sde = LogqpSDE(sde)
        y0 = torch.cat((y0, y0.new_zeros(y0.size(0), 1)), dim=1)
    view = SDEView(sde)
    if method is None:
        method = default_method(view.sde_type, view.noise_type)
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    method_rec = select(method, view.sde_type)

    ts = _check_ts(ts, y0)
    noise = _check_shapes(sde, view, y0, ts, bm)
    if bm is None:
        from ._brownian import BrownianInterval

        levy = {"WU": "space-time", "WA": "davie"}.get(method_rec.brownian, "none")
        bm = BrownianInterval(t0=ts[0], t1=ts[-1], size=(y0.size(0), noise), dtype=y0.dtype, device=y0.device,
                              levy_area_approximation=levy)
    for attr, want in (("dtype", y0.dtype), ("device", y0.device)):
        have = getattr(bm, attr, want)
        if have != want:
            raise ValueError(f"bm has {attr} {have}, but y0 has {want}: the Brownian motion must match the state")
    levy_area = getattr(bm, "levy_area_approximation", "none")
    check_method(method_rec, view, levy_area)
    if view.noise_type == "scalar" and torch.Size(bm.shape[1:]).numel() != 1:
        raise ValueError(f"bm: scalar noise needs a Brownian motion with one channel, got shape {tuple(bm.shape)}")
    if adaptive and method_rec.name == "euler" and view.noise_type != "additive":
        warnings.warn("Numerical solution is not guaranteed to converge to the correct solution when using adaptive "
                      "time-stepping with the Euler--Maruyama method with non-additive noise.")
    return Problem(view, y0, ts, bm, method_rec, options)


def check_method_options(options: Any, name: str) -> dict:
    """A copy of an SDE method's options (None: {}); the methods take only 'grad_free' (milstein)."""
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"{name} must be a dict, got {type(options).__name__}")
    options = {} if options is None else dict(options)
    unknown = sorted(set(options) - {"grad_free"})
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {unknown}; the SDE methods take 'grad_free' (milstein)")
    return options


def check_number(value: Any, name: str) -> float:
    """A finite real number (int, float or a one-element tensor without grad) or a TypeError / ValueError."""
    if torch.is_tensor(value):
        if value.requires_grad:
            raise ValueError(f"{name} must not require gradient")
        if value.numel() != 1 or value.is_meta or value.is_complex():
            raise TypeError(f"{name} must be a real number or a one-element tensor, got shape {tuple(value.shape)}")
        number = float(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def _check_ts(ts, y0: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(ts):
        if not isinstance(ts, (tuple, list)) or not all(isinstance(t, (float, int)) for t in ts):
            raise ValueError("ts must be a 1-D tensor or a list/tuple of floats")
        ts = torch.tensor(ts, dtype=y0.dtype, device=y0.device)
    if ts.requires_grad:
        raise ValueError("ts must not require gradient")
    if ts.dim() != 1 or ts.numel() < 2:
        raise ValueError(f"ts must be 1-D with at least 2 times, got shape {tuple(ts.shape)}")
    if not ts.is_floating_point():
        raise ValueError(f"ts must be floating point, got {ts.dtype}")
    if ts.is_meta:
        raise ValueError("ts must not be a meta tensor")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError("ts must be finite")
    if not bool((ts[1:] > ts[:-1]).all()):
        raise ValueError("ts must be strictly increasing")
    return ts


def _check_shapes(sde, view: SDEView, y0: torch.Tensor, ts: torch.Tensor, bm) -> int:
    """torchsde's consistency checks of f, g, g_prod and bm shapes; returns the number of Brownian channels."""
    batch, state = [y0.size(0)], [y0.size(1)]
    noise: list[int] = []
    if bm is not None:
        shape = getattr(bm, "shape", None)
        if shape is None or len(shape) != 2:
            raise ValueError(f"bm must be of shape (batch, noise_channels), got {shape}")
        batch.append(shape[0])
        noise.append(shape[1])

    def check_2d(name, shape):
        if len(shape) != 2:
            raise ValueError(f"{name} must be of shape (batch, state_channels), but got {tuple(shape)}")
        batch.append(shape[0])
        state.append(shape[1])

    def check_g(name, shape):
        if view.noise_type == "diagonal":
            check_2d(name, shape)
            noise.append(shape[1])
            return
        if len(shape) != 3:
            raise ValueError(f"{name} must be of shape (batch, state_channels, noise_channels), but got "
                             f"{tuple(shape)}")
        batch.append(shape[0])
        state.append(shape[1])
        noise.append(shape[2])

    has_f = has_g = False
    with torch.no_grad():
        if hasattr(sde, "f"):
            has_f = True
            check_2d("Drift", sde.f(ts[0], y0).shape)
        if hasattr(sde, "g"):
            has_g = True
            check_g("Diffusion", sde.g(ts[0], y0).shape)
        if hasattr(sde, "f_and_g"):
            has_f = has_g = True
            f, g = sde.f_and_g(ts[0], y0)
            check_2d("Drift", f.shape)
            check_g("Diffusion", g.shape)
        for name in ("g_prod", "f_and_g_prod"):
            if not hasattr(sde, name):
                continue
            has_g = True
            if not noise:
                raise ValueError("Cannot infer the number of Brownian channels: pass bm explicitly, or define g or "
                                 "f_and_g")
            v = torch.randn(batch[0], noise[0], dtype=y0.dtype, device=y0.device)
            if name == "g_prod":
                check_2d("Diffusion-vector product", sde.g_prod(ts[0], y0, v).shape)
            else:
                has_f = True
                f, gp = sde.f_and_g_prod(ts[0], y0, v)
                check_2d("Drift", f.shape)
                check_2d("Diffusion-vector product", gp.shape)
    if not has_f:
        raise ValueError("sde must define at least one of f, f_and_g or f_and_g_prod")
    if not has_g:
        raise ValueError("sde must define at least one of g, f_and_g, g_prod or f_and_g_prod")
    for what, sizes in (("Batch", batch), ("State", state), ("Noise", noise)):
        if any(s != sizes[0] for s in sizes[1:]):
            raise ValueError(f"{what} sizes not consistent: {sizes} (y0, bm, f, g, g_prod)")
    if view.noise_type == "scalar" and noise[0] != 1:
        raise ValueError(f"Scalar noise must have only one channel; the diffusion has {noise[0]} noise channels")
    return noise[0]


def init_extra(method: Method, view: SDEView, t0: torch.Tensor, y0: torch.Tensor) -> tuple:
    return () if method.init_extra is None else method.init_extra(view, t0, y0)


def fixed_grid(ts: torch.Tensor, dt: float) -> tuple[torch.Tensor, list[float]]:
    """torchsde's step times: t ← min(t + dt, ts[-1]) from ts[0] (in ts's dtype), until ts[-1].

    Built on the host from one copy of ts (IEEE arithmetic: the same values as on ts's device) and returned
    both on ts's device (what f and g receive) and as floats (the loop's control: no device read per step).
    """
    host = ts.detach().cpu()
    t, t_end = host[0], host[-1]
    n_steps = float(t_end - t) / float(dt)
    if not math.isfinite(n_steps) or n_steps > MAX_STEPS:
        count = math.ceil(n_steps) if math.isfinite(n_steps) else n_steps
        raise ValueError(f"dt={float(dt)} makes {count} fixed steps over [{float(t)}, {float(t_end)}] (more than "
                         f"{MAX_STEPS}); dt is absolute, as in torchsde: choose a larger dt")
    grid = [t]
    while t < t_end:
        t_next = torch.minimum(t + dt, t_end)
        if not t_next > t:
            raise ValueError(f"dt={float(dt)} is below the resolution of ts's dtype ({ts.dtype}) at t={float(t)}: "
                             f"the step does not move t")
        t = t_next
        grid.append(t)
    grid_host = torch.stack(grid)
    return grid_host.to(ts.device), grid_host.tolist()


def _brownian_blocks(bm, grid: torch.Tensor, need: str):
    """Yield (W, U, A) per step of a fixed grid, drawn in blocks in the order the steps query them."""
    return_u = need == "WU"
    fast = None if need == "WA" else _grid_sampler(bm)
    for start in range(0, len(grid) - 1, _BROWNIAN_BLOCK):
        stop = min(start + _BROWNIAN_BLOCK, len(grid) - 1)
        if fast is None:
            for i in range(start, stop):
                yield _query(bm, grid[i], grid[i + 1], need)
            continue
        block = fast(grid[start:stop + 1], return_U=return_u)
        ws, us = block if return_u else (block, None)
        for i in range(stop - start):
            yield ws[i], (us[i] if return_u else None), None


def _grid_sampler(bm):
    """bm's vectorised fixed-grid sampler, if it has one (fastdiffeq's Brownian objects; reversed for the adjoint)."""
    from ._brownian import ReverseBrownian

    if isinstance(bm, ReverseBrownian):
        base = getattr(bm.base_brownian, "_grid_increments", None)
        # rev(g_i, g_{i+1}) = base(−g_{i+1}, −g_i): the base's row i on the decreasing grid −g.
        return None if base is None else (lambda grid, return_U=False: base(-grid, return_U=return_U))
    return getattr(bm, "_grid_increments", None)


def _query(bm, t0, t1, need: str):
    """(W, U, A) over [t0, t1], asking bm only for what the method needs ("W", "WU" or "WA")."""
    if need == "W":
        return bm(t0, t1), None, None
    if need == "WU":
        w, u = bm(t0, t1, return_U=True)
        return w, u, None
    w, a = bm(t0, t1, return_A=True)
    return w, None, a


def _interp(t0, y0, t1, y1, t):
    return (t1 - t) / (t1 - t0) * y0 + (t - t0) / (t1 - t0) * y1


def integrate(view: SDEView, method: Method, bm, y0: torch.Tensor, ts: torch.Tensor, dt: float, adaptive: bool,
              rtol: float, atol: float, dt_min: float, options: dict, extra0: tuple):
    """Step from ts[0] to ts[-1]; (ys (T, B, d), the final extra state)."""
    if adaptive:
        return _integrate_adaptive(view, method, bm, y0, ts, dt, rtol, atol, dt_min, options, extra0)
    step = method.step
    grid, grid_f = fixed_grid(ts, dt)
    increments = _brownian_blocks(bm, grid, method.brownian)
    ys = [y0]
    prev_t = grid[0]
    prev_y = curr_y = y0
    extra = extra0
    k = 0
    for out_t, out_tf in zip(ts[1:], ts[1:].tolist()):
        while grid_f[k] < out_tf:
            t0, t1 = grid[k], grid[k + 1]
            w, u, a = next(increments)
            prev_t, prev_y = t0, curr_y
            curr_y, extra = step(view, t0, t1, t1 - t0, curr_y, extra, w, u, a, options)
            k += 1
        ys.append(_interp(prev_t, prev_y, grid[k], curr_y, out_t))
    return torch.stack(ys, dim=0), extra


def _error_ratio(y_full: torch.Tensor, y_half: torch.Tensor, rtol: float, atol: float, t: torch.Tensor,
                 eps: float = 1e-7) -> float:
    tol = (rtol * torch.max(y_full.abs(), y_half.abs()) + atol).clamp_min(eps)
    err = torch.sqrt((((y_full - y_half) / tol) ** 2).sum() / y_full.numel()).clamp_min(eps)
    value = float(err.detach())
    if value != value:
        from ._errors import NonFiniteStateError

        raise NonFiniteStateError("sdeint: the adaptive error estimate is NaN; try a larger tolerance or a smaller "
                                  "dt, or regularise the dynamics", t=float(t))
    return value


def _update_step(error: float, step: float, prev_ratio: float | None, safety: float = 0.9, facmin: float = 0.2,
                 facmax: float = 1.4) -> tuple[float, float | None]:
    """torchsde's PI controller for step doubling."""
    pfactor, ifactor = (0.0, 1 / 1.5) if error > 1 else (0.13, 1 / 4.5)
    ratio = safety / error
    if prev_ratio is None:
        prev_ratio = ratio
    factor = ratio**ifactor * (ratio / prev_ratio) ** pfactor
    if error <= 1:
        prev_ratio = ratio
        facmin = 1.0
    return step * min(facmax, max(facmin, factor)), prev_ratio


def _integrate_adaptive(view, method: Method, bm, y0, ts, dt, rtol, atol, dt_min, options, extra0):
    step, need = method.step, method.brownian
    step_size = float(dt)
    prev_t = curr_t = ts[0]
    prev_y = curr_y = y0
    extra = extra0
    prev_ratio = None
    ys = [y0]
    for out_t in ts[1:]:
        while curr_t < out_t:
            next_t = torch.minimum(curr_t + step_size, ts[-1])
            w, u, a = _query(bm, curr_t, next_t, need)
            y_full, _ = step(view, curr_t, next_t, next_t - curr_t, curr_y, extra, w, u, a, options)
            mid_t = 0.5 * (curr_t + next_t)
            w, u, a = _query(bm, curr_t, mid_t, need)
            mid_y, mid_extra = step(view, curr_t, mid_t, mid_t - curr_t, curr_y, extra, w, u, a, options)
            w, u, a = _query(bm, mid_t, next_t, need)
            next_y, next_extra = step(view, mid_t, next_t, next_t - mid_t, mid_y, mid_extra, w, u, a, options)
            with torch.no_grad():
                error = _error_ratio(y_full, next_y, rtol, atol, curr_t)
                step_size, prev_ratio = _update_step(error, step_size, prev_ratio)
            if step_size < dt_min:
                warnings.warn("Hitting minimum allowed step size in adaptive time-stepping.")
                step_size = dt_min
                prev_ratio = None
            if error <= 1 or step_size <= dt_min:
                prev_t, prev_y = curr_t, curr_y
                curr_t, curr_y, extra = next_t, next_y, next_extra
        ys.append(_interp(prev_t, prev_y, curr_t, curr_y, out_t))
    return torch.stack(ys, dim=0), extra


def parse_return(y0: torch.Tensor, ys: torch.Tensor, extra_state, extra: bool, logqp: bool):
    if logqp:
        ys, log_ratio = ys.split((y0.size(1) - 1, 1), dim=2)
        increments = (log_ratio[1:] - log_ratio[:-1]).squeeze(dim=2)
        return (ys, increments, extra_state) if extra else (ys, increments)
    return (ys, extra_state) if extra else ys


def _warn_unused(unused: dict, where: str) -> None:
    if unused:
        warnings.warn(f"`{where}`: Unexpected arguments {unused}")

