"""Bad input is a test case: each raises the documented exception, naming the argument; solver failures
raise typed SolverErrors that carry where they happened; nothing crashes or hangs."""

from __future__ import annotations

import contextlib
import math
import signal
import threading

import pytest
import torch

import fastdiffeq
from fastdiffeq import MaxStepsError, NonFiniteStateError, SolverError, StepSizeUnderflowError


pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


@contextlib.contextmanager
def watchdog(seconds: float):
    """Fail (instead of hanging forever) if the body runs longer than `seconds`.

    Uses SIGALRM, so it only interrupts while Python code runs (e.g. inside the user's vector field),
    which is where every solver loop calls back into Python. Not a timing assertion: the limit is far
    above the expected run time and only guards against a hang.
    """
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handler(signum, frame):  # pragma: no cover - only on a hang
        raise TimeoutError(f"solver did not finish within {seconds} s (hang?)")

    old = signal.signal(signal.SIGALRM, _handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def decay(t, y):
    return -y


def vdp(t, y):
    return torch.stack([y[1], (1 - y[0] ** 2) * y[1] - y[0]])


Y0 = torch.tensor([1.0, 2.0], dtype=F64)
T = torch.linspace(0.0, 1.0, 5, dtype=F64)


def call(func=decay, y0=Y0, t=T, **kwargs):
    return fastdiffeq.odeint(func, y0, t, **kwargs)


def test_valid_call_works():
    # Sanity: the baseline arguments used below are accepted.
    y = call()
    torch.testing.assert_close(y, Y0 * torch.exp(-T)[:, None], rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------------
# t
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t, exc, pattern", [
    ([0.0, 1.0], TypeError, r"`t`"),                                                # not a tensor
    (0.5, TypeError, r"`t`"),                                                       # a number
    (torch.zeros(2, 3, dtype=F64), ValueError, r"`t`.*one-dimensional"),            # 2-D
    (torch.tensor(1.0, dtype=F64), ValueError, r"`t`.*one-dimensional"),           # 0-D
    (torch.tensor([0, 1, 2]), TypeError, r"`t`.*floating"),                         # integer
    (torch.tensor([], dtype=F64), ValueError, r"`t`"),                              # empty
    (torch.tensor([0.0, 2.0, 1.0], dtype=F64), ValueError, r"`t`.*strictly"),     # non-monotonic
    (torch.tensor([0.0, 1.0, 1.0, 2.0], dtype=F64), ValueError, r"`t`.*strictly"),  # repeated
    (torch.tensor([1.0, 1.0], dtype=F64), ValueError, r"`t`.*strictly"),           # repeated, 2 points
    (torch.tensor([0.0, float("nan"), 1.0], dtype=F64), ValueError, r"`t`.*NaN"),   # NaN
    (torch.tensor([0.0, float("inf")], dtype=F64), ValueError, r"`t`.*inf"),        # inf
    (torch.tensor([0.0, 1.0], dtype=torch.complex128), TypeError, r"`t`"),         # complex
])
def test_bad_t(t, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(t=t)


# ---------------------------------------------------------------------------------------------------
# Tolerances
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(rtol=-1e-3), ValueError, r"`rtol`"),
    (dict(atol=-1e-9), ValueError, r"`atol`"),
    (dict(rtol=float("nan")), ValueError, r"`rtol`"),
    (dict(atol=float("nan")), ValueError, r"`atol`"),
    (dict(rtol=float("inf")), ValueError, r"`rtol`"),
    (dict(rtol="1e-3"), TypeError, r"`rtol`"),
    (dict(atol=None), TypeError, r"`atol`"),
    (dict(rtol=torch.tensor([1e-3, 1e-4])), ValueError, r"`rtol`"),  # per-element tensors: not for a tensor y0
    (dict(rtol=[1e-3, 1e-4]), ValueError, r"`rtol`"),                # a sequence for a single-tensor y0
])
def test_bad_tolerance(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(**kwargs)


def test_bad_tolerance_sequence_for_tuple():
    y0 = (Y0, Y0[:1])

    def f(t, s):
        return -s[0], -s[1]

    call(f, y0, rtol=[1e-6, 1e-5], atol=(1e-8, 1e-7))  # sanity: one per element is fine
    with pytest.raises(ValueError, match=r"`rtol`"):
        call(f, y0, rtol=[1e-6, 1e-5, 1e-4])
    with pytest.raises(ValueError, match=r"`atol`"):
        call(f, y0, atol=[1e-8])
    with pytest.raises(ValueError, match=r"`rtol\[1\]`"):
        call(f, y0, rtol=[1e-6, -1.0])
    with pytest.raises(ValueError, match=r"`atol\[0\]`"):
        call(f, y0, atol=[float("nan"), 1e-8])


# ---------------------------------------------------------------------------------------------------
# method and options
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["rk45", "DOPRI5", "adams", 5])
def test_unknown_method(method):
    with pytest.raises(ValueError, match=r"`method`"):
        call(method=method)


