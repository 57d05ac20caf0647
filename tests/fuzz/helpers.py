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

__all__ = ["torch", "fde", "_C", "OPS", "rk_solve", "rk_adjoint", "reversible_solve", "reversible_solve_per_sample", "options", "nan", "inf", "mk", "F", "N", "FieldError", "Lin", "api_call", "assert_guards",
           "check_guards", "SUCCESS", "RUNNING", "all_finite", "shape_of", "odeint_shape_ok", "grad_direct", "close", "solved_ok", "defined_part",
           "inplace_then_read", "write_past_end", "lin_exact_grads",
           # per-sample entry points, solve_ivp and events
           "rk_solve_per_sample", "rk_adjoint_per_sample", "E", "ivp_call", "event_call", "ps_shapes_ok",
           "ps_solved_ok", "ps_events_ok", "ps_grad_finite", "ps_alone_ok", "ps_loops_agree", "grad_direct_ps",
           "lin_exact_grads_ps", "adjoint_ps_ok", "ivp_shapes_ok", "ivp_success_finite", "ivp_alone_ok",
           "ivp_lin_exact_ok", "event_exact_ok", "close_scaled"]

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


def rk_adjoint_per_sample(func, params, t_out, ys, grad_ys, active, *, user_shape=None, tape=None, progress=None,
                          progress_interval=0.1, **settings):
    """_C.rk_adjoint_per_sample(func, params, t_out, ys, grad_ys, active, options, user_shape=, tape=, progress=,
    progress_interval=) with the options flat."""
    return _C.rk_adjoint_per_sample(func, params, t_out, ys, grad_ys, active, options(**settings),
                                    user_shape=user_shape, tape=tape, progress=progress,
                                    progress_interval=progress_interval)


def rk_adjoint(func, params, t_out, ys, tape, grad_ys, *, seminorm=False, trajectory="resolve", norm=None,
               user_shape=None, joint=True, **settings):
    """_C.rk_adjoint(func, params, t_out, ys, tape, grad_ys, options, ...) with the options flat."""
    return _C.rk_adjoint(func, params, t_out, ys, tape, grad_ys, options(**settings), seminorm=seminorm,
                         trajectory=trajectory, norm=norm, user_shape=user_shape, joint=joint)


def reversible_solve(func, y0, t_out, *, coupling=0.999, grid=(), user_shape=None, **settings):
    """_C.reversible_solve(func, y0, t_out, options, coupling=, grid=, user_shape=) with the options flat."""
    return _C.reversible_solve(func, y0, t_out, options(**settings), coupling=coupling, grid=list(grid),
                               user_shape=user_shape)


def reversible_solve_per_sample(func, y0, t_out, *, coupling=0.999, user_shape=None, **settings):
    """_C.reversible_solve_per_sample(func, y0, t_out, options, coupling=, user_shape=) with the options flat."""
    return _C.reversible_solve_per_sample(func, y0, t_out, options(**settings), coupling=coupling,
                                          user_shape=user_shape)


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
    tensor) | expand (stride 0 along dim 0) | offset (a view at a storage offset) | sparse (COO; not on meta).
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
    elif layout == "sparse":
        x = x.to_sparse()
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
USER_CODE = {"<lambda>", "_map", "_late", "_raises", "forward", "inplace_then_read", "write_past_end", "_first",
             "_rows", "_event_raises"}


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


def close_scaled(a, b, tol) -> bool:
    """max |a - b| <= tol (1 + max |b|): an error relative to the whole tensor's scale (a solver's error on one
    element follows the tolerance of the whole trajectory, not that element's size)."""
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return bool((a - b).abs().max() <= tol * (1.0 + b.abs().max()))


def close(a, b, rtol=1e-7, atol=1e-9) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True))


# ---------------------------------------------------------------------------------------------------
# Per-sample solves, solve_ivp and events
# ---------------------------------------------------------------------------------------------------

def _rows(t, y):
    """y as one row per sample: [B, -1] when t is [B] (per sample), one row when t is 0-dim (joint); the
    first part of a tuple state."""
    y = y[0] if isinstance(y, (tuple, list)) else y
    return y.reshape(t.numel() if t.dim() else 1, -1)


def _first(t, y):
    """Each sample's first state element ([B]; 0-dim when t is 0-dim)."""
    v = _rows(t, y)[:, 0]
    return v if t.dim() else v.reshape(())


def _event_raises(t, y):
    raise FieldError("raised on purpose by the fuzz event function")


# Event functions event(t, y): t is [B] per sample (0-dim in joint mode / odeint), one value per sample.
E = types.SimpleNamespace(
    level=lambda c: (lambda t, y: _first(t, y) - c),     # the first state element crosses c
    time=lambda c: (lambda t, y: t - c),                 # fires at t = c (when inside the span)
    never=lambda t, y: torch.ones_like(t),
    at_start=lambda t, y: torch.zeros_like(t),
    sin=lambda t, y: torch.sin(20.0 * t),
    number=lambda t, y: 1.0,
    string=lambda t, y: "small",
    none=lambda t, y: None,
    extra=lambda t, y: torch.zeros(t.numel() + 1, dtype=torch.float64),
    empty=lambda t, y: torch.zeros(0, dtype=torch.float64),
    column=lambda t, y: (t - 1e300).reshape(-1, 1),
    nan=lambda t, y: torch.full_like(t, nan),
    inf=lambda t, y: torch.full_like(t, -inf),
    meta=lambda t, y: torch.zeros_like(t, device="meta"),
    boolean=lambda t, y: _first(t, y) > 0,
    integer=lambda t, y: (_first(t, y) > 0).long(),
    complex=lambda t, y: (t - 1e300).to(torch.complex128),
    float32=lambda t, y: _first(t, y).float() - 0.25,
    vector=lambda t, y: torch.stack([_first(t, y) - 0.5, t - 1e300]),
    raises=_event_raises,
)


