"""fastdiffeq.odeint against closed-form solutions.

Every expected value below comes from an exact solution (or torch.linalg.matrix_exp), never from a
solver. Errors are measured against the tolerance scale of the solve,
    max |y - y_exact| <= K * (atol + rtol * max |y_exact|),
with K a small multiple (global error grows with the length of the interval; 30 covers every method,
dtype and direction here with margin while still catching any wrong stage, weight, time or interpolant,
which gives errors orders of magnitude larger).
"""

from __future__ import annotations

import math

import pytest
import torch

import fastdiffeq

pytestmark = pytest.mark.usefixtures("single_thread")

METHODS = ["dopri5", "tsit5", "bosh3"]
DTYPES = [torch.float64, torch.float32]
TOLS = {torch.float64: (1e-8, 1e-10), torch.float32: (1e-5, 1e-6)}
K = 30.0


# ---------------------------------------------------------------------------------------------------
# Problems: (func, exact(t64) -> [T, *shape] float64, t_start, t_end)
# ---------------------------------------------------------------------------------------------------

# (1) y' = a + (y - (a t + b))^5 with y(t0) = a t0 + b: the exact solution is the line y = a t + b.
A_CONST, B_CONST = 0.2, 3.0


def f_const(t, y):
    return A_CONST + (y - (A_CONST * t + B_CONST)) ** 5


def exact_const(t):
    return A_CONST * t + B_CONST


# (2) y' = 2y/t + t^4 sin(2t) - t^2 + 4t^3 on [1, 8]. Linear: (y/t^2)' = y'/t^2 - 2y/t^3
#     = t^2 sin(2t) - 1 + 4t, and  int t^2 sin(2t) dt = -t^2 cos(2t)/2 + t sin(2t)/2 + cos(2t)/4, so
#     y = t^2 (-t^2 cos(2t)/2 + t sin(2t)/2 + cos(2t)/4 - t + 2t^2 + C), here with C = pi - 1/4.
#     (Checked with scipy: solve_ivp(DOP853, rtol=atol=1e-12) from t=1 to 8 agrees with this y to
#     ~1e-9 relative; test_sine_exact_solution_is_exact below does that and checks the ODE residual.)
def f_sine(t, y):
    return 2 * y / t + t ** 4 * torch.sin(2 * t) - t ** 2 + 4 * t ** 3


def exact_sine(t):
    return (-0.5 * t ** 4 * torch.cos(2 * t) + 0.5 * t ** 3 * torch.sin(2 * t) + 0.25 * t ** 2 * torch.cos(2 * t)
            - t ** 3 + 2 * t ** 4 + (math.pi - 0.25) * t ** 2)


# (3) 10-D linear y' = A y: A = skew + negative semi-definite, so every eigenvalue has Re <= 0.
def _linear_system():
    g = torch.Generator().manual_seed(1234)
    M = torch.randn(10, 10, generator=g, dtype=torch.float64)
    N = torch.randn(10, 10, generator=g, dtype=torch.float64)
    A = (M - M.T) / 2 - 0.02 * N @ N.T
    y0 = torch.randn(10, generator=g, dtype=torch.float64)
    return A, y0


A_LIN, Y0_LIN = _linear_system()


def f_linear(t, y):
    return A_LIN.to(y.dtype) @ y


def exact_linear(t, t0=0.0, y0=Y0_LIN):
    return torch.stack([torch.linalg.matrix_exp(A_LIN * (float(ti) - t0)) @ y0 for ti in t])


# (4) y' = -0.1 exp(-0.1 t): y = exp(-0.1 t) + C (here C = 1), a pure quadrature in t.
def f_exp(t, y):
    return -0.1 * torch.exp(-0.1 * t) * torch.ones_like(y)


def exact_exp(t):
    return torch.exp(-0.1 * t) + 1.0