@pytest.mark.parametrize("options, exc, pattern", [
    (dict(step_size=0.1), ValueError, r"options.*step_size"),        # fixed-grid option for an adaptive method
    (dict(frist_step=0.1), ValueError, r"options.*frist_step"),      # typo
    (dict(first_step=0.0), ValueError, r"first_step"),
    (dict(first_step=-0.1), ValueError, r"first_step"),
    (dict(first_step=float("nan")), ValueError, r"first_step"),
    (dict(min_step=-1.0), ValueError, r"min_step"),
    (dict(min_step=0.5, max_step=0.1), ValueError, r"max_step"),
    (dict(max_step=0.0), ValueError, r"max_step"),
    (dict(safety=0.0), ValueError, r"safety"),
    (dict(dfactor=1.5), ValueError, r"dfactor"),
    (dict(dfactor=0.0), ValueError, r"dfactor"),
    (dict(ifactor=0.5), ValueError, r"ifactor"),
    (dict(max_num_steps=0), ValueError, r"max_num_steps"),
    (dict(max_num_steps=-3), ValueError, r"max_num_steps"),
    (dict(max_num_steps=2.5), ValueError, r"max_num_steps"),
    (dict(dtype=torch.float32), ValueError, r"dtype"),
    (dict(norm="rms"), TypeError, r"norm"),
    (dict(norm=3.0), TypeError, r"norm"),
    (dict(step_t=torch.tensor([0.5, float("nan")], dtype=F64)), ValueError, r"step_t"),
    (dict(jump_t=torch.zeros(2, 2, dtype=F64)), ValueError, r"jump_t"),
    (dict(jump_t="0.5"), TypeError, r"jump_t"),
    (dict(step_t=[0.5], jump_t=[0.5]), ValueError, r"step_t.*jump_t|jump_t.*step_t"),
    (dict(first_step="0.1"), TypeError, r"first_step"),
])
def test_bad_options(options, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(options=options)


@pytest.mark.parametrize("options", [[("first_step", 0.1)], "first_step=0.1", 0.1])
def test_options_not_a_dict(options):
    with pytest.raises(TypeError, match=r"`options`"):
        call(options=options)


def test_valid_options_accepted():
    y = call(options=dict(first_step=0.01, min_step=0.0, max_step=0.5, safety=0.8, ifactor=5.0, dfactor=0.3,
                          max_num_steps=1000, dtype=torch.float64, norm=lambda x: x.abs().max(),
                          step_t=[0.3], jump_t=torch.tensor([0.6], dtype=F64)))
    torch.testing.assert_close(y, Y0 * torch.exp(-T)[:, None], rtol=1e-6, atol=1e-8)
    assert call(options=None).shape == (5, 2)


# ---------------------------------------------------------------------------------------------------
# y0
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("y0, exc, pattern", [
    (torch.tensor([1, 2]), TypeError, r"`y0`"),                                    # integer
    (torch.tensor([True, False]), TypeError, r"`y0`"),                             # bool
    (torch.tensor([1.0, 2.0], dtype=torch.float16), TypeError, r"`y0`"),           # float16
    (torch.tensor([1.0, 2.0], dtype=torch.bfloat16), TypeError, r"`y0`"),          # bfloat16
    (torch.tensor([1.0, 2.0], dtype=torch.complex64), TypeError, r"`y0`"),         # complex
    ([1.0, 2.0], TypeError, r"`y0`"),                                              # list
    (1.0, TypeError, r"`y0`"),                                                     # number
    (None, TypeError, r"`y0`"),
    (torch.tensor([1.0, float("nan")], dtype=F64), ValueError, r"`y0`.*NaN"),      # NaN
    (torch.tensor([float("-inf"), 1.0], dtype=F64), ValueError, r"`y0`.*inf"),     # inf
])
def test_bad_y0(y0, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(y0=y0)


def test_bad_tuple_y0():
    with pytest.raises(ValueError, match=r"`y0`"):
        call(lambda t, s: s, ())
    with pytest.raises(TypeError, match=r"`y0\[1\]`"):
        call(lambda t, s: s, (Y0, [1.0]))
    with pytest.raises(TypeError, match=r"`y0\[1\]`"):
        call(lambda t, s: s, (Y0, torch.tensor([1, 2])))
    with pytest.raises(ValueError, match=r"`y0\[0\]`.*NaN"):
        call(lambda t, s: s, (torch.tensor([float("nan")], dtype=F64), Y0))
    with pytest.raises(TypeError, match=r"`y0`.*dtype"):
        call(lambda t, s: s, (Y0, Y0.float()))


def test_empty_state():
    # A state with no elements (an empty batch) is not an error: the result is empty and correctly shaped.
    with watchdog(30):
        y = call(y0=torch.empty(0, 2, dtype=F64))
    assert y.shape == (5, 0, 2) and y.dtype == F64
    assert fastdiffeq.last_stats().status == "success"


def test_zero_tolerances_fail_cleanly():
    # rtol = atol = 0 makes every error ratio infinite: a typed solver error at t0, no hang.
    with watchdog(30):
        with pytest.raises((ValueError, SolverError)):
            call(rtol=0.0, atol=0.0)


# ---------------------------------------------------------------------------------------------------
# func
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("func", [None, 3, "decay", torch.zeros(2)])
def test_func_not_callable(func):
    with pytest.raises(TypeError, match=r"`func`"):
        call(func=func)


@pytest.mark.parametrize("func, exc, pattern", [
    (lambda t, y: torch.zeros(3, dtype=F64), ValueError, r"func.*shape"),            # wrong shape
    (lambda t, y: torch.zeros(2, 1, dtype=F64), ValueError, r"func.*shape"),         # right numel, wrong shape
    (lambda t, y: -y.float(), TypeError, r"func.*dtype"),                            # wrong dtype
    (lambda t, y: (-y).tolist(), TypeError, r"func.*Tensor"),                        # not a tensor
    (lambda t, y: None, TypeError, r"func.*Tensor"),
    (lambda t, y: (-y,), TypeError, r"func.*Tensor"),                                # a tuple for a tensor y0
])
def test_func_bad_output(func, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(func=func)


def test_func_bad_output_later_in_the_solve():
    # A wrong output after a few evaluations is caught too (not only at t0).
    def f(t, y):
        return -y if float(t) < 0.5 else torch.zeros(5, dtype=F64)

    with pytest.raises(ValueError, match=r"func.*shape"):
        call(func=f)


def test_tuple_func_bad_output():
    y0 = (Y0, Y0[:1].clone())
    with pytest.raises(TypeError, match=r"func.*tuple"):
        call(lambda t, s: -s[0], y0)                                      # a tensor for a tuple y0
    with pytest.raises(TypeError, match=r"func.*tuple"):
        call(lambda t, s: (-s[0],), y0)                                   # wrong number of elements
    with pytest.raises(ValueError, match=r"func.*\[1\].*shape"):
        call(lambda t, s: (-s[0], -s[0]), y0)                             # element 1 has the wrong shape
    with pytest.raises(TypeError, match=r"func.*\[0\].*dtype"):
        call(lambda t, s: (-s[0].float(), -s[1]), y0)                     # element 0 has the wrong dtype
    with pytest.raises(TypeError, match=r"func.*\[1\].*Tensor"):
        call(lambda t, s: (-s[0], 1.0), y0)                               # element 1 is not a tensor


@pytest.mark.parametrize("norm, exc, pattern", [
    (lambda x: x.abs(), ValueError, r"norm"),            # one value per element instead of one per group
    (lambda x: "small", TypeError, r"norm"),             # not a number
])
def test_bad_norm_output(norm, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(options=dict(norm=norm))


def test_exception_in_func_propagates_unchanged():
    class MyError(Exception):
        pass

    def f(t, y):
        if float(t) > 0.3:
            raise MyError("boom from the vector field")
        return -y

    with pytest.raises(MyError, match="boom"):
        call(func=f)
    # The solver is still usable afterwards.
    assert call().shape == (5, 2)


# ---------------------------------------------------------------------------------------------------
# Not implemented yet / gradients
# ---------------------------------------------------------------------------------------------------

def test_event_fn_needs_two_times():
    # Events are supported (tests/test_events.py); torchdiffeq's rule: t holds [t0, t1] only.
    with pytest.raises(ValueError, match=r"event_fn"):
        call(event_fn=lambda t, y: y[0] - 0.5)


def test_y0_requiring_grad():
    # Gradients are supported now (the brief's NotImplementedError predates them): a y0 that requires grad
    # gives a differentiable result equal to the no-grad solve, with the analytic d y(t)/d y0 = exp(-t).
    y0 = Y0.clone().requires_grad_(True)
    y = call(y0=y0)
    assert y.requires_grad
    with torch.no_grad():
        y_ng = call(y0=y0)
    assert not y_ng.requires_grad
    torch.testing.assert_close(y.detach(), y_ng, rtol=1e-12, atol=1e-14)
    (g,) = torch.autograd.grad(y[-1].sum(), y0)
    torch.testing.assert_close(g, torch.full_like(Y0, math.exp(-1.0)), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------------
# Solver failures: typed errors with .t and .stats, never a hang
# ---------------------------------------------------------------------------------------------------

def _check_solver_error(err, status):
    assert isinstance(err, SolverError) and isinstance(err, RuntimeError)
    assert isinstance(err.t, float) and math.isfinite(err.t)
    s = err.stats
    assert s is not None and s.status == status
    assert s.t_final == err.t
    assert err.n_steps == s.n_accepted + s.n_rejected
    assert fastdiffeq.last_stats() == s
    assert "fastdiffeq" in str(err)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad_enabled"])
def test_max_steps_error(method, grad):
    with watchdog(60), torch.set_grad_enabled(grad):
        with pytest.raises(MaxStepsError, match=r"max_num_steps") as info:
            call(vdp, torch.tensor([2.0, 0.0], dtype=F64), torch.tensor([0.0, 10.0], dtype=F64), method=method,
                 options=dict(max_num_steps=3))
    err = info.value
    _check_solver_error(err, "max_steps")
    assert err.n_steps == 3
    assert 0.0 < err.t < 1.0  # three small steps from t0 = 0


def test_max_num_steps_counts_per_output_interval():
    # torchdiffeq semantics: the limit applies between two consecutive output times.
    t = torch.linspace(0.0, 10.0, 1001, dtype=F64)
    y = call(vdp, torch.tensor([2.0, 0.0], dtype=F64), t, options=dict(max_num_steps=3))
    assert y.shape == (1001, 2)
    assert fastdiffeq.last_stats().n_steps > 3


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad_enabled"])
def test_blow_up(method, dtype, grad):
    # y' = y^2, y(0) = 1: y = 1/(1 - t) blows up at t = 1; asked to integrate to t = 2.
    with watchdog(120), torch.set_grad_enabled(grad):
        with pytest.raises((StepSizeUnderflowError, NonFiniteStateError)) as info:
            call(lambda t, y: y * y, torch.tensor([1.0], dtype=dtype), torch.tensor([0.0, 2.0], dtype=F64),
                 method=method)
    err = info.value
    _check_solver_error(err, "step_underflow" if isinstance(err, StepSizeUnderflowError) else "non_finite")
    assert abs(err.t - 1.0) < 1e-4, err.t


def _nan_after_half(t, y):
    return -y if float(t) <= 0.5 else torch.full_like(y, float("nan"))


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
@pytest.mark.parametrize("reverse", [False, True])
def test_non_finite_field(method, reverse):
    if reverse:
        f = lambda t, y: -y if float(t) >= 0.5 else torch.full_like(y, float("nan"))  # noqa: E731
        t = torch.tensor([1.0, 0.0], dtype=F64)
    else:
        f, t = _nan_after_half, torch.tensor([0.0, 1.0], dtype=F64)
    with watchdog(60):
        with pytest.raises(NonFiniteStateError, match=r"NaN|non-finite") as info:
            call(f, Y0, t, method=method)
    err = info.value
    _check_solver_error(err, "non_finite")
    assert abs(err.t - 0.5) < 1e-3, err.t


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad_enabled"])
def test_non_finite_field_fails_cleanly_near_the_bad_time(method, grad):
    # Whatever the error class, the solve stops with a SolverError at (not after) t = 0.5, quickly.
    with watchdog(60), torch.set_grad_enabled(grad):
        with pytest.raises(SolverError) as info:
            call(_nan_after_half, Y0, torch.tensor([0.0, 1.0], dtype=F64), method=method)
    err = info.value
    assert isinstance(err, (NonFiniteStateError, StepSizeUnderflowError))
    assert 0.45 <= err.t <= 0.5 + 1e-12, err.t


def test_non_finite_at_t0():
    with watchdog(30):
        with pytest.raises(NonFiniteStateError) as info:
            call(lambda t, y: y * float("inf"), Y0, T)
    err = info.value
    _check_solver_error(err, "non_finite")
    assert err.t == 0.0 and err.stats.nfe == 1


def test_underflow_with_tight_tolerances():
    # The same blow-up at rtol = atol = 1e-12 must also end in a typed error (here through underflow).
    with watchdog(120):
        with pytest.raises((StepSizeUnderflowError, NonFiniteStateError)) as info:
            call(lambda t, y: y * y, torch.tensor([1.0], dtype=F64), torch.tensor([0.0, 2.0], dtype=F64),
                 rtol=1e-12, atol=1e-12)
    assert abs(info.value.t - 1.0) < 1e-4


def test_reverse_blow_up():
    # y' = -y^2 from t = 0 backwards: y = 1/(1 + t) blows up at t = -1.
    with watchdog(120):
        with pytest.raises((StepSizeUnderflowError, NonFiniteStateError)) as info:
            call(lambda t, y: -y * y, torch.tensor([1.0], dtype=F64), torch.tensor([0.0, -2.0], dtype=F64))
    assert abs(info.value.t + 1.0) < 1e-4, info.value.t


# ---------------------------------------------------------------------------------------------------
# F12: entry points validate before they index; no hang, no silent wrong answer
# ---------------------------------------------------------------------------------------------------

from fastdiffeq import Status, _C  # noqa: E402


def _rk_solve(y0=None, t_out=None, **over):
    """_C.rk_solve with valid defaults for a [1, 2] decay problem; `over` replaces arguments."""
    y0 = torch.tensor([[1.0, 2.0]], dtype=F64) if y0 is None else y0
    t_out = T if t_out is None else t_out
    kw = dict(method="dopri5", rtol=[1e-7], atol=[1e-9], segment_ends=[2], control=_C.ControllerParams(),
              first_step=0.0, max_num_steps=1000, step_t=[], jump_t=[], norm=None, user_shape=[2], joint=True,
              check_every=1, mode="masked")
    kw.update(over)
    options = _C.RkOptions()  # the solve's settings travel as one object (solver::RkOptions)
    for name in ("method", "rtol", "atol", "segment_ends", "control", "first_step", "max_num_steps", "step_t",
                 "jump_t", "check_every"):
        setattr(options, name, kw.pop(name))
    return _C.rk_solve(decay, y0, t_out, options, **kw)


def test_rk_solve_entry_point_sanity():
    res = _rk_solve()
    assert int(res["status"][0]) == Status.SUCCESS and res["ys"].shape == (5, 1, 2)


@pytest.mark.parametrize("over, pattern", [
    # Tolerance lists shorter than the segments, or empty (these indexed before any check: SIGSEGV / abort).
    (dict(rtol=[1e-7], atol=[1e-9], segment_ends=[1, 2]), r"rtol and atol must have one value per segment \(2\)"),
    (dict(rtol=[], atol=[]), r"rtol and atol must have one value per segment \(1\), got 0 and 0"),
    (dict(rtol=[1e-7, 1e-7], atol=[1e-9], segment_ends=[1, 2]), r"got 2 and 1"),
    # Decreasing, negative or out-of-range segment ends.
    (dict(rtol=[1e-7] * 2, atol=[1e-9] * 2, segment_ends=[2, 1]), r"segment_ends must be non-decreasing"),
    (dict(rtol=[1e-7] * 2, atol=[1e-9] * 2, segment_ends=[-1, 2]), r"segment_ends must be non-decreasing from 0"),
    (dict(segment_ends=[5]), r"segment_ends must be non-decreasing from 0 and at most D = 2"),
    (dict(segment_ends=[1]), r"segment_ends must end at D = 2"),
    (dict(rtol=[float("nan")]), r"rtol must be finite and >= 0"),
    (dict(atol=[-1.0]), r"atol must be >= 0"),
    # The controller's range rules (max_step=0 gave status 1 and NaN outputs; safety=2 rejected forever).
    (dict(control=_C.ControllerParams(max_step=0.0)), r"control.max_step must be > 0"),
    (dict(control=_C.ControllerParams(safety=2.0)), r"control.safety must be in \(0, 1\]"),
    (dict(control=_C.ControllerParams(dfactor=1.0)), r"control.dfactor must be in \(0, 1\)"),
    (dict(first_step=float("nan")), r"first_step must be finite and >= 0"),
    (dict(max_num_steps=0), r"max_num_steps must be positive"),
    (dict(check_every=0), r"check_every must be in \[1, 64\], got 0"),
    (dict(check_every=2**62), r"check_every must be in \[1, 64\]"),
    (dict(step_t=[float("inf")]), r"step_t must be finite"),
])
def test_rk_solve_validates_before_indexing(over, pattern):
    with watchdog(30):
        with pytest.raises(ValueError, match=pattern):
            _rk_solve(**over)


@pytest.mark.parametrize("t_out, pattern", [
    (torch.tensor([0.0, 0.5, 0.2, 1.0], dtype=F64), r"t_out must be strictly monotone.*row 0 has t_out\[1\] = 0.5"),
    (torch.tensor([0.0, 0.0], dtype=F64), r"t_out must be strictly monotone"),
    (torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64), r"t_out must be \[T\] or \[B, T\] with B = 1"),
    (torch.tensor([0.0, float("nan")], dtype=F64), r"t_out contains NaN or inf"),
    (torch.tensor([], dtype=F64), r"t_out must hold at least one time"),
    (torch.tensor([0.0, 1.0], dtype=torch.float32), r"t_out must be a float64 tensor"),
])
def test_rk_solve_validates_t_out(t_out, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        _rk_solve(t_out=t_out)


def test_rk_solve_per_sample_t_out_must_be_monotone_per_row():
    y0 = torch.ones(2, 2, dtype=F64)
    t_out = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.7, 0.6]], dtype=F64)
    with pytest.raises(ValueError, match=r"row 1 has t_out\[1\] = 0.7 and t_out\[2\] = 0.6"):
        _rk_solve(y0=y0, t_out=t_out, joint=False, user_shape=[2, 2])


def test_rk_solve_unreachable_max_step_raises_at_once():
    # max_step=1e-300 on [0, 1] made no progress for as long as one waited.
    with watchdog(10):
        with pytest.raises(ValueError, match=r"max_step = 1e-300 cannot reach t_out\[1\]"):
            _rk_solve(t_out=torch.tensor([0.0, 1.0], dtype=F64), control=_C.ControllerParams(max_step=1e-300))
        with pytest.raises(ValueError, match=r"options\['max_step'\]|max_step = 1e-300 cannot reach"):
            call(t=torch.tensor([0.0, 1.0], dtype=F64), options=dict(max_step=1e-300))


def test_checkpoint_backward_validates_grad_ys():
    # Extra grad_ys rows were ignored and grad_y0 came back with the wrong shape.
    res = _rk_solve(mode="record")
    tape = res["tape"]
    ok = torch.ones(5, 1, 2, dtype=F64)
    grad_y0, _, _ = _C.rk_checkpoint_backward(decay, tape, ok, [], [2], True)
    assert grad_y0.shape == (1, 2)
    for bad, exc, pattern in [
        (torch.ones(6, 1, 2, dtype=F64), ValueError, r"grad_ys must have shape \[5, 1, 2\]"),
        (torch.ones(5, 2, dtype=F64), ValueError, r"grad_ys must have shape \[5, 1, 2\]"),
        (torch.ones(5, 1, 2, dtype=torch.float32), TypeError, r"grad_ys must have dtype"),
    ]:
        with pytest.raises(exc, match=pattern):
            _C.rk_checkpoint_backward(decay, tape, bad, [], [2], True)


@pytest.mark.parametrize("grid", ["step_t", "jump_t"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad_enabled"])
def test_zero_step_on_a_grid_point_is_underflow(grid, grad):
    # t = [1e18, 1e18 + 1e4] with step_t/jump_t at 1e18 + 5e3: the clipped first step was exactly 0 and
    # counted as success ([1, 2] output instead of [2, 2], a NaN row under no_grad).
    t = torch.tensor([1e18, 1e18 + 1e4], dtype=F64)
    with watchdog(30), torch.set_grad_enabled(grad):
        with pytest.raises(StepSizeUnderflowError) as info:
            call(y0=Y0.clone().requires_grad_(grad), t=t, options={grid: [1e18 + 5e3]})
    _check_solver_error(info.value, "step_underflow")
    # Without the grid point the same call was already an underflow.
    with pytest.raises(StepSizeUnderflowError):
        call(t=t)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad_enabled"])
def test_huge_field_values_do_not_overflow_the_norm(grad):
    # A field returning 1e300 overflowed the RMS norm: the initial step became 0 and odeint returned
    # [1, nan, nan, nan, nan] with status success. y' = 1e300 has the exact solution y0 + 1e300 t.
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=grad)
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)
    with watchdog(30), torch.set_grad_enabled(grad):
        y = call(lambda s, y: torch.full_like(y, 1e300), y0, t)
    assert y.shape == (5, 1)
    torch.testing.assert_close(y.detach()[:, 0], 1.0 + 1e300 * t, rtol=1e-12, atol=0)
    assert fastdiffeq.last_stats().status == "success"


@pytest.mark.parametrize("options, pattern", [
    (dict(safety=2.0), r"options\['safety'\] must be in \(0, 1\], got 2.0"),      # rejected forever before
    (dict(dfactor=1.0), r"options\['dfactor'\] must be in \(0, 1\), got 1.0"),
    (dict(ifactor=1.0), r"options\['ifactor'\] must be > 1"),
    (dict(ifactor=float("inf")), r"options\['ifactor'\] must be > 1 and finite"),
    (dict(max_step=float("nan")), r"options\['max_step'\] must not be NaN"),
    (dict(min_step=10**400), r"options\['min_step'\] must be >= 0 and finite"),
    (dict(max_num_steps=2**63), r"options\['max_num_steps'\] must be at most 2\*\*63 - 1"),
    (dict(max_num_steps=2**63 - 1), None),                                           # the largest allowed
    (dict(first_step=10**400), r"options\['first_step'\] must be > 0 and finite"),
    (dict(step_t=[10**400]), r"options\['step_t'\] must be finite"),
])
def test_option_ranges_name_the_option(options, pattern):
    with watchdog(30):
        if pattern is None:
            assert call(options=options).shape == (5, 2)
            return
        with pytest.raises(ValueError, match=pattern):
            call(options=options)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(atol=10**400), r"`atol` must be finite and >= 0"),      # OverflowError before
    (dict(rtol=[10**400]), r"`rtol\[0\]` must be finite and >= 0"),
])
def test_huge_integer_tolerances_name_the_argument(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(**kwargs)


def test_meta_t_names_the_argument():
    # "Cannot copy out of meta tensor" before.
    with pytest.raises(ValueError, match=r"`t` must be on a CPU or CUDA device, got meta"):
        call(t=T.to("meta"))
    with pytest.raises(ValueError, match=r"`y0` must be on a CPU or CUDA device"):
        call(y0=Y0.to("meta"))


def test_status_enum_comes_from_the_compiled_core():
    assert {s.name.lower(): int(s) for s in Status} == _C.status_codes
    assert fastdiffeq.Status is Status and Status.SUCCESS != Status.RUNNING


@pytest.mark.parametrize("over, pattern", [
    (dict(user_shape=[3]), r"user_shape \[3\] does not hold the state's 2 elements"),
    (dict(user_shape=[-1, -2]), r"user_shape must have sizes >= 0"),
    (dict(user_shape=[2**62, 2**62]), r"does not hold the state's 2 elements"),
])
def test_rk_solve_validates_user_shape(over, pattern):
    # A mismatched user_shape reached torch's view() ("shape '[..]' is invalid for input of size N").
    with pytest.raises(ValueError, match=pattern):
        _rk_solve(**over)


def test_rk_solve_joint_mode_needs_one_group():
    with pytest.raises(ValueError, match=r"joint mode .* needs B == 1, got B = 2"):
        _rk_solve(y0=torch.ones(2, 2, dtype=F64), user_shape=[2, 2], joint=True)


@pytest.mark.parametrize("mode", ["masked", "graph", "record"])
def test_failed_solve_outputs_keep_their_shape_with_nan_rows(mode):
    """A solve that stops early returns ys [T, B, D] with the rows it did not reach as NaN (graph mode gave
    None, a non-finite f(t0) a [1, B, D] tensor)."""

    def blows_up(t, y):
        return y * float("nan") if float(t) > 0.6 else -y

    res = _rk_solve(mode=mode, **{} if mode != "graph" else dict(y0=torch.tensor([[1.0, 2.0]], dtype=F64)))
    assert res["ys"].shape == (5, 1, 2)
    opts = _C.RkOptions()
    opts.rtol, opts.atol, opts.segment_ends = [1e-7], [1e-9], [2]
    res = _C.rk_solve(blows_up, torch.tensor([[1.0, 2.0]], dtype=F64), T, opts, norm=None, user_shape=[2],
                      joint=True, mode=mode)
    assert int(res["status"][0]) == Status.NON_FINITE
    ys = res["ys"]
    assert ys.shape == (5, 1, 2)
    assert torch.isfinite(ys[:3]).all() and torch.isnan(ys[3:]).all()
    res = _C.rk_solve(lambda t, y: y * float("nan"), torch.tensor([[1.0, 2.0]], dtype=F64), T, opts, norm=None,
                      user_shape=[2], joint=True, mode=mode)
    assert int(res["status"][0]) == Status.NON_FINITE and res["ys"].shape == (5, 1, 2)
    assert torch.isnan(res["ys"][1:]).all()


def test_checkpoint_and_adjoint_entry_points_validate_their_objects():
    res = _rk_solve(mode="record")
    grad_ys = torch.ones(5, 1, 2, dtype=F64)
    with pytest.raises(TypeError, match=r"tape must be an RkTape"):
        _C.rk_checkpoint_backward(decay, res["ys"], grad_ys, [], [2], True)
    theta = torch.tensor(0.5, dtype=F64)
    with pytest.raises(ValueError, match=r"params\[0\] does not require grad"):
        _C.rk_checkpoint_backward(decay, res["tape"], grad_ys, [theta], [2], True)
    opts = _C.RkOptions()
    opts.rtol, opts.atol, opts.segment_ends = [1e-7], [1e-9], [2]
    kw = dict(seminorm=False, norm=None, user_shape=[2], joint=True)
    with pytest.raises(TypeError, match=r"ys must be a torch.Tensor or None"):
        _C.rk_adjoint(decay, [], T, res["tape"], None, grad_ys, opts, trajectory="resolve", **kw)
    with pytest.raises(ValueError, match=r"needs the forward outputs ys"):
        _C.rk_adjoint(decay, [], T, None, None, grad_ys, opts, trajectory="resolve", **kw)
    with pytest.raises(ValueError, match=r"needs a dense record"):
        _C.rk_adjoint(decay, [], T, None, res["tape"], grad_ys, opts, trajectory="interpolated", **kw)
    with pytest.raises(ValueError, match=r"grad_ys must match the tape's state"):
        _C.rk_adjoint(decay, [], T, None, res["tape"], torch.ones(5, 1, 3, dtype=F64), opts,
                      trajectory="interpolated", **dict(kw, user_shape=[3]))
    with pytest.raises(ValueError, match=r"trajectory must be 'resolve' or 'interpolated'"):
        _C.rk_adjoint(decay, [], T, res["ys"], None, grad_ys, opts, trajectory="bogus", **kw)
    with pytest.raises(ValueError, match=r"params\[0\] does not require grad"):
        _C.rk_adjoint(decay, [theta], T, res["ys"], None, grad_ys, opts, trajectory="resolve", **kw)
    opts.rtol, opts.atol, opts.segment_ends = [1e-7, 1e-7], [1e-9, 1e-9], [1, 2]
    with pytest.raises(ValueError, match=r"the adjoint takes one rtol and one atol, got 2 and 2"):
        _C.rk_adjoint(decay, [], T, res["ys"], None, grad_ys, opts, trajectory="resolve", **kw)


@pytest.mark.parametrize("mode", ["masked", "graph"])
def test_overflowing_state_is_never_accepted(mode):
    """A first step so large that y1 overflows float32 used to be accepted with error ratio 0 (a constant field:
    every stage agrees, err = 0, and the tolerance max(|y0|, |y1|) was inf), ending in 'success' with inf
    outputs. A non-finite y1 is now a rejected step: the step shrinks until the state is finite, or, when 10
    attempts in a row stay non-finite, the solve stops with NON_FINITE."""

    def solve(first_step):
        opts = _C.RkOptions()
        opts.rtol, opts.atol, opts.segment_ends, opts.first_step = [1e-6], [1e-8], [2], first_step
        return _C.rk_solve(lambda t, y: torch.ones_like(y), torch.zeros(1, 2), torch.tensor([0.0, 1.0], dtype=F64),
                           opts, norm=None, user_shape=[2], joint=True, mode=mode)

    res = solve(1e40)  # overflows float32 (max 3.4e38) for two attempts, then shrinks into range
    assert int(res["status"][0]) == Status.SUCCESS
    assert int(res["counters"][0, fastdiffeq._status.Counter.REJECTED]) >= 2
    torch.testing.assert_close(res["ys"][-1], torch.ones(1, 2))
    res = solve(1e300)  # 0.2**10 cannot bring it into range: a clear failure, never 'success' with inf
    assert int(res["status"][0]) == Status.NON_FINITE


def test_user_norm_returning_a_meta_tensor_is_a_clear_error():
    with pytest.raises(ValueError, match=r"options\['norm'\] returned a tensor on meta"):
        fastdiffeq.odeint(decay, torch.ones(2, dtype=F64), T, options=dict(norm=lambda x: torch.zeros((), device="meta")))


def _options(**fields):
    opts = _C.RkOptions()
    opts.rtol, opts.atol, opts.segment_ends = [1e-2], [1e-2], [1]
    for k, v in fields.items():
        setattr(opts, k, v)
    return opts


@pytest.mark.parametrize("B, check_every", [(2, 1), (1, 8)])
def test_a_stopped_sample_writes_no_more_outputs(B, check_every):
    """After a sample stops (here max_num_steps), later iterations of the masked loop (other samples still
    running, or the CUDA-style check_every > 1) used to write the rows its frozen step passed: wrong values
    instead of NaN. A stopped sample's step is now 0."""
    y0 = torch.ones(B, 1, dtype=F64)
    t = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 0.1, 1.0, 10.0]], dtype=F64)[:B]
    if B == 1:
        t = t[0]
    res = _C.rk_solve(lambda tt, y: -y, y0, t, _options(max_num_steps=1, check_every=check_every), norm=None,
                      user_shape=[B, 1], joint=False, mode="masked")
    ys = res["ys"][:, :, 0]
    for b in range(B):
        assert int(res["status"][b]) == Status.MAX_STEPS
        reached = int((ys[:, b] == ys[:, b]).sum())  # rows before the failure
        assert torch.isnan(ys[reached:, b]).all()
        tb = t[b] if t.dim() == 2 else t
        torch.testing.assert_close(ys[:reached, b], torch.exp(-tb[:reached]), rtol=0, atol=0.05)  # rtol=atol=1e-2
    assert float(res["h"].abs().max()) == 0.0  # stopped samples do not move