def _counter_width() -> int:
    return len(getattr(_C, "counter_indices", {}) or {}) or 4


def _direction_rows(t_out, B):
    """t_out as float64 [B, T] rows on the CPU."""
    t = t_out.detach().double().cpu()
    return t.reshape(1, -1).expand(B, -1) if t.dim() == 1 else t


def ps_shapes_ok(res, y0, t_out, event=False, record=False) -> bool:
    """rk_solve_per_sample's result: ys [T, B, D], status/t/h [B], counters [B, n]; tape in record mode,
    t_event [B] / y_event [B, D] with an event function."""
    B, D = y0.shape
    T = t_out.shape[-1]
    ok = (tuple(res["ys"].shape) == (T, B, D) and tuple(res["status"].shape) == (B,)
          and tuple(res["counters"].shape) == (B, _counter_width()) and tuple(res["t"].shape) == (B,)
          and tuple(res["h"].shape) == (B,) and res["ys"].dtype == y0.dtype)
    ok = ok and (("tape" in res) == bool(record)) and (("t_event" in res) == bool(event))
    if event and ok:
        ok = tuple(res["t_event"].shape) == (B,) and tuple(res["y_event"].shape) == (B, D)
    return bool(ok)


def _event_times(res, B):
    te = res.get("t_event")
    return te.detach().double().cpu() if te is not None else torch.full((B,), nan, dtype=torch.float64)


def ps_solved_ok(res, y0, t_out) -> bool:
    """Samples reporting success without an event have finite outputs (from a finite y0) and reached their
    last output time."""
    status = res["status"].reshape(-1)
    B = status.numel()
    plain = (status == SUCCESS) & ~torch.isfinite(_event_times(res, B))
    if not bool(plain.any()):
        return True
    if all_finite(y0) and not all_finite(res["ys"][:, plain]):
        return False
    rows = _direction_rows(t_out, B)
    first, last = rows[:, 0], rows[:, -1]
    reached = res["t"].detach().double().cpu().reshape(-1)
    good = torch.sign(last - first) * (reached - last) >= 0
    return bool(good[plain].all()) if rows.shape[1] > 1 else True


def ps_events_ok(res, y0, t_out) -> bool:
    """A sample with an event succeeded and stopped at its event time, inside its span, finite there, its
    outputs after the event NaN and before it finite; a sample without one has a NaN y_event."""
    if "t_event" not in res:
        return True
    B = y0.shape[0]
    te = _event_times(res, B)
    rows = _direction_rows(t_out, B)
    d = torch.sign(rows[:, -1] - rows[:, 0]) if rows.shape[1] > 1 else torch.ones(B, dtype=torch.float64)
    t_reached = res["t"].detach().double().cpu()
    ye = res["y_event"].detach()
    ys = res["ys"].detach()
    for b in range(B):
        if not math.isfinite(float(te[b])):
            if not bool(torch.isnan(ye[b]).all()):
                return False
            continue
        if int(res["status"][b]) != SUCCESS or float(t_reached[b]) != float(te[b]):
            return False
        if d[b] * (te[b] - rows[b, 0]) < 0 or (rows.shape[1] > 1 and d[b] * (te[b] - rows[b, -1]) > 0):
            return False
        if all_finite(y0) and not all_finite(ye[b]):
            return False
        after = d[b] * (rows[b] - te[b]) > 0
        before = d[b] * (rows[b] - te[b]) < 0
        if not bool(torch.isnan(ys[after, b]).all()):
            return False
        if all_finite(y0) and not all_finite(ys[before, b]):
            return False
    return True


def _finite_sum(outs):
    return sum(torch.where(torch.isfinite(o), o, torch.zeros_like(o)).sum() for o in outs)


def ps_grad_finite(res, y0) -> bool:
    """Graph mode with y0 requiring grad: back-propagating the finite outputs gives a finite dL/dy0 (stopped
    and failed samples' rows are zeroed so that no NaN reaches the graph)."""
    if not (isinstance(y0, torch.Tensor) and y0.requires_grad) or not all_finite(y0):
        return True
    outs = [o for o in (res.get("ys"), res.get("y_event")) if isinstance(o, torch.Tensor) and o.requires_grad]
    if not outs:
        return True
    (g,) = torch.autograd.grad(_finite_sum(outs), [y0], allow_unused=True)
    return g is None or bool(torch.isfinite(g).all())


def _same_nan(a, b, tol=1e-12) -> bool:
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape or not torch.equal(torch.isnan(a), torch.isnan(b)):
        return False
    m = ~torch.isnan(a)
    return bool(torch.allclose(a[m], b[m], rtol=tol, atol=tol))


def ps_alone_ok(res, func, y0, t_out, event_fn=None, **kw) -> bool:
    """Each sample solved alone gives its row of the batch (solve_ivp's independence)."""
    B = y0.shape[0]
    for b in range(B):
        t_b = t_out[b:b + 1] if t_out.dim() == 2 else t_out
        alone = rk_solve_per_sample(func, y0[b:b + 1].detach(), t_b, event_fn=event_fn,
                                    user_shape=[1, y0.shape[1]], **kw)
        if not _same_nan(res["ys"][:, b], alone["ys"][:, 0]):
            return False
        if int(res["status"][b]) != int(alone["status"][0]):
            return False
        if not torch.equal(res["counters"][b], alone["counters"][0]):
            return False
        if "t_event" in res and not _same_nan(res["t_event"][b:b + 1], alone["t_event"][:1]):
            return False
    return True


