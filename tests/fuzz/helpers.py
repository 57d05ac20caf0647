"""What a fuzz program sees: ``from fuzz.helpers import *`` (tests/ on sys.path).

Every generated call is a small Python program written against these names, so the text the harness
logs before running a call is also its exact, standalone reproduction::

    PYTHONPATH=<site with fastdiffeq> python -c "import sys; sys.path.insert(0, 'tests'); exec(open('repro.py').read())"

Nothing here depends on the ops' signatures; fields and tensors are built deterministically from seeds.
"""

from __future__ import annotations

import math
import types

import torch

import fastdiffeq as fde
from fastdiffeq import _C

OPS = torch.ops.fastdiffeq
nan, inf = math.nan, math.inf

__all__ = ["torch", "fde", "_C", "OPS", "rk_solve", "rk_adjoint", "options", "nan", "inf", "mk", "F", "N", "FieldError", "Lin", "api_call", "assert_guards",
           "check_guards", "SUCCESS", "RUNNING", "all_finite", "shape_of", "odeint_shape_ok", "grad_direct", "close", "solved_ok", "defined_part",
           "inplace_then_read", "write_past_end", "lin_exact_grads",
           # per-sample entry points, solve_ivp and events
           "rk_solve_per_sample", "rk_adjoint_per_sample", "E", "ivp_call", "event_call", "ps_shapes_ok", "ps_solved_ok",
           "ps_events_ok", "ps_grad_finite", "ps_alone_ok", "grad_direct_ps", "lin_exact_grads_ps", "adjoint_ps_ok",
           "ivp_shapes_ok", "ivp_success_finite", "ivp_alone_ok", "ivp_lin_exact_ok", "event_exact_ok"]

# Status codes: taken from the extension when it exports them (F9), else today's values.
_codes = getattr(_C, "status_codes", None) or {}
RUNNING = int(_codes.get("running", 0))
SUCCESS = int(_codes.get("success", 1))


_OPTION_FIELDS = ("method", "rtol", "atol", "segment_ends", "first_step", "max_num_steps", "step_t", "jump_t",
                  "check_every", "record_dense")


def options(*, safety=0.9, ifactor=10.0, dfactor=0.2, min_step=0.0, max_step=inf, **fields):
    """_C.RkOptions (one object carries a solve's settings into C++) from the flat keyword arguments the
    generators draw; the controller as one _C.ControllerParams."""
    o = _C.RkOptions()
    for name in _OPTION_FIELDS:
        if name in fields:
            setattr(o, name, fields.pop(name))
    if fields:
        raise TypeError(f"unknown option fields {sorted(fields)}")
    o.control = _C.ControllerParams(safety=safety, ifactor=ifactor, dfactor=dfactor, min_step=min_step,
                                    max_step=max_step)
    return o


def rk_solve(func, y0, t_out, *, norm=None, user_shape=None, joint=True, mode="masked", **settings):
    """_C.rk_solve(func, y0, t_out, options, norm=, user_shape=, joint=, mode=) with the options flat."""
    return _C.rk_solve(func, y0, t_out, options(**settings), norm=norm, user_shape=user_shape, joint=joint,
                       mode=mode)


def rk_solve_per_sample(func, y0, t_out, *, norm=None, user_shape=None, mode="graph", event_fn=None, joint=False,
                        progress=None, progress_interval=0.1, **settings):
    """_C.rk_solve_per_sample(func, y0, t_out, options, norm=, user_shape=, mode=, event_fn=, joint=, progress=,
    progress_interval=) with the options flat."""
    return _C.rk_solve_per_sample(func, y0, t_out, options(**settings), norm=norm, user_shape=user_shape, mode=mode,
                                  event_fn=event_fn, joint=joint, progress=progress,
                                  progress_interval=progress_interval)


def rk_adjoint_per_sample(func, params, t_out, ys, grad_ys, active, *, user_shape=None, progress=None,
                          progress_interval=0.1, **settings):
    """_C.rk_adjoint_per_sample(func, params, t_out, ys, grad_ys, active, options, user_shape=, progress=,
    progress_interval=) with the options flat."""
    return _C.rk_adjoint_per_sample(func, params, t_out, ys, grad_ys, active, options(**settings),
                                    user_shape=user_shape, progress=progress, progress_interval=progress_interval)


