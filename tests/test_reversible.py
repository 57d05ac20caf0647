"""gradient='reversible' (F10): algebraically reversible Runge-Kutta (McCallum & Foster 2024).

References, each independent of the C++ loop: a plain-torch implementation of the reversible step written
from the paper's formulas with the tableau's data, run on the loop's accepted steps and differentiated by
autograd (the "direct backprop of the same reversible discrete solve"); torch.autograd.gradcheck; the
analytic solution of a linear ODE (order of convergence); peak RSS of child processes (memory).
"""

from __future__ import annotations

import math

import pytest
import torch

import fastdiffeq
from fastdiffeq import _C
from fastdiffeq._odeint import _parse_options, solver_options

pytestmark = pytest.mark.usefixtures("single_thread")

D = 3


class Field(torch.nn.Module):
    """A small time-dependent tanh MLP field (float64)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(0.7 * torch.randn(16, D, generator=g, dtype=torch.float64))
        self.b1 = torch.nn.Parameter(0.1 * torch.randn(16, generator=g, dtype=torch.float64))
        self.w2 = torch.nn.Parameter(0.7 * torch.randn(D, 16, generator=g, dtype=torch.float64))

    def forward(self, t, y):
        return torch.tanh(y @ self.w1.T + self.b1 + t) @ self.w2.T - 0.2 * y


def ref_base_step(f, tab, t0: float, h: float, x: torch.Tensor):
    """x + Psi_h(t0, x) of an explicit RK tableau and its stages, plain torch."""
    ks = []
    for i in range(tab["stages"]):
        xi = x + h * sum((a * k for a, k in zip(tab["a"][i], ks)), torch.zeros_like(x))
        ks.append(f(torch.tensor(t0 + tab["c"][i] * h, dtype=x.dtype), xi))
    return x + h * sum(b * k for b, k in zip(tab["b"], ks)), ks


def quartic(y0, y1, ymid, hf0, hf1, x: float):
    """The degree-4 polynomial p with p(0) = y0, p'(0) = hf0, p(1) = y1, p'(1) = hf1, p(1/2) = ymid, at x
    (solved here from those five conditions)."""
    rows = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 2, 3, 4],
                         [1, .5, .25, .125, .0625]], dtype=torch.float64)
    coef = torch.linalg.solve(rows, torch.eye(5, dtype=torch.float64))  # p = sum_i c_i x^i = basis @ values
    powers = torch.tensor([x ** i for i in range(5)], dtype=torch.float64)
    w = powers @ coef
    return w[0] * y0 + w[1] * hf0 + w[2] * y1 + w[3] * hf1 + w[4] * ymid


def ref_reversible(f, tab, y0: torch.Tensor, t: torch.Tensor, steps, lam: float):
    """The reversible solve on the given steps (t0, h, first, last), differentiable by autograd. Outputs [first,
    last) inside a step: adaptive methods, the quartic dense output of the base step from (t1, y1) back to t0;
    fixed-grid methods, the cubic Hermite interpolant through (y0, f(t0, y0)), (y1, f(t1, y1))."""
    y, z = y0, y0
    rows = [None] * t.numel()
    rows[0] = y0
    for t0, h, first, last in steps:
        y1 = lam * y + (1 - lam) * z + (ref_base_step(f, tab, t0, h, z)[0] - z)
        back, ks = ref_base_step(f, tab, t0 + h, -h, y1)
        for j in range(first, last):
            if tab["stepping"] == "adaptive":
                ymid = y1 - h * sum(m * k for m, k in zip(tab["mid"], ks))
                rows[j] = quartic(y1, back, ymid, -h * ks[0], -h * ks[-1], (t0 + h - t[j].item()) / h)
            else:
                s = (t[j].item() - t0) / h
                f0 = f(torch.tensor(t0, dtype=y.dtype), y)
                f1 = f(torch.tensor(t0 + h, dtype=y.dtype), y1)
                rows[j] = ((1 + 2 * s) * (1 - s) ** 2 * y + s * (1 - s) ** 2 * h * f0 + s * s * (3 - 2 * s) * y1
                           + s * s * (s - 1) * h * f1)
        z = z - (back - y1)
        y = y1
    return torch.stack(rows)


def raw_solve(func, y0, t, method, coupling=0.999, grid=(), rtol=1e-8, atol=1e-10, keep_states=False):
    opts = solver_options(method, [rtol], [atol], [y0.numel()], _parse_options(None, 1), [], [], torch.device("cpu"))
    return _C.reversible_solve(func, y0.detach().reshape(1, -1), t.to(torch.float64), opts, coupling=coupling,
                               grid=list(grid), user_shape=list(y0.shape), keep_states=keep_states)


def fixed_grid(t0: float, t1: float, step: float):
    """torchdiffeq's grid: an arange from t0, its last point moved onto t1."""
    g = torch.arange(math.ceil((t1 - t0) / step + 1), dtype=torch.float64) * step + t0
    g[-1] = t1
    return g.tolist()