def ps_loops_agree(res, func, y0, t_out, mode, joint, user_shape, **settings) -> bool:
    """The per-sample loop in the other mode ('graph' / 'record') and the fused masked loop (rk_solve) give the
    same outputs (NaN where the sample failed), status and step counts."""
    other = rk_solve_per_sample(func, y0.detach(), t_out, mode="record" if mode == "graph" else "graph",
                                joint=joint, user_shape=user_shape, **settings)
    masked = rk_solve(func, y0.detach(), t_out, mode="masked", joint=joint, user_shape=user_shape,
                      **dict(settings, check_every=1))
    for r in (other, masked):
        if not torch.equal(r["status"], res["status"]) or not torch.equal(r["counters"][:, :2], res["counters"][:, :2]):
            return False
        if not _same_nan(r["ys"], res["ys"], 1e-12):
            return False
    return True


def grad_direct_ps(func, y0, t_out, grad_ys, params, user_shape, **kw):
    """(dL/dy0, dL/dparams...) of L = <grad_ys, ys> through the graph-mode per-sample loop (the reference of
    the per-sample checkpoint replay)."""
    y = y0.detach().clone().requires_grad_(True)
    res = rk_solve_per_sample(func, y, t_out, mode="graph", user_shape=user_shape, **kw)
    wrt = [y] + list(params)
    ys = res["ys"]
    gy = torch.where(torch.isnan(ys), torch.zeros_like(grad_ys), grad_ys)
    gs = torch.autograd.grad(ys, wrt, gy, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for g, w in zip(gs, wrt)]


def lin_exact_grads_ps(field, y0, t_out, grad_ys, active=None):
    """(dL/dy0 [B, D], dL/dtheta) of L = <grad_ys, ys> for Lin per sample (y_b(t) = y0_b exp(-theta (t -
    t_b0))), t_out [T] or [B, T]; inactive samples contribute nothing."""
    th = float(field.theta.detach())
    B = y0.shape[0]
    rows = _direction_rows(t_out, B)
    dt = (rows - rows[:, :1]).t().unsqueeze(-1)  # [T, B, 1]
    e = torch.exp(-th * dt)
    g = grad_ys.detach().double()
    gy0 = (g * e).sum(0)
    gth = (g * (-dt) * e * y0.detach().double()).sum((0, 2))
    if active is not None:
        act = torch.tensor(active.tolist(), dtype=torch.bool)
        gy0 = torch.where(act.unsqueeze(1), gy0, torch.zeros_like(gy0))
        gth = torch.where(act, gth, torch.zeros_like(gth))
    return gy0, gth.sum()


def adjoint_ps_ok(res, active) -> bool:
    """Inactive samples are not integrated: zero gradient, zero counters, status success."""
    act = active.tolist()
    for b, a in enumerate(act):
        if a:
            continue
        if bool(res["grad_y0"][b].ne(0).any()) or bool(res["counters"][b].ne(0).any()):
            return False
        if int(res["status"][b]) != SUCCESS:
            return False
    return True


def ivp_call(func, y0, t_eval, backward=False, **kwargs):
    """fastdiffeq.solve_ivp(func, y0, t_eval, **kwargs) as a dict of the Solution's fields; with
    backward=True also the gradients of the finite outputs (ys, t_events, y_events) w.r.t. y0, func's
    parameters and `params`."""
    sol = fde.solve_ivp(func, y0, t_eval, **kwargs)
    grads = []
    if backward:
        wrt = [y0] if isinstance(y0, torch.Tensor) and y0.requires_grad else []
        if isinstance(func, torch.nn.Module):
            wrt += [p for p in func.parameters() if p.requires_grad]
        given = kwargs.get("params")
        for p in (given if isinstance(given, (list, tuple)) else ()):
            if isinstance(p, torch.Tensor) and p.requires_grad and not any(p is w for w in wrt):
                wrt.append(p)
        outs = [o for o in (sol.ys, sol.t_events, sol.y_events) if isinstance(o, torch.Tensor) and o.requires_grad]
        if wrt and outs:
            grads = list(torch.autograd.grad(_finite_sum(outs), wrt, allow_unused=True))
    return {"ys": sol.ys, "t_eval": sol.t_eval, "status": sol.status, "n_steps": sol.n_steps,
            "n_accepted": sol.n_accepted, "n_rejected": sol.n_rejected, "nfe": sol.nfe, "t_events": sol.t_events,
            "y_events": sol.y_events, "grads": grads}


def ivp_shapes_ok(r, y0, t_eval, event=False) -> bool:
    B = y0.shape[0]
    T = t_eval.shape[-1]
    ok = (tuple(r["ys"].shape) == (B, T, *y0.shape[1:]) and r["ys"].dtype == y0.dtype
          and tuple(r["t_eval"].shape) == (B, T) and tuple(r["status"].shape) == (B,)
          and all(tuple(r[k].shape) == (B,) for k in ("n_steps", "n_accepted", "n_rejected")))
    if event:
        ok = ok and r["t_events"] is not None and tuple(r["t_events"].shape) == (B,) \
            and tuple(r["y_events"].shape) == (B, *y0.shape[1:])
    else:
        ok = ok and r["t_events"] is None and r["y_events"] is None
    return bool(ok)