def test_masked_loop_lands_exactly_on_a_jump_point():
    """A step cut onto a jump_t point g could end one ulp short of g in the masked loop (t0 + (g - t0) != g),
    then take a one-ulp step and evaluate f 'after the jump' at g itself: 111 evaluations where the host
    loop needs 14. Both loops now land on g and evaluate f just past it."""
    t0, g = 0.4182316567018517, 1.6133804742970745
    nfe, y_end = {}, {}
    for mode in ("masked", "graph"):
        calls = []

        def f(tt, y):
            calls.append(float(tt))
            return (tt > g).to(y.dtype).reshape(1, 1) + 0 * y

        with torch.no_grad():
            res = _C.rk_solve(f, torch.zeros(1, 1, dtype=F64), torch.tensor([t0, 3.0], dtype=F64),
                              _options(rtol=[1e-6], atol=[1e-9], jump_t=[g], first_step=5.0), norm=None,
                              user_shape=[1, 1], joint=False, mode=mode)
        assert g not in calls and math.nextafter(g, 10.0) in calls, mode
        nfe[mode], y_end[mode] = res["nfe"], float(res["ys"][-1, 0, 0])
    assert nfe["masked"] == nfe["graph"] < 30, nfe
    assert y_end["masked"] == pytest.approx(3.0 - g, rel=1e-9)


@pytest.mark.parametrize("mode", ["masked", "graph", "record"])
def test_one_group_accepts_a_2d_output_grid(mode):
    # [1, T] passes validation for B == 1; the host-driven loops sliced it as [T] and failed.
    flat = _rk_solve(mode=mode)["ys"]
    rows = _rk_solve(mode=mode, t_out=T.unsqueeze(0), joint=False, user_shape=[1, 2])["ys"]
    torch.testing.assert_close(rows, flat, rtol=0, atol=0)


def test_checkpoint_tape_does_not_alias_y0():
    """Changing y0 in place between the forward and the backward pass must not change the gradient (the tape
    used to keep a view of the caller's y0)."""
    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)

    def grad(modify):
        y0 = torch.tensor([1.0, 0.5], dtype=F64)
        ys = fastdiffeq.odeint(lambda tt, y: A @ y, y0, t, gradient="checkpoint", gradient_params=(A,))
        if modify:
            y0.mul_(3.0)
        return torch.autograd.grad(ys.sum(), A)[0]

    torch.testing.assert_close(grad(True), grad(False), rtol=0, atol=0)