CASES = [("dopri5", None), ("tsit5", None), ("bosh3", None), ("rk4", 0.05), ("midpoint", 0.04), ("euler", 0.02)]


@pytest.mark.parametrize("method,step", CASES)
def test_forward_matches_the_formulas_and_rebuilds_in_reverse(method, step):
    f = Field()
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=torch.float64)
    t = torch.linspace(0.0, 2.0, 7, dtype=torch.float64)
    grid = [] if step is None else fixed_grid(0.0, 2.0, step)
    res = raw_solve(f, y0, t, method, grid=grid, keep_states=True)
    tape = res["tape"]
    assert [s[3] for s in tape.steps][-1] == t.numel()  # every output written
    with torch.no_grad():
        ref = ref_reversible(f, _C.tableau(method), y0, t, tape.steps, 0.999)
    torch.testing.assert_close(res["ys"].reshape(t.numel(), D), ref, rtol=0, atol=1e-12)
    # The backward walk rebuilds every forward state from the final pair: exact up to rounding.
    grad_ys = torch.zeros_like(res["ys"])
    _, _, nfe, rebuilt = _C.reversible_backward(f, tape, grad_ys, list(f.parameters()), [D], keep_states=True)
    assert rebuilt.shape == res["states"].shape == (tape.n_steps + 1, 1, D)
    assert (rebuilt - res["states"]).abs().max().item() < 1e-10
    # Fixed grid: + f(t0, y0) for the first step's Hermite interpolant.
    assert nfe == 2 * _C.tableau(method)["stages"] * tape.n_steps + (step is not None)


@pytest.mark.parametrize("method,step", CASES)
def test_gradient_equals_backprop_of_the_same_reversible_solve(method, step):
    f = Field(seed=1)
    y0 = torch.tensor([0.2, 0.9, -0.4], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 1.1, 1.5], dtype=torch.float64)
    w = torch.randn(t.numel(), D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    options = None if step is None else dict(step_size=step)
    # lambda < 1 damps y - z forward and amplifies rounding by 1/lambda per step in reverse, so the coupling is
    # kept close to 1 (0.99 over <= 200 steps: at most ~7x).
    ys = fastdiffeq.odeint(f, y0, t, method=method, options=options, rtol=1e-6, atol=1e-8, gradient="reversible",
                           reversible_coupling=0.99)
    params = [y0, *f.parameters()]
    got = torch.autograd.grad((ys * w).sum(), params)
    grid = [] if step is None else fixed_grid(0.0, 1.5, step)
    tape = raw_solve(f, y0, t, method, coupling=0.99, grid=grid, rtol=1e-6, atol=1e-8)["tape"]
    assert tape.n_steps <= 200
    ref_ys = ref_reversible(f, _C.tableau(method), y0, t, tape.steps, 0.99)
    torch.testing.assert_close(ys, ref_ys, rtol=0, atol=1e-12)
    want = torch.autograd.grad((ref_ys * w).sum(), params)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)


def test_decreasing_time_and_tuple_state():
    f = Field(seed=2)
    y0 = torch.tensor([0.1, -0.7, 0.4], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 0.4, -0.5], dtype=torch.float64)
    ys = fastdiffeq.odeint(f, y0, t, gradient="reversible", rtol=1e-9, atol=1e-11)
    direct = fastdiffeq.odeint(f, y0, t, rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(ys, direct, rtol=0, atol=1e-6)  # a different discretisation of the same ODE
    (g,) = torch.autograd.grad(ys.sum(), y0)
    (g_ref,) = torch.autograd.grad(direct.sum(), y0)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-5)
    pair = fastdiffeq.odeint(lambda t, y: (y[1], -y[0]), (torch.tensor(1.0, dtype=torch.float64),
                             torch.tensor(0.0, dtype=torch.float64)), torch.tensor([0.0, 1.0], dtype=torch.float64),
                             gradient="reversible", gradient_params=(), rtol=1e-10, atol=1e-12)
    assert abs(pair[0][-1].item() - math.cos(1.0)) < 1e-7 and abs(pair[1][-1].item() + math.sin(1.0)) < 1e-7


# The adaptive case forces its steps (first = min = max step): gradients treat step sizes as constants of the
# discrete solve, and finite differences must not move them (the interpolated outputs are sensitive to them).
@pytest.mark.parametrize("method,options", [("rk4", dict(step_size=0.1)),
                                            ("dopri5", dict(first_step=0.07, min_step=0.07, max_step=0.07))])