def ivp_success_finite(r, y0) -> bool:
    """Samples that succeeded without an event have finite outputs; gradients are finite."""
    B = y0.shape[0]
    te = r["t_events"].detach().double().cpu() if r["t_events"] is not None else torch.full((B,), nan)
    plain = (r["status"] == SUCCESS) & ~torch.isfinite(te)
    if bool(plain.any()) and not all_finite(r["ys"][plain]):
        return False
    return all(g is None or all_finite(g) for g in r["grads"])


def ivp_alone_ok(r, func, y0, t_eval, **kw) -> bool:
    """Each sample solved alone gives its row of the batch (the same values, steps and status)."""
    B = y0.shape[0]
    kw = dict(kw, on_failure="mark")
    with torch.no_grad():
        for b in range(B):
            t_b = t_eval[b:b + 1] if t_eval.dim() == 2 else t_eval
            alone = fde.solve_ivp(func, y0[b:b + 1].detach(), t_b, **kw)
            if not _same_nan(r["ys"][b], alone.ys[0]) or int(r["status"][b]) != int(alone.status[0]):
                return False
            if int(r["n_steps"][b]) != int(alone.n_steps[0]):
                return False
            if r["t_events"] is not None and not _same_nan(r["t_events"][b:b + 1], alone.t_events[:1]):
                return False
    return True


def ivp_lin_exact_ok(r, field, y0, t_eval, tol=1e-4) -> bool:
    """Lin per sample: ys = y0 exp(-theta (t - t_b0)); with backward, the gradients of sum(ys) w.r.t. y0
    (when it requires grad) and theta."""
    B = y0.shape[0]
    th = float(field.theta.detach())
    rows = _direction_rows(t_eval, B)                               # [B, T]
    dt = (rows - rows[:, :1]).reshape(B, -1, *([1] * (y0.dim() - 1)))  # [B, T, 1...]
    e = torch.exp(-th * dt)
    y = y0.detach().double().unsqueeze(1)
    if not close_scaled(r["ys"], y * e, tol):
        return False
    if not r["grads"]:
        return True
    want = []
    if y0.requires_grad:
        want.append(e.sum(1).expand_as(y0.detach()).double())
    want.append((-dt * e * y).sum())
    return len(want) == len(r["grads"]) and all(  # (None: unused, a zero gradient)
        close_scaled((torch.zeros_like(w) if g is None else g).reshape(w.shape), w, tol)
        for g, w in zip(r["grads"], want))


def event_call(func, y0, t0, backward=False, **kwargs):
    """fastdiffeq.odeint_event(func, y0, t0, **kwargs) -> {'t', 'sol', 'grads'}; with backward=True the
    gradients of the event time w.r.t. t0, then each y0 part, then func's parameters (those requiring grad;
    None where unused)."""
    event_t, sol = fde.odeint_event(func, y0, t0, **kwargs)
    grads = []
    if backward:
        parts = list(y0) if isinstance(y0, (tuple, list)) else [y0]
        wrt = [v for v in [t0] + parts if isinstance(v, torch.Tensor) and v.requires_grad]
        if isinstance(func, torch.nn.Module):
            wrt += [p for p in func.parameters() if p.requires_grad]
        if wrt and isinstance(event_t, torch.Tensor) and event_t.requires_grad:
            grads = list(torch.autograd.grad(event_t, wrt, allow_unused=True))
    return {"t": event_t, "sol": sol, "grads": grads}


def event_exact_ok(r, kind, y0, t0, level, tol=1e-6) -> bool:
    """The event of `first element of y == level` for F.const (y = y0 + (t - t0)) or F.decay (y = y0
    exp(-(t - t0))), y0's first element 1: its time, the state there and d tau / d (t0, y0)."""
    t0v = float(t0.detach().reshape(-1)[0])
    y00 = 1.0
    tau = t0v + (level - y00) if kind == "const" else t0v + math.log(y00 / level)
    if abs(float(r["t"].detach()) - tau) > tol * max(1.0, abs(tau)):
        return False
    sol = r["sol"]
    last = (sol[0] if isinstance(sol, tuple) else sol)[-1].detach().reshape(-1)
    if abs(float(last[0]) - level) > tol * 10:
        return False
    if not r["grads"]:
        return True
    parts = list(y0) if isinstance(y0, (tuple, list)) else [y0]
    want = []
    if isinstance(t0, torch.Tensor) and t0.requires_grad:
        want.append(torch.ones_like(t0, dtype=torch.float64))
    for j, p in enumerate(parts):
        if isinstance(p, torch.Tensor) and p.requires_grad:
            w = torch.zeros(p.shape, dtype=torch.float64)
            if j == 0 and w.numel():
                w.view(-1)[0] = -1.0 if kind == "const" else 1.0 / y00
            want.append(w)
    return len(want) == len(r["grads"]) and all(
        (g if g is not None else torch.zeros_like(w)).double().reshape(w.shape).sub(w).abs().max().item() < 1e-5
        if w.numel() else True for g, w in zip(r["grads"], want))


# Defects on purpose, for the harness's own tests (the selftest targets in gen.py).

def inplace_then_read(out, x):
    """Writes `out`, then reads `x`: gives another result when x aliases out."""
    out.add_(1.0)
    return x * 2.0


def write_past_end(x):
    """Writes one element past the end of `x` (inside its storage, so nothing crashes)."""
    x.as_strided((x.numel() + 1,), (1,))[-1] = 0


# ---------------------------------------------------------------------------------------------------
# SDEs (sdeint, sdeint_adjoint), Brownian motions, the native MLP
# ---------------------------------------------------------------------------------------------------