PROBLEMS = {
    "const": (f_const, exact_const, 0.0, 5.0),
    "sine": (f_sine, exact_sine, 1.0, 8.0),
    "linear": (f_linear, exact_linear, 0.0, 5.0),
    "exp": (f_exp, exact_exp, 0.0, 10.0),
}


def _max_err_over_scale(y, exact, rtol, atol):
    scale = atol + rtol * exact.abs().max()
    return float((y.double() - exact).abs().max() / scale)


# ---------------------------------------------------------------------------------------------------
# Sanity of the references themselves
# ---------------------------------------------------------------------------------------------------

def test_sine_exact_solution_is_exact():
    # The derived closed form satisfies the ODE: compare its derivative (autograd) with f(t, y(t)).
    t = torch.linspace(1.0, 8.0, 57, dtype=torch.float64, requires_grad=True)
    y = exact_sine(t)
    (dy,) = torch.autograd.grad(y.sum(), t)
    with torch.no_grad():
        torch.testing.assert_close(dy, f_sine(t.detach(), y.detach()), rtol=1e-12, atol=1e-9)
    # ... and agrees with an independent high-order integration (scipy DOP853).
    scipy_integrate = pytest.importorskip("scipy.integrate")
    sol = scipy_integrate.solve_ivp(
        lambda s, v: [2 * v[0] / s + s ** 4 * math.sin(2 * s) - s ** 2 + 4 * s ** 3],
        (1.0, 8.0), [float(exact_sine(torch.tensor(1.0, dtype=torch.float64)))],
        method="DOP853", rtol=1e-12, atol=1e-12, t_eval=[2.0, 5.0, 8.0])
    ref = exact_sine(torch.tensor([2.0, 5.0, 8.0], dtype=torch.float64))
    torch.testing.assert_close(torch.from_numpy(sol.y[0]), ref, rtol=1e-9, atol=0)


def test_linear_system_is_dissipative():
    assert float(torch.linalg.eigvals(A_LIN).real.max()) <= 0.0


# ---------------------------------------------------------------------------------------------------
# The main grid: problem x method x dtype x direction
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_analytic(problem, method, dtype, reverse):
    f, exact, a, b = PROBLEMS[problem]
    rtol, atol = TOLS[dtype]
    t = torch.linspace(a, b, 20, dtype=torch.float64)
    if reverse:
        t = t.flip(0)  # from the end to the start; y0 is the exact value at t[0] = b
    t = t.to(dtype)
    ex = exact(t.double())  # evaluated at the times actually requested (float32-rounded for float32)
    y0 = ex[0].to(dtype)
    with torch.no_grad():  # the inference path
        y = fastdiffeq.odeint(f, y0, t, rtol=rtol, atol=atol, method=method)
    stats = fastdiffeq.last_stats()
    assert y.shape == (20, *y0.shape)
    assert y.dtype == dtype
    assert torch.equal(y[0], y0)
    err = _max_err_over_scale(y, ex, rtol, atol)
    assert err <= K, f"{problem}/{method}/{dtype}/{'rev' if reverse else 'fwd'}: error {err:.3g} x tolerance scale"
    assert stats.method == method and stats.status == "success"
    assert stats.n_accepted >= 1
    # The solver stepped past the last output (outputs are interpolated), in the right direction.
    assert (stats.t_final - float(t[-1])) * (1 if not reverse else -1) >= 0
    # With grad enabled and a plain function (whose closure could hold tensors that require grad) the
    # solve runs the differentiable path: it must take the same steps and give the same values.
    y_grad = fastdiffeq.odeint(f, y0, t, rtol=rtol, atol=atol, method=method)
    stats_grad = fastdiffeq.last_stats()
    assert (stats_grad.nfe, stats_grad.n_accepted, stats_grad.n_rejected) == (
        stats.nfe, stats.n_accepted, stats.n_rejected)
    scale = atol + rtol * float(ex.abs().max())
    torch.testing.assert_close(y_grad.detach(), y, rtol=0, atol=1e-6 * scale)


