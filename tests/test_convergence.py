"""Convergence order on fixed steps.

options first_step = min_step = max_step = h makes every step exactly h: a step with |h| <= min_step
is always accepted and the controller's next step is clamped back to h. With T = 1 and h = 2^-k the
steps land exactly on the final time. The slope of log(error) against log(h) must be the method's
order: dopri5 and tsit5 5 (accepted 4.5-5.8), bosh3 3 (2.7-3.6). Interpolated outputs at times that
are never step boundaries (0.1, 0.3, ... are not dyadic) must converge too (order >= 4 / >= 3).

Problem (float64, known solution, non-linear and non-autonomous):
    x' = -y + x (1 - x^2 - y^2),  y' = x + y (1 - x^2 - y^2)   (limit cycle; r = 1/sqrt(1 + (1/r0^2 - 1) e^{-2t}),
                                                                angle = t, from r0 = 1/2 on the x axis)
    w' = -10 t w^2, w(0) = 1                                   (w = 1 / (1 + 5 t^2), poles at +-i/sqrt(5))
The w component has large high derivatives near t ~ 0.45, which keeps the errors well above round-off
over the fitted range of h while the asymptotic regime is reached.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastdiffeq

pytestmark = pytest.mark.usefixtures("single_thread")

T_OFF = torch.tensor([0.0, 0.1, 0.3, 0.55, 0.7, 0.9, 1.0], dtype=torch.float64)  # 0 and 1 are step points

# (order, slope range at the final time, minimum dense-output slope, exponents k of h = 2^-k)
EXPECTED = {
    "dopri5": (5, (4.5, 5.8), 4.0, range(4, 8)),
    "tsit5": (5, (4.5, 5.8), 4.0, range(4, 8)),
    "bosh3": (3, (2.7, 3.6), 2.7, range(4, 9)),
}


def field(t, u):
    x, y, w = u[0], u[1], u[2]
    r2 = x * x + y * y
    return torch.stack([-y + x * (1 - r2), x + y * (1 - r2), -10 * t * w * w])


def exact(t):
    t = torch.as_tensor(t, dtype=torch.float64)
    r0 = 0.5
    r = 1 / torch.sqrt(1 + (1 / r0 ** 2 - 1) * torch.exp(-2 * t))
    return torch.stack([r * torch.cos(t), r * torch.sin(t), 1 / (1 + 5 * t ** 2)], dim=-1)


def test_exact_solution_satisfies_the_ode():
    t = torch.linspace(0.0, 1.0, 33, dtype=torch.float64, requires_grad=True)
    u = exact(t)
    du = torch.stack([torch.autograd.grad(u[:, i].sum(), t, retain_graph=True)[0] for i in range(3)], dim=-1)
    with torch.no_grad():
        f = torch.stack([field(ti, ui) for ti, ui in zip(t.detach(), u.detach())])
    torch.testing.assert_close(du, f, rtol=1e-12, atol=1e-12)


def _fixed_step_solve(method, h, t=T_OFF, **kwargs):
    return fastdiffeq.odeint(field, exact(0.0), t, method=method,
                             options=dict(first_step=h, min_step=h, max_step=h), **kwargs)


def _slope(hs, errs):
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


@pytest.mark.parametrize("method", list(EXPECTED))
def test_fixed_steps_are_fixed(method):
    k = 5
    h = 2.0 ** -k
    y = _fixed_step_solve(method, h)
    stats = fastdiffeq.last_stats()
    assert stats.n_accepted == 2 ** k and stats.n_rejected == 0
    assert stats.t_final == 1.0  # the steps land exactly on T
    stages = fastdiffeq._C.tableau(method)["stages"]
    # f(t0) + one evaluation per non-FSAL stage per step; no initial-step probe when first_step is given.
    assert stats.nfe == 1 + (stages - 1) * 2 ** k
    # The tolerance plays no role on fixed steps: the same steps and bit-identical results.
    y_loose = _fixed_step_solve(method, h, rtol=1e-2, atol=1e-2)
    y_tight = _fixed_step_solve(method, h, rtol=1e-13, atol=1e-13)
    assert torch.equal(y, y_loose) and torch.equal(y, y_tight)


@pytest.mark.parametrize("method", list(EXPECTED))
def test_convergence_order(method):
    order, (lo, hi), dense_min, ks = EXPECTED[method]
    hs, err_end, err_dense = [], [], []
    for k in ks:
        h = 2.0 ** -k
        y = _fixed_step_solve(method, h)
        err = (y - exact(T_OFF)).abs().amax(dim=-1)
        hs.append(h)
        err_end.append(float(err[-1]))
        err_dense.append(float(err[1:-1].max()))
    assert min(err_end) > 1e-14, "errors reached round-off: the fit would be meaningless"
    slope = _slope(hs, err_end)
    assert lo <= slope <= hi, f"{method}: observed order {slope:.2f} at T, expected ~{order} ({err_end})"
    # Errors actually decrease with every halving of h.
    assert all(b < a for a, b in zip(err_end, err_end[1:]))
    dense_slope = _slope(hs, err_dense)
    assert dense_slope >= dense_min, (
        f"{method}: dense output converges with order {dense_slope:.2f} < {dense_min} ({err_dense})")
    assert all(b < a for a, b in zip(err_dense, err_dense[1:]))


def mirrored_field(t, u):
    # u(s) = y(-s) solves u' = -f(-s, u): the forward problem run backwards in time from s = 0 to s = -1.
    return -field(-t, u)


@pytest.mark.parametrize("method", list(EXPECTED))
def test_convergence_order_reverse_time(method):
    # Reverse time (t decreasing, negative fixed steps h = -2^-k) on the mirrored problem: torchdiffeq
    # solves a decreasing grid as the increasing -t with -f(-t, y), so this must reproduce the forward
    # solve on T_OFF (same steps, same stage values up to round-off) and converge with the same order.
    order, (lo, hi), dense_min, ks = EXPECTED[method]
    t = -T_OFF
    hs, err_end, err_dense = [], [], []
    for k in ks:
        h = 2.0 ** -k
        y = fastdiffeq.odeint(mirrored_field, exact(0.0), t, method=method,
                              options=dict(first_step=h, min_step=h, max_step=h))
        stats = fastdiffeq.last_stats()
        assert stats.n_accepted == 2 ** k and stats.n_rejected == 0 and stats.t_final == -1.0
        torch.testing.assert_close(y, _fixed_step_solve(method, h), rtol=1e-13, atol=1e-15)
        err = (y - exact(T_OFF)).abs().amax(dim=-1)
        hs.append(h)
        err_end.append(float(err[-1]))
        err_dense.append(float(err[1:-1].max()))
    slope = _slope(hs, err_end)
    assert lo <= slope <= hi, f"{method} reverse: observed order {slope:.2f}"
    assert _slope(hs, err_dense) >= dense_min