def rk_adjoint(func, params, t_out, ys, tape, grad_ys, *, seminorm=False, trajectory="resolve", norm=None,
               user_shape=None, joint=True, **settings):
    """_C.rk_adjoint(func, params, t_out, ys, tape, grad_ys, options, ...) with the options flat."""
    return _C.rk_adjoint(func, params, t_out, ys, tape, grad_ys, options(**settings), seminorm=seminorm,
                         trajectory=trajectory, norm=norm, user_shape=user_shape, joint=joint)


class FieldError(Exception):
    """Raised on purpose by F.raises: must come out of every entry point unchanged."""


# ---------------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------------

GUARDS: list = []  # (buffer, offset, numel, sentinel) of every guarded tensor built since the last reset
_PAD = 16


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed) & 0x7FFFFFFF)
    return g


def mk(shape, dtype="float64", fill="randn", seed=0, values=None, value=0.0, lo=0.0, hi=1.0, specials=(),
       layout="contig", device="cpu", guard=False, requires_grad=False) -> torch.Tensor:
    """A tensor of `shape`/`dtype` filled deterministically, then laid out as asked.

    fill: randn (seeded) | full (value) | grid (linspace lo..hi) | values (explicit list, row-major).
    specials: (flat index, value) pairs written after the fill (NaN, inf, huge, ...), index mod numel.
    layout: contig | t (last two dims transposed in memory) | stride2 (every other element of a wider
    tensor) | expand (stride 0 along dim 0) | offset (a view at a storage offset).
    guard: the tensor is a view into a buffer with sentinel padding on both sides; assert_guards() checks
    nothing was written there (out-of-bounds writes that do not crash).
    """
    dt = getattr(torch, dtype)
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    # Values are built in int64 (exact big integers) or float64, specials written, then cast to dtype.
    if fill == "values":
        vals = list(values)
        exact = all(isinstance(v, int) for v in vals)
        base = torch.tensor(vals, dtype=torch.int64 if exact else torch.float64).reshape(-1)
    elif fill == "full":
        base = torch.full((n,), value, dtype=torch.int64 if isinstance(value, int) else torch.float64)
    elif fill == "grid":
        base = torch.linspace(lo, hi, n, dtype=torch.float64)
    else:
        base = torch.randn(n, generator=_gen(seed), dtype=torch.float64)
    if base.numel() != n:
        base = base.repeat(n // max(base.numel(), 1) + 1)[:n] if base.numel() else torch.zeros(n)
    for idx, v in specials:
        if n:
            if not isinstance(v, int) and not base.dtype.is_floating_point:
                base = base.double()
            base[int(idx) % n] = v
    if dt == torch.bool:
        base = base != 0
    elif base.dtype.is_floating_point and not (dt.is_floating_point or dt.is_complex):
        info = torch.iinfo(dt)
        base = base.nan_to_num(0.0, float(info.max), float(info.min)).clamp(info.min, info.max)
    base = base.to(dt).clone()
    x = base.reshape(shape)
    if layout == "t" and len(shape) >= 2:
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "stride2" and len(shape) >= 1:
        wide = torch.zeros(shape[:-1] + (2 * shape[-1],), dtype=dt)
        wide[..., ::2] = x
        x = wide[..., ::2]
    elif layout == "expand" and len(shape) >= 1 and shape[0] > 1:
        x = x[:1].clone().expand(shape)
    elif layout == "offset":
        buf = torch.zeros(n + 3, dtype=dt)
        buf[3:] = x.reshape(-1)
        x = buf[3:].view(shape)
    if device == "meta":
        x = torch.empty_strided(x.shape, x.stride(), dtype=dt, device="meta")
    elif guard and layout == "contig":
        sentinel = True if dt == torch.bool else (-777 if not dt.is_floating_point else -384.0)  # exact in f16
        buf = torch.full((n + 2 * _PAD,), sentinel, dtype=dt)
        view = buf[_PAD:_PAD + n].view(shape)
        view.copy_(x)
        GUARDS.append((buf, n, sentinel))
        x = view
    if requires_grad and (dt.is_floating_point or dt.is_complex):
        x.requires_grad_(True)
    return x


def check_guards() -> list:
    """The guarded tensors whose sentinel padding was overwritten (out-of-bounds writes)."""
    bad = []
    for k, (buf, n, sentinel) in enumerate(GUARDS):
        before, after = buf[:_PAD], buf[_PAD + n:]
        if not bool((before == sentinel).all()) or not bool((after == sentinel).all()):
            bad.append(f"guarded tensor #{k} ({buf.dtype}, {n} elements): padding before/after it was written")
    return bad


def assert_guards() -> None:
    bad = check_guards()
    assert not bad, bad


# ---------------------------------------------------------------------------------------------------
# Vector fields: f(t, y) for a tensor or a tuple y; t is 0-dim (joint) or [B] (per sample)
# ---------------------------------------------------------------------------------------------------

def _map(fn, y):
    return tuple(fn(v) for v in y) if isinstance(y, (tuple, list)) else fn(y)


def _late(t) -> bool:
    return float(t.detach().double().abs().max()) > 0.5 if t.numel() else False


F = types.SimpleNamespace(
    decay=lambda t, y: _map(lambda v: -v, y),
    const=lambda t, y: _map(torch.ones_like, y),
    grow=lambda t, y: _map(lambda v: v * 1.0, y),          # y' = y, a fresh tensor
    identity=lambda t, y: y,                                 # y' = y, returns its input itself (aliasing)
    square=lambda t, y: _map(lambda v: v * v, y),            # blows up in finite time
    nan_late=lambda t, y: _map(lambda v: -v if not _late(t) else torch.full_like(v, nan), y),
    # 1e300 (1e20 in float32): finite, but its square overflows a naive RMS norm
    huge=lambda t, y: _map(lambda v: torch.full_like(v, 1e300 if v.dtype == torch.float64 else 1e20), y),
    inf=lambda t, y: _map(lambda v: torch.full_like(v, inf), y),
    wrong_shape=lambda t, y: _map(lambda v: torch.zeros(v.numel() + 1, dtype=v.dtype), y),
    wrong_dtype=lambda t, y: _map(lambda v: (-v).to(torch.float32 if v.dtype == torch.float64 else torch.float64), y),
    not_tensor=lambda t, y: 1.0,
    meta_out=lambda t, y: _map(lambda v: torch.empty_like(v, device="meta"), y),
    noncontig=lambda t, y: _map(lambda v: torch.stack([-v, v], -1)[..., 0] if v.dim() else -v, y),
    raises=None,
)


def _raises(t, y):
    raise FieldError("raised on purpose by the fuzz field")


F.raises = _raises

# Error norms for options['norm'] / rk_solve(norm=...): x is a tensor, or a tuple for a tuple y0.
N = types.SimpleNamespace(
    max_abs=lambda x: max((v.abs().max() for v in (x if isinstance(x, tuple) else (x,)) if v.numel()),
                          default=torch.tensor(0.0, dtype=torch.float64)),
    zero=lambda x: 0.0,
    nan=lambda x: nan,
    negative=lambda x: -1.0,
    huge=lambda x: 1e300,
    elementwise=lambda x: x[0].abs() if isinstance(x, tuple) else x.abs(),   # one value per element
    string=lambda x: "small",
    empty=lambda x: torch.zeros(0),
    meta=lambda x: torch.zeros((), device="meta"),
)

# Functions that stand for the user's code: an exception raised inside them (or in a lambda of the
# program) is the user's, and must come out of fastdiffeq unchanged.
USER_CODE = {"<lambda>", "_map", "_late", "_raises", "forward", "inplace_then_read", "write_past_end", "_first", "_rows",
             "_event_raises", "_progress_raises"}


class Lin(torch.nn.Module):
    """f(t, y) = -theta * y with a learnable scalar theta (for the adjoint and checkpoint paths)."""

    def __init__(self, theta: float = 1.0, dtype=torch.float64):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(theta, dtype=dtype))

    def forward(self, t, y):
        return _map(lambda v: -self.theta.to(v.dtype) * v, y)