def test_gradcheck(method, options):
    f = Field(seed=4)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)

    def fn(y0, w1, b1, w2):
        def field(tt, y):
            return torch.tanh(y @ w1.T + b1 + tt) @ w2.T - 0.2 * y
        return fastdiffeq.odeint(field, y0, t, method=method, options=options, rtol=1e-10, atol=1e-12,
                                 gradient="reversible", gradient_params=(w1, b1, w2))

    inputs = (torch.tensor([0.3, -0.2, 0.6], dtype=torch.float64, requires_grad=True),
              *(p.detach().clone().requires_grad_(True) for p in f.parameters()))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_converges_with_the_base_order():
    # y' = A y with a rotation-plus-decay A: exact solution by the matrix exponential. rk4 made reversible keeps
    # order 4 (halving h divides the error by ~16), midpoint order 2. (Reversible euler is irregular between
    # orders 1 and 2 in this range: measured slopes 1.3-1.6, not asserted.)
    A = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    exact = torch.linalg.matrix_exp(2.0 * A) @ y0
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    for method, order, h in [("rk4", 4, 0.1), ("midpoint", 2, 0.05)]:
        errs = [(fastdiffeq.odeint(lambda tt, y: A @ y, y0, t, method=method, options=dict(step_size=hh),
                                   gradient="reversible", gradient_params=())[-1] - exact).norm().item()
                for hh in (h, h / 2)]
        assert abs(math.log2(errs[0] / errs[1]) - order) < 0.3, (method, errs)


def test_bad_arguments():
    f = Field()
    y0 = torch.zeros(D, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="reversible_coupling"):
        fastdiffeq.odeint(f, y0, t, gradient="reversible", reversible_coupling=0.0)
    with pytest.raises(ValueError, match="reversible_coupling"):
        fastdiffeq.odeint(f, y0, t, gradient="reversible", reversible_coupling=1.5)
    with pytest.raises(TypeError, match="reversible_coupling"):
        fastdiffeq.odeint(f, y0, t, gradient="reversible", reversible_coupling="0.9")
    with pytest.raises(ValueError, match="step_t"):
        fastdiffeq.odeint(f, y0, t, gradient="reversible", options=dict(step_t=[0.5]))
    with pytest.raises(ValueError, match="event_fn"):
        fastdiffeq.odeint(f, y0, t, gradient="reversible", event_fn=lambda t, y: y[0] - 1)
    with pytest.raises(ValueError, match="perturb"):
        fastdiffeq.odeint(f, y0, t, method="rk4", gradient="reversible", options=dict(perturb=True))
    with pytest.raises(ValueError, match="gradient"):
        fastdiffeq.odeint(f, y0, t, gradient="reversable")
    with pytest.raises(ValueError, match="gradient_params"):
        fastdiffeq.odeint(lambda tt, y: -y, y0.requires_grad_(True), t, gradient="reversible")
    with pytest.raises(fastdiffeq.MaxStepsError):
        fastdiffeq.odeint(f, y0, t, gradient="reversible", options=dict(max_num_steps=2), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="reversible_coupling"):
        fastdiffeq.solve_ivp(lambda tt, y: -y, torch.ones(2, D), torch.tensor([0.0, 1.0]), gradient="reversible",
                             reversible_coupling=2.0)
    with pytest.raises(ValueError, match="event_fn"):
        fastdiffeq.solve_ivp(lambda tt, y: -y, torch.ones(2, D), torch.tensor([0.0, 1.0]), gradient="reversible",
                             event_fn=lambda tt, y: y[:, 0] - 0.5)
    with pytest.raises(ValueError, match="coupling"):
        raw_solve(f, y0, t, "dopri5", coupling=-1.0)
    tape = raw_solve(f, y0, t, "dopri5")["tape"]
    with pytest.raises(ValueError, match="grad_ys"):
        _C.reversible_backward(f, tape, torch.zeros(5, 1, D, dtype=torch.float64), list(f.parameters()), [D])
    with pytest.raises(TypeError, match="ReversibleTape"):
        _C.reversible_backward(f, object(), torch.zeros(2, 1, D, dtype=torch.float64), [], [D])


def test_memory_is_flat_in_the_number_of_steps():
    from test_memory import _probe
    lo, hi = 100, 2000
    rev = {n: _probe("reversible", n) for n in (lo, hi)}
    direct = {n: _probe("direct", n) for n in (lo, hi)}
    grow_rev = rev[hi]["growth_mib"] - rev[lo]["growth_mib"]
    grow_direct = direct[hi]["growth_mib"] - direct[lo]["growth_mib"]
    print(f"\npeak RSS growth {lo} -> {hi} steps: reversible {grow_rev:.1f} MiB, direct {grow_direct:.1f} MiB")
    assert rev[hi]["n_accepted"] >= hi
    assert rev[hi]["growth_mib"] < 16.0, rev  # the outputs and one step's graph, nothing per step
    assert grow_direct > 40.0 and grow_direct > 5 * max(grow_rev, 1.0), (rev, direct)