class Sde(torch.nn.Module):
    """A small SDE with parameters (torchsde's interface) for the sdeint targets.

    kind: 'lin' (f = tanh(y A) - 0.3 y + 0.1 t, g by noise type, bounded), 'free' (f = 0, constant additive g = G:
    the solution is y0 + G W exactly, for every method), 'nan' (g is NaN), 'raises' (f raises FieldError),
    'wrong_g' (g has one state channel too many); SdeProducts has f and g_prod only.
    h(t, y) = -y is the prior drift (logqp)."""

    def __init__(self, noise_type="diagonal", sde_type="ito", d=2, m=2, kind="lin", dtype=torch.float64, seed=0):
        super().__init__()
        self.noise_type, self.sde_type, self.kind, self.d, self.m = noise_type, sde_type, kind, d, m
        gen = _gen(seed)
        self.A = torch.nn.Parameter((0.4 * torch.randn(d, d, generator=gen, dtype=torch.float64)).to(dtype))
        self.c = torch.nn.Parameter((0.4 * torch.randn(d, generator=gen, dtype=torch.float64)).to(dtype))
        self.G = torch.nn.Parameter((0.4 * torch.randn(d, m, generator=gen, dtype=torch.float64)).to(dtype))
        if kind == "raises":
            self.f = _sde_raises

    def f(self, t, y):
        if self.kind == "free":
            return torch.zeros_like(y)
        return torch.tanh(y @ self.A) - 0.3 * y + 0.1 * t

    def g(self, t, y):
        B, d, m, nt = y.size(0), self.d, self.m, self.noise_type
        if self.kind == "nan":
            return torch.full((B, d) if nt == "diagonal" else (B, d, 1 if nt == "scalar" else m), nan, dtype=y.dtype)
        if self.kind == "wrong_g":
            return torch.zeros(B, d + 1, dtype=y.dtype) if nt == "diagonal" else torch.zeros(B, d + 1, m, dtype=y.dtype)
        if nt == "diagonal":
            return 0.5 * torch.sigmoid(y * self.c)
        if nt == "scalar":
            return (0.5 * torch.sigmoid(y * self.c)).unsqueeze(-1)
        if nt == "additive":
            return self.G.expand(B, d, m) * (1 + 0 * t)
        return 0.5 * torch.sigmoid(y.unsqueeze(-1) * self.G)

    def h(self, t, y):
        return -y


class SdeProducts(torch.nn.Module):
    """General noise given by products only: f(t, y) and g_prod(t, y, v) = sigmoid(y G) ... (B, d); no g."""

    noise_type, sde_type = "general", "ito"

    def __init__(self, sde_type="ito", d=2, m=2, dtype=torch.float64, seed=0):
        super().__init__()
        self.sde_type, self.d, self.m = sde_type, d, m
        gen = _gen(seed)
        self.G = torch.nn.Parameter((0.4 * torch.randn(d, m, generator=gen, dtype=torch.float64)).to(dtype))

    def f(self, t, y):
        return -0.3 * y + 0.1 * t

    def g_prod(self, t, y, v):
        return 0.5 * torch.sigmoid(y) * (v @ self.G.t())


def _sde_raises(t, y):
    raise FieldError("raised on purpose by the fuzz SDE")


USER_CODE.update({"f", "g", "h", "g_prod", "_sde_raises"})


class PlainBM:
    """A Brownian motion seen through torchsde's interface only (no vectorised grid sampler): sdeint must query it
    with the same calls, in the same order, as the fast path draws them, so the results are bit-identical."""

    def __init__(self, bm):
        self._bm = bm
        self.shape, self.dtype, self.device = bm.shape, bm.dtype, bm.device
        self.levy_area_approximation = bm.levy_area_approximation

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        return self._bm(ta, tb, return_U=return_U, return_A=return_A)


def sde_call(fn, sde, y0, ts, backward=False, **kwargs):
    """fn(sde, y0, ts, **kwargs) -> {'ys', 'rest' (logqp increments / extra state), 'grads'}; with backward=True
    the gradients of sum(finite ys) w.r.t. y0 (when it requires grad) and the sde's parameters (None: unused)."""
    out = fn(sde, y0, ts, **kwargs)
    ys, rest = (out[0], list(out[1:])) if isinstance(out, tuple) else (out, [])
    grads = []
    if backward:
        wrt = [y0] if isinstance(y0, torch.Tensor) and y0.requires_grad else []
        if isinstance(sde, torch.nn.Module):
            wrt += [p for p in sde.parameters() if p.requires_grad]
        if wrt and isinstance(ys, torch.Tensor) and ys.requires_grad:
            grads = list(torch.autograd.grad(_finite_sum([ys]), wrt, allow_unused=True))
    return {"ys": ys, "rest": rest, "grads": grads}


def sde_shapes_ok(r, y0, ts, logqp=False, extra=False) -> bool:
    """ys (T, B, d) in y0's dtype; logqp: the KL increments (T - 1, B); extra: the solver state (a tuple)."""
    T = len(ts)
    B, d = y0.shape
    ok = isinstance(r["ys"], torch.Tensor) and tuple(r["ys"].shape) == (T, B, d) and r["ys"].dtype == y0.dtype
    rest = list(r["rest"])
    if logqp:
        ok = ok and bool(rest) and tuple(rest[0].shape) == (T - 1, B)
        rest = rest[1:]
    if extra:
        ok = ok and len(rest) == 1 and isinstance(rest[0], tuple)
        rest = rest[1:]
    return bool(ok and not rest)


def sde_finite_ok(r, y0) -> bool:
    """From a finite y0 with a bounded SDE over a short span: finite outputs and gradients."""
    if not all_finite(y0):
        return True
    return all_finite(r["ys"]) and all_finite(r["rest"][:1]) and all(g is None or all_finite(g) for g in r["grads"])