def test_tighter_tolerance_is_more_accurate():
    # Error control is live: tightening the tolerance reduces the error and costs more evaluations.
    t = torch.linspace(1.0, 8.0, 20, dtype=torch.float64)
    ex = exact_sine(t)
    errs, nfes = [], []
    for tol in (1e-4, 1e-7, 1e-10):
        y = fastdiffeq.odeint(f_sine, ex[0], t, rtol=tol, atol=tol)
        errs.append(float((y - ex).abs().max()))
        nfes.append(fastdiffeq.last_stats().nfe)
    assert errs[0] > 10 * errs[1] > 100 * errs[2]
    assert nfes[0] < nfes[1] < nfes[2]


# ---------------------------------------------------------------------------------------------------
# State shapes and structures
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_zero_dim_state(method, dtype):
    rtol, atol = TOLS[dtype]
    seen = []

    def f(t, y):
        seen.append((tuple(t.shape), tuple(y.shape)))
        return -0.5 * y + torch.cos(t)

    # y' = -y/2 + cos t, y(0) = 1: y = (4/5) sin t + (2/5) cos t + (3/5) e^{-t/2}.
    t = torch.linspace(0.0, 6.0, 13, dtype=dtype)
    td = t.double()
    ex = 0.8 * torch.sin(td) + 0.4 * torch.cos(td) + 0.6 * torch.exp(-0.5 * td)
    y = fastdiffeq.odeint(f, torch.tensor(1.0, dtype=dtype), t, rtol=rtol, atol=atol, method=method)
    assert y.shape == (13,) and y.dtype == dtype
    assert set(seen) == {((), ())}, "func must get a 0-dim t and a 0-dim y"
    assert _max_err_over_scale(y, ex, rtol, atol) <= K


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_multidim_state(method, dtype):
    rtol, atol = TOLS[dtype]
    g = torch.Generator().manual_seed(7)
    k = 0.1 + 1.9 * torch.rand(3, 4, 5, generator=g, dtype=torch.float64)
    w = torch.rand(3, 4, 5, generator=g, dtype=torch.float64)
    y0 = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    shapes = set()

    def f(t, y):
        shapes.add(tuple(y.shape))
        # Element-wise y' = -k y + w t: y = (y0 + w/k^2) e^{-k t} + w t/k - w/k^2.
        return -k.to(y.dtype) * y + w.to(y.dtype) * t

    t = torch.linspace(0.0, 3.0, 7, dtype=torch.float64)
    ex = torch.stack([(y0 + w / k ** 2) * torch.exp(-k * ti) + w * ti / k - w / k ** 2 for ti in t])
    y = fastdiffeq.odeint(f, y0.to(dtype), t, rtol=rtol, atol=atol, method=method)
    assert y.shape == (7, 3, 4, 5) and y.dtype == dtype
    assert shapes == {(3, 4, 5)}
    assert _max_err_over_scale(y, ex, rtol, atol) <= K
    # Element-wise: each element individually, too (a transposed layout would still pass the max above
    # only by accident; here the decay rates differ per element).
    per_elem = (y.double() - ex).abs().amax(dim=0) / (atol + rtol * ex.abs().amax(dim=0))
    assert float(per_elem.max()) <= K


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_non_contiguous_state(dtype):
    # A transposed (non-contiguous) y0 and a field returning non-contiguous tensors.
    rtol, atol = TOLS[dtype]
    base = torch.randn(3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y0 = base.T.to(dtype)
    assert not y0.is_contiguous()
    rates = torch.linspace(0.5, 2.0, 12, dtype=torch.float64).reshape(3, 4).T

    def f(t, y):
        assert y.shape == (4, 3)
        return (-(rates.to(y.dtype) * y).T.contiguous()).T  # non-contiguous output

    t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    y = fastdiffeq.odeint(f, y0, t, rtol=rtol, atol=atol)
    ex = torch.stack([base.T * torch.exp(-rates * ti) for ti in t])
    assert y.shape == (5, 4, 3)
    assert _max_err_over_scale(y, ex, rtol, atol) <= K


def _oscillator_tuple():
    # p' = q[:, 0], q' = -p[:, None]: p = p0 cos t + q0 sin t, q = q0 cos t - p0 sin t.
    p0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    q0 = torch.tensor([[0.25], [2.0]], dtype=torch.float64)

    def f(t, state):
        p, q = state
        assert isinstance(state, tuple) and p.shape == (2,) and q.shape == (2, 1)
        return q[:, 0], -p[:, None]

    def exact(t):
        c, s = torch.cos(t)[:, None], torch.sin(t)[:, None]
        return p0 * c + q0[:, 0] * s, (q0[:, 0] * c - p0 * s)[..., None]

    return f, (p0, q0), exact


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_tuple_state_per_element_tolerances(method, dtype):
    f, (p0, q0), exact = _oscillator_tuple()
    rtol, atol = TOLS[dtype]
    rtols, atols = [rtol, 10 * rtol], (atol, 10 * atol)  # a list and a tuple: both are sequences
    t = torch.linspace(0.0, 4.0, 9, dtype=torch.float64)
    p, q = fastdiffeq.odeint(f, (p0.to(dtype), q0.to(dtype)), t, rtol=rtols, atol=atols, method=method)
    assert p.shape == (9, 2) and q.shape == (9, 2, 1)
    assert p.dtype == q.dtype == dtype
    ep, eq = exact(t)
    assert _max_err_over_scale(p, ep, rtols[0], atols[0]) <= K
    assert _max_err_over_scale(q, eq, rtols[1], atols[1]) <= K


def test_tuple_tolerances_are_used_per_element():
    # The error norm is the max over elements of their RMS with their own tolerances, so loosening one
    # element's tolerance saves steps only until the other element's tolerance dominates.
    f, y0, _ = _oscillator_tuple()
    t = torch.linspace(0.0, 4.0, 3, dtype=torch.float64)

    def nfe(rtol, atol):
        fastdiffeq.odeint(f, y0, t, rtol=rtol, atol=atol)
        return fastdiffeq.last_stats().nfe

    tight = nfe([1e-10, 1e-10], [1e-12, 1e-12])
    mixed = nfe([1e-10, 1e-4], [1e-12, 1e-6])
    loose = nfe([1e-4, 1e-4], [1e-6, 1e-6])
    assert loose < mixed <= tight
    # Equal per-element tolerances are the same as the scalar tolerance.
    assert nfe(1e-7, 1e-9) == nfe([1e-7, 1e-7], [1e-9, 1e-9])


# ---------------------------------------------------------------------------------------------------
# Output grids
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_single_output_time_returns_y0(dtype):
    y0 = torch.randn(4, 3, dtype=dtype)
    calls = []

    def f(t, y):
        calls.append(float(t))
        return -y

    t = torch.tensor([2.5], dtype=dtype)
    y = fastdiffeq.odeint(f, y0, t)
    assert y.shape == (1, 4, 3) and y.dtype == dtype
    assert torch.equal(y[0], y0)
    stats = fastdiffeq.last_stats()
    assert stats.n_accepted == 0 and stats.n_rejected == 0 and stats.status == "success"
    # torchdiffeq still spends its two set-up evaluations (f0 and the initial-step probe).
    assert stats.nfe == len(calls) == 2
    # Tuple in, tuple out.
    a, b = fastdiffeq.odeint(lambda t, s: (-s[0], s[1]), (y0, y0[0]), t)
    assert torch.equal(a[0], y0) and torch.equal(b[0], y0[0]) and a.shape == (1, 4, 3) and b.shape == (1, 3)


@pytest.mark.parametrize("method", METHODS)
def test_many_output_times_inside_few_steps(method):
    f, exact, _, _ = PROBLEMS["exp"]
    t_many = torch.linspace(0.0, 10.0, 200, dtype=torch.float64)
    rtol, atol = 1e-6, 1e-8
    y = fastdiffeq.odeint(f, exact(t_many[:1])[0], t_many, rtol=rtol, atol=atol, method=method)
    s_many = fastdiffeq.last_stats()
    assert s_many.n_accepted < 60  # far fewer steps than outputs: outputs are interpolated
    assert _max_err_over_scale(y, exact(t_many), rtol, atol) <= K
    # Output times do not change the steps or the cost (torchdiffeq semantics).
    y_two = fastdiffeq.odeint(f, exact(t_many[:1])[0], t_many[[0, -1]], rtol=rtol, atol=atol, method=method)
    s_two = fastdiffeq.last_stats()
    assert (s_many.nfe, s_many.n_accepted, s_many.n_rejected) == (s_two.nfe, s_two.n_accepted, s_two.n_rejected)
    torch.testing.assert_close(y[-1], y_two[-1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
def test_dense_output_at_many_times_nonlinear(method):
    # Interpolated values between steps are accurate on a problem that is not a quadrature either.
    t = torch.linspace(1.0, 8.0, 300, dtype=torch.float64)
    ex = exact_sine(t)
    rtol, atol = TOLS[torch.float64]
    y = fastdiffeq.odeint(f_sine, ex[0], t, rtol=rtol, atol=atol, method=method)
    assert _max_err_over_scale(y, ex, rtol, atol) <= K


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_t_not_starting_at_zero(method, reverse):
    rtol, atol = TOLS[torch.float64]
    # Autonomous linear system from t0 = 2.5: y = expm(A (t - t0)) y0.
    t = torch.linspace(2.5, 6.0, 8, dtype=torch.float64)
    if reverse:
        t = t.flip(0)
    t0 = float(t[0])
    y = fastdiffeq.odeint(f_linear, Y0_LIN, t, rtol=rtol, atol=atol, method=method)
    assert _max_err_over_scale(y, exact_linear(t, t0=t0), rtol, atol) <= K
    # Non-autonomous problem on a grid that crosses zero: y = exp(-0.1 t) + 1 from t = -5 to 5.
    t = torch.linspace(-5.0, 5.0, 11, dtype=torch.float64)
    if reverse:
        t = t.flip(0)
    y = fastdiffeq.odeint(f_exp, exact_exp(t[:1])[0], t, rtol=rtol, atol=atol, method=method)
    assert _max_err_over_scale(y, exact_exp(t), rtol, atol) <= K


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_time_dtype_independent_of_state_dtype(dtype):
    # A float64 time grid with a float32 state (and vice versa): func sees t in the state's dtype.
    rtol, atol = TOLS[dtype]
    other = torch.float32 if dtype == torch.float64 else torch.float64
    t = torch.linspace(1.0, 8.0, 6, dtype=other)
    seen = set()

    def f(tt, y):
        seen.add((tt.dtype, y.dtype))
        return f_sine(tt, y)

    ex = exact_sine(t.double())
    y = fastdiffeq.odeint(f, ex[0].to(dtype), t, rtol=rtol, atol=atol)
    assert y.dtype == dtype
    assert seen == {(dtype, dtype)}
    assert _max_err_over_scale(y, ex, rtol, atol) <= K


def test_func_sees_times_inside_the_step():
    # Every time passed to func lies in [t0, t_final] (stage times t0 + c_i h), as a 0-dim tensor.
    times = []

    def f(t, y):
        assert t.dim() == 0
        times.append(float(t))
        return f_sine(t, y)

    t = torch.linspace(1.0, 8.0, 5, dtype=torch.float64)
    fastdiffeq.odeint(f, exact_sine(t[:1])[0], t, rtol=1e-6, atol=1e-8)
    stats = fastdiffeq.last_stats()
    assert len(times) == stats.nfe
    assert min(times) == 1.0
    assert max(times) <= stats.t_final
    assert max(times) > 7.0