def test_native_field_and_solver_errors():
    # A fastdiffeq.nn.MLP runs natively (C++ evaluation) in both passes and agrees with the same module called
    # from Python.
    m = fastdiffeq.nn.MLP(D, (16,), activation="tanh").double()
    y0 = torch.randn(5, D, dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0, 1, 4, dtype=torch.float64)
    ys_native = fastdiffeq.odeint(m, y0, t, gradient="reversible")
    assert fastdiffeq.last_stats().field == "native"
    g_native = torch.autograd.grad(ys_native.sum(), [y0, *m.parameters()])
    assert fastdiffeq.last_backward_stats().field == "native"
    ys_py = fastdiffeq.odeint(lambda tt, y: m(tt, y), y0, t, gradient="reversible", gradient_params=list(m.parameters()))
    g_py = torch.autograd.grad(ys_py.sum(), [y0, *m.parameters()])
    torch.testing.assert_close(ys_native, ys_py, rtol=0, atol=1e-13)
    for a, b in zip(g_native, g_py):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    # y' = y^2 blows up at t = 1: a typed solver error, not a hang or NaN output.
    with pytest.raises(fastdiffeq.SolverError):
        fastdiffeq.odeint(lambda tt, y: y * y, torch.tensor([1.0], dtype=torch.float64),
                          torch.tensor([0.0, 2.0], dtype=torch.float64), gradient="reversible", gradient_params=())


@pytest.mark.parametrize("per_sample_t", [False, True])
def test_solve_ivp_each_sample_is_its_own_reversible_solve(per_sample_t):
    # solve_ivp(gradient='reversible'): every sample with its own steps; sample b alone is exactly the joint
    # odeint(gradient='reversible') solve of that sample (same controller, norm over its own elements), so values
    # and gradients must agree with B separate joint solves. Mixed directions with per-sample times.
    f = Field(seed=5)
    B = 4
    y0 = torch.randn(B, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    t = torch.tensor([0.0, 0.4, 1.0, 1.7], dtype=torch.float64)
    if per_sample_t:
        t = torch.stack([t * (1 + 0.3 * b) * (-1 if b == 2 else 1) for b in range(B)])
    w = torch.randn(B, 4, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    params = list(f.parameters())
    sol = fastdiffeq.solve_ivp(lambda tt, y: f(tt.reshape(-1, 1), y), y0, t, gradient="reversible", rtol=1e-6,
                               atol=1e-8, params=params)
    assert (sol.status == int(fastdiffeq.Status.SUCCESS)).all() and len(set(sol.n_accepted.tolist())) > 1
    got = torch.autograd.grad((sol.ys * w).sum(), [y0, *params])
    ys_ref = torch.stack([fastdiffeq.odeint(lambda tt, y: f(tt.reshape(1, 1), y.unsqueeze(0))[0], y0[b],
                                            t[b] if per_sample_t else t, gradient="reversible", rtol=1e-6, atol=1e-8,
                                            gradient_params=params) for b in range(B)])
    torch.testing.assert_close(sol.ys, ys_ref, rtol=0, atol=1e-11)
    want = torch.autograd.grad((ys_ref * w).sum(), [y0, *params])
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


def test_solve_ivp_reversible_failed_samples():
    # A sample that blows up fails alone (on_failure='mark'), contributes no gradient, the others are unchanged.
    y0 = torch.tensor([[0.5], [3.0], [-0.2]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    sol = fastdiffeq.solve_ivp(lambda tt, y: y * y, y0, t, gradient="reversible", on_failure="mark", params=())
    assert sol.status.tolist()[1] != int(fastdiffeq.Status.SUCCESS)
    assert sol.status.tolist()[0] == sol.status.tolist()[2] == int(fastdiffeq.Status.SUCCESS)
    exact = y0.detach() / (1 - y0.detach() * t)  # y' = y^2
    for b in (0, 2):
        torch.testing.assert_close(sol.ys[b, :, 0], exact[b], rtol=1e-5, atol=1e-7)
    (g,) = torch.autograd.grad(torch.nan_to_num(sol.ys).sum(), y0)
    assert g[1].item() == 0.0 and bool(torch.isfinite(g).all())
    torch.testing.assert_close(g[0, 0], (1 / (1 - y0[0, 0] * t) ** 2).sum().detach(), rtol=1e-4, atol=0)