def _fresh(bm_kw):
    return fde.BrownianInterval(**bm_kw)


def sde_twin_ok(r, fn, sde, y0, ts, bm_kw, **kwargs) -> bool:
    """The same solve by `fn` (sdeint <-> sdeint_adjoint) on a fresh Brownian motion with the same entropy gives
    bit-identical forward values."""
    other = sde_call(fn, sde, y0.detach(), ts, bm=_fresh(bm_kw), **kwargs)
    return _same_tree(r["ys"], other["ys"]) and _same_tree(r["rest"], other["rest"])


def _same_tree(a, b) -> bool:
    """Bit-identical tensors (NaN where NaN) in the same nesting of tuples and lists."""
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b) and all(
            _same_tree(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and _same_nan(a, b, 0.0)
    return a == b


def sde_plain_bm_ok(r, fn, sde, y0, ts, bm_kw, **kwargs) -> bool:
    """The same solve with the Brownian motion behind PlainBM (one call per step, no grid sampler): identical."""
    other = sde_call(fn, sde, y0.detach(), ts, bm=PlainBM(_fresh(bm_kw)), **kwargs)
    return _same_tree(r["ys"], other["ys"]) and _same_tree(r["rest"], other["rest"])


def sde_free_exact_ok(r, sde, y0, ts, bm) -> bool:
    """Drift-free additive noise: ys[-1] = y0 + G W(ts[0], ts[-1]) for every method (bm: the motion the solve used,
    queried after it, so the increment is the sum of the solve's own increments, to rounding)."""
    w = bm(float(ts[0]), float(ts[-1])).double()
    want = y0.detach().double() + w @ sde.G.detach().double().t()
    tol = 1e-10 if r["ys"].dtype == torch.float64 and bm.dtype == torch.float64 else 1e-4
    return close_scaled(r["ys"][-1], want, tol)


def sde_grads_agree(r, sde, y0, ts, bm_kw, tol, **kwargs) -> bool:
    """reversible_heun's adjoint (adjoint_reversible_heun) with ts on the step grid: the gradients of direct
    back-propagation through sdeint, to rounding."""
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("adjoint_")}
    y = y0.detach().clone().requires_grad_(y0.requires_grad)
    for p in sde.parameters():
        p.grad = None
    ref = sde_call(fde.sdeint, sde, y, ts, backward=True, bm=_fresh(bm_kw), **kwargs)
    if len(ref["grads"]) != len(r["grads"]):
        return False
    for a, b in zip(r["grads"], ref["grads"]):
        if a is None and b is None:
            continue
        a = torch.zeros_like(b) if a is None else a  # (None: unused, a zero gradient)
        b = torch.zeros_like(a) if b is None else b
        if not close_scaled(a, b, tol):
            return False
    return True


def brownian_call(cls, kwargs, queries):
    """cls(**kwargs), then bm(*q[:-2], return_U=q[-2], return_A=q[-1]) for every query q: {'bm', 'out'}."""
    bm = cls(**kwargs)
    out = [bm(*q[:-2], return_U=q[-2], return_A=q[-1]) for q in queries]
    return {"bm": bm, "out": out}


def _as_list(x):
    return list(x) if isinstance(x, tuple) else [x]


def bm_shapes_ok(r, queries) -> bool:
    """W and U have the sample's shape, A (*shape, shape[-1]) (shape itself when it has at most one dimension), in
    the motion's dtype; a point query of BrownianPath / BrownianTree gives the value (the sample's shape)."""
    bm = r["bm"]
    size = tuple(bm.shape)
    a_size = size if len(size) <= 1 else (*size, size[-1])
    for q, out in zip(queries, r["out"]):
        parts = _as_list(out)
        want = [size] + ([size] if q[-2] else []) + ([a_size] if q[-1] else [])
        if len(parts) != len(want) or any(tuple(p.shape) != w or p.dtype != bm.dtype for p, w in zip(parts, want)):
            return False
    return True


def _tol(dtype):
    return {torch.float64: 1e-11, torch.float32: 1e-4}.get(dtype, 5e-2)


def bm_additive_ok(bm, s, t, u) -> bool:
    """W(s, u) = W(s, t) + W(t, u); with U: U(s, u) = U(s, t) + (u - t) W(s, t) + U(t, u) (to rounding)."""
    want_u = bm.levy_area_approximation != "none"
    a, b, c = (_as_list(bm(x, y, return_U=want_u)) for x, y in ((s, t), (t, u), (s, u)))
    tol = _tol(bm.dtype)
    if not close_scaled(a[0] + b[0], c[0], tol):
        return False
    return not want_u or close_scaled(a[1] + (u - t) * a[0] + b[1], c[1], tol)


def bm_repeat_ok(bm, queries) -> bool:
    """Every query asked again (after all the others, on the same tree) gives bit-identical tensors."""
    first = [[p.clone() for p in _as_list(bm(*q[:-2], return_U=q[-2], return_A=q[-1]))] for q in queries]
    again = [_as_list(bm(*q[:-2], return_U=q[-2], return_A=q[-1])) for q in reversed(queries)][::-1]
    return all(_same_nan(x, y, 0.0) for f, a in zip(first, again) for x, y in zip(f, a))


def bm_levy_antisymmetric_ok(r, queries) -> bool:
    """Davie's / Foster's Lévy area is exactly antisymmetric."""
    for q, out in zip(queries, r["out"]):
        if q[-1] and out[-1].dim() >= 2:
            A = out[-1]
            if not bool((A + A.transpose(-1, -2) == 0).all()):
                return False
    return True


def bm_cache_ok(cls, kwargs, queries, r) -> bool:
    """A BrownianInterval with a bounded cache (48 nodes, evicting) and an unbounded one make the same splits;
    values recomputed after eviction are bit-identical."""
    other = brownian_call(cls, dict(kwargs, cache_size=None if kwargs.get("cache_size", 45) is not None else 48),
                          queries)
    return all(_same_nan(x, y, 0.0) for a, b in zip(r["out"], other["out"]) for x, y in zip(_as_list(a), _as_list(b)))


def bm_order_free_ok(cls, kwargs, queries, r) -> bool:
    """BrownianTree (halfway tree): the path depends on the entropy only, so the queries asked in reverse order of a
    fresh tree give the same values (to rounding: their covers may differ)."""
    other = brownian_call(cls, kwargs, queries[::-1])
    tol = _tol(r["bm"].dtype)
    return all(close_scaled(x, y, tol) for a, b in zip(r["out"], other["out"][::-1])
               for x, y in zip(_as_list(a), _as_list(b)))


def bm_entropy_matters_ok(cls, kwargs, r) -> bool:
    """Another entropy gives another path (a non-empty motion over a non-empty span)."""
    bm = r["bm"]
    if math.prod(bm.shape) == 0 or not bm.t1 > bm.t0:
        return True
    other = cls(**dict(kwargs, entropy=int(kwargs["entropy"]) + 1))
    mid = bm.t0 + 0.375 * (bm.t1 - bm.t0)  # (inside: W over [t0, t1] may be given, as W or w1)
    return not torch.equal(bm(bm.t0, mid), other(other.t0, mid))


def bm_start_ok(r, w0, w1=None) -> bool:
    """BrownianPath / BrownianTree: the value at t0 is w0 (exactly), at t1 it is w1 (when given, to rounding)."""
    bm = r["bm"]
    if not torch.equal(bm(bm.t0), w0):
        return False
    return w1 is None or close_scaled(bm(bm.t1), w1, _tol(bm.dtype))


_ACT = {"tanh": torch.tanh, "softplus": torch.nn.functional.softplus, "relu": torch.relu,
        "elu": torch.nn.functional.elu, "sigmoid": torch.sigmoid, "silu": torch.nn.functional.silu}


def mlp_reference(weights, biases, activation, y):
    """The MLP computed in torch (what fastdiffeq.nn.MLP's forward does), on y's last dimension."""
    h = y.reshape(-1, weights[0].shape[1])
    for k, (W, b) in enumerate(zip(weights, biases)):
        h = torch.nn.functional.linear(h, W, b)
        if k + 1 < len(weights):
            h = _ACT[activation](h)
    return h.reshape(y.shape)


def mlp_call(weights, biases, activation, y, v=None, t=None):
    """_C.NativeMLP(weights, biases, activation), then f = mlp(t, y) and, with v, mlp.vjp(y, v) -> (f, gy, gp)."""
    mlp = _C.NativeMLP(weights, biases, activation)
    f = mlp(torch.tensor(0.0, dtype=torch.float64) if t is None else t, y)
    return {"f": f, "vjp": mlp.vjp(y, v) if v is not None else None}


def mlp_ok(r, weights, biases, activation, y, v=None) -> bool:
    """f equals the torch reference; vjp's f equals f; v^T df/dy and v^T df/dtheta (flattened W1, b1, W2, ...) equal
    torch.autograd's on the reference."""
    tol = 1e-12 if y.dtype == torch.float64 else 2e-5
    ws = [w.detach() for w in weights]
    bs = [b.detach() for b in biases]
    if not close_scaled(r["f"], mlp_reference(ws, bs, activation, y.detach()), tol):
        return False
    if v is None:
        return True
    f, gy, gp = r["vjp"]
    if not _same_nan(f, r["f"], 0.0):
        return False
    leaves = [x.clone().requires_grad_(True) for x in [y.detach()] + [p for wb in zip(ws, bs) for p in wb]]
    out = mlp_reference(leaves[1::2], leaves[2::2], activation, leaves[0])
    ref = torch.autograd.grad(out, leaves, v.detach(), allow_unused=True)
    ref = [torch.zeros_like(x) if g is None else g for g, x in zip(ref, leaves)]
    return close_scaled(gy, ref[0], tol) and close_scaled(gp, torch.cat([g.reshape(-1) for g in ref[1:]]), tol)


__all__ += ["types", "Sde", "SdeProducts", "PlainBM", "sde_call", "sde_shapes_ok", "sde_finite_ok", "sde_twin_ok",
            "sde_plain_bm_ok", "sde_free_exact_ok", "sde_grads_agree", "brownian_call", "bm_shapes_ok",
            "bm_additive_ok", "bm_repeat_ok", "bm_levy_antisymmetric_ok", "bm_cache_ok", "bm_order_free_ok",
            "bm_entropy_matters_ok", "bm_start_ok", "mlp_reference", "mlp_call", "mlp_ok"]


def cnf_call(weights, biases, gate_weights, gate_biases, time_weights, sqrt_T, s, y, v=None, *, train_T,
             activation, trace, noise=None, with_logp=True, kinetic=False, jacobian=False):
    """_C.NativeCNF(...), then f = field(s, y) and, with v, field.vjp(s, y, v) -> (f, gy, gp); also the handle."""
    h = _C.NativeCNF(weights, biases, gate_weights, gate_biases, time_weights, sqrt_T, train_T=train_T,
                     activation=activation, trace=trace, noise=noise, with_logp=with_logp, kinetic=kinetic,
                     jacobian=jacobian)
    f = h(s, y)
    return {"h": h, "f": f, "vjp": h.vjp(s, y, v) if v is not None else None}


def cnf_reference(weights, biases, gate_weights, gate_biases, time_weights, sqrt_T, s, y, *, activation, trace,
                  noise=None, with_logp=True, kinetic=False, jacobian=False):
    """The CNF's augmented field in plain torch, from the formulas (differentiable, double backward included):
    layer a = (W h + b) * sigmoid(gw t + gb) + tw t at t = s sqrt_T^2, the activation between layers, and per
    sample the columns [T f, -T tr J, T ||f||^2 (kinetic), T ||J||_F^2 (jacobian)]; J exact (by autograd, row by
    row) or, Hutchinson, tr = eps^T J eps and the Frobenius term ||J eps||^2."""
    D = weights[0].shape[1]
    kinetic, jacobian = with_logp and kinetic, with_logp and jacobian
    width = D + ((1 + kinetic + jacobian) if with_logp else 0)
    T = sqrt_T * sqrt_T
    t = s.reshape(()).to(T.dtype) * T
    z = y.reshape(-1, width)[:, :D]
    if with_logp and not z.requires_grad:
        z = z.detach().requires_grad_(True)  # (J by autograd needs z in the graph)

    def net(h):
        for k, W in enumerate(weights):
            gate = torch.sigmoid(gate_weights[k] * t + gate_biases[k])
            h = (h @ W.t() + biases[k]) * gate + time_weights[k] * t
            if k + 1 < len(weights):
                h = _ACT[activation](h)
        return h

    f = net(z)
    cols = [T * f]
    if with_logp:
        # The samples are independent, so d(sum over samples of f_d)/dz is row d of every sample's Jacobian.
        rows = [torch.autograd.grad(f[:, d].sum(), z, create_graph=True)[0] for d in range(D)]
        J = torch.stack(rows, dim=1)  # [N, D (output), D (input)]
        if trace == "exact":
            tr, fro = J.diagonal(dim1=1, dim2=2).sum(-1), (J * J).sum((1, 2))
        else:
            Je = (J * noise.unsqueeze(1)).sum(-1)  # J eps
            tr, fro = (noise * Je).sum(-1), (Je * Je).sum(-1)
        cols.append(-T * tr[:, None])
        if kinetic:
            cols.append(T * (f * f).sum(-1, keepdim=True))
        if jacobian:
            cols.append(T * fro[:, None])
    return torch.cat(cols, dim=1).reshape(y.shape)


def cnf_ok(r, weights, biases, gate_weights, gate_biases, time_weights, sqrt_T, s, y, v=None, *, train_T, **config):
    """f equals the torch reference (computed in float64 from the same values); vjp's f equals f; v^T df/dy and
    v^T df/dparams (sqrt_T first when train_T, then per layer W, b, gate_w, gate_b, time_w) equal torch.autograd's
    on the reference; `params` and `differentiates` name exactly those tensors, in that order."""
    tol = 1e-10 if y.dtype == torch.float64 else 2e-4
    lists = [weights, biases, gate_weights, gate_biases, time_weights]
    order = ([sqrt_T] if train_T else []) + [x[k] for k in range(len(weights)) for x in lists]
    h = r["h"]
    if len(h.params) != len(order) or not all(p is q for p, q in zip(h.params, order)):
        return False
    if not h.differentiates(order) or (len(order) > 1 and h.differentiates(order[::-1])):
        return False
    dbl = [[x.detach().double() for x in lst] for lst in lists]
    sq, s64, y64 = sqrt_T.detach().double(), s.detach().double(), y.detach().double()
    noise = config.pop("noise", None)
    noise = noise.detach().double() if noise is not None else None
    with torch.enable_grad():
        if not close_scaled(r["f"], cnf_reference(*dbl, sq, s64, y64, noise=noise, **config).detach(), tol):
            return False
        if v is None:
            return True
        f, gy, gp = r["vjp"]
        if not _same_nan(f, r["f"], 0.0):
            return False
        yl = y64.clone().requires_grad_(True)
        sql = sq.clone().requires_grad_(train_T)
        leaves = [[x.clone().requires_grad_(True) for x in lst] for lst in dbl]
        out = cnf_reference(*leaves, sql, s64, yl, noise=noise, **config)
        wrt = [yl] + ([sql] if train_T else []) + [x[k] for k in range(len(weights)) for x in leaves]
        ref = torch.autograd.grad(out, wrt, v.detach().double(), allow_unused=True)
    ref = [torch.zeros_like(x) if g is None else g for g, x in zip(ref, wrt)]
    return close_scaled(gy, ref[0], tol) and close_scaled(gp, torch.cat([g.reshape(-1) for g in ref[1:]]), tol)


def cnf_autograd_ok(r, y, v) -> bool:
    """field(s, y) recorded in grad mode (y and every parameter requiring grad): back-propagating v through it gives
    vjp's v^T df/dy and v^T df/dparams (the autograd Function's backward, in `params` order)."""
    params = list(r["h"].params)
    if r["f"].grad_fn is None:
        return False
    grads = torch.autograd.grad(r["f"], [y] + params, v, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, [y] + params)]
    _, gy, gp = r["vjp"]
    tol = 1e-12 if y.dtype == torch.float64 else 1e-5
    return close_scaled(grads[0], gy, tol) and close_scaled(torch.cat([g.reshape(-1) for g in grads[1:]]), gp, tol)


__all__ += ["cnf_call", "cnf_reference", "cnf_ok", "cnf_autograd_ok"]