# ---------------------------------------------------------------------------------------------------
# Calling the API and inspecting results
# ---------------------------------------------------------------------------------------------------

def api_call(fn, func, y0, t, backward=False, **kwargs):
    """fn(func, y0, t, **kwargs); with backward=True also back-propagates sum(outputs) and returns the
    gradients of every input that requires grad: {'ys': ..., 'grads': [...]}."""
    ys = fn(func, y0, t, **kwargs)
    grads = []
    if backward:
        outs = ys if isinstance(ys, tuple) else (ys,)
        wrt = [v for v in (list(y0) if isinstance(y0, tuple) else [y0]) + [t]
               if isinstance(v, torch.Tensor) and v.requires_grad]
        if isinstance(func, torch.nn.Module):
            wrt += [p for p in func.parameters() if p.requires_grad]
        if wrt and any(o.requires_grad for o in outs):
            loss = sum(o.sum() for o in outs if o.requires_grad)
            grads = list(torch.autograd.grad(loss, wrt, allow_unused=True))
    return {"ys": ys, "grads": grads}


def shape_of(x):
    return tuple(shape_of(v) for v in x) if isinstance(x, (tuple, list)) else tuple(x.shape)


def odeint_shape_ok(ys, y0, t) -> bool:
    """odeint's contract: [len(t), *y0.shape], a tuple of them for a tuple y0."""
    n = len(t)
    if isinstance(y0, tuple):
        return isinstance(ys, tuple) and shape_of(ys) == tuple((n, *p.shape) for p in y0)
    return isinstance(ys, torch.Tensor) and tuple(ys.shape) == (n, *y0.shape)


def all_finite(*xs) -> bool:
    for x in xs:
        if isinstance(x, (tuple, list)):
            if not all_finite(*x):
                return False
        elif isinstance(x, torch.Tensor):
            if x.device.type != "meta" and x.is_floating_point() and not bool(torch.isfinite(x.detach()).all()):
                return False
    return True


def solved_ok(res, y0, t_out) -> bool:
    """rk_solve post-condition: samples reporting success have finite outputs (from a finite y0) and
    reached the last output time."""
    status = res["status"].reshape(-1)
    ok = status == SUCCESS
    if not bool(ok.any()):
        return True
    if all_finite(y0) and not all_finite(res["ys"][:, ok]):
        return False
    last = t_out[..., -1].double().expand(status.shape[0])[ok]
    first = t_out[..., 0].double().expand(status.shape[0])[ok]
    reached = res["t"].reshape(-1)[ok]
    return bool((torch.sign(last - first) * (reached - last) >= 0).all()) if t_out.shape[-1] > 1 else True


def defined_part(res):
    """rk_solve's result without what its contract leaves undefined: the outputs of samples that did not
    succeed (a failed sample's rows past the failure are never written)."""
    out = dict(res)
    ys, status = res.get("ys"), res.get("status")
    if isinstance(ys, torch.Tensor) and isinstance(status, torch.Tensor) and ys.dim() == 3 \
            and status.shape == ys.shape[1:2] and ys.device.type != "meta":
        ys = ys.clone()
        ys[:, status != SUCCESS] = 0
        out["ys"] = ys
    return out


def grad_direct(func, y0, t_out, grad_ys, **solve_kwargs):
    """dL/dy0 for L = <grad_ys, ys> by back-propagating through the graph-mode solve (the reference for
    the checkpoint replay)."""
    y = y0.detach().clone().requires_grad_(True)
    res = rk_solve(func, y, t_out, mode="graph", **solve_kwargs)
    (g,) = torch.autograd.grad(res["ys"], y, grad_ys)
    return g


def lin_exact_grads(field, y0, t_out, grad_ys):
    """(dL/dy0, dL/dtheta) of L = <grad_ys, ys> for Lin (y(t) = y0 exp(-theta (t - t0))): the adjoint's
    reference."""
    th = float(field.theta)
    dt = (t_out.double() - float(t_out[0])).reshape(-1, 1, 1)
    e = torch.exp(-th * dt)
    g = grad_ys.double()
    return (g * e).sum(0), (g * (-dt) * e * y0.double()).sum()


def close(a, b, rtol=1e-7, atol=1e-9) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True))


# Defects on purpose, for the harness's own tests (the selftest targets in gen.py).

def inplace_then_read(out, x):
    """Writes `out`, then reads `x`: gives another result when x aliases out."""
    out.add_(1.0)
    return x * 2.0


def write_past_end(x):
    """Writes one element past the end of `x` (inside its storage, so nothing crashes)."""
    x.as_strided((x.numel() + 1,), (1,))[-1] = 0
