"""The C++ reverse-time adjoint (one backward solve over all output intervals) and its interpolated trajectory.

References: direct backprop through the discrete solve (fastdiffeq.odeint), torchdiffeq's odeint_adjoint
(tests/test_gradients.py), and, for a linear system, the exact gradient through torch.linalg.matrix_exp.
"""

from __future__ import annotations

import pytest
import torch

import fastdiffeq

from test_gradients import CASES, TIGHT, Switch, _assert_close_all, _case, _grads

DT = torch.float64


def _interpolated(**kw):
    opts = dict(kw.pop("adjoint_options", {}), trajectory="interpolated")
    return dict(kw, adjoint_options=opts)


@pytest.mark.parametrize("case", CASES)
def test_interpolated_adjoint_matches_direct(case):
    """y(t) from the forward's dense output: the gradient is that of the continuous problem, so it agrees
    with direct backprop (the discrete solve's) to the tolerance scale; t gradients included."""
    f, y0, t, params = _case(case)
    t.requires_grad_(True)
    direct = _grads(fastdiffeq.odeint, f, y0, t, params, **TIGHT)
    interp = _grads(fastdiffeq.odeint_adjoint, f, y0, t, params, **_interpolated(**TIGHT))
    _assert_close_all(interp, direct, 1e-6, f"interpolated adjoint vs direct ({case})")


@pytest.mark.parametrize("case", ["mlp", "tuple"])
def test_interpolated_adjoint_with_seminorm_and_user_norm(case):
    f, y0, t, params = _case(case)
    direct = _grads(fastdiffeq.odeint, f, y0, t, params, **TIGHT)
    semi = _grads(fastdiffeq.odeint_adjoint, f, y0, t, params,
                  **_interpolated(adjoint_options=dict(norm="seminorm"), **TIGHT))
    _assert_close_all(semi, direct, 1e-6, f"interpolated + seminorm vs direct ({case})")
    seen = []

    def max_norm(state):
        # torchdiffeq's adjoint norm signature: (t, *y, *a, *param_grads); y parts are zeros here.
        seen.append(len(state))
        return max(float(x.abs().max()) if x.numel() else 0.0 for x in state)

    user = _grads(fastdiffeq.odeint_adjoint, f, y0, t, params,
                  **_interpolated(adjoint_options=dict(norm=max_norm), **TIGHT))
    n_parts = len(y0) if isinstance(y0, tuple) else 1
    assert seen and set(seen) == {1 + 2 * n_parts + len(params)}
    _assert_close_all(user, direct, 1e-5, f"interpolated + user norm vs direct ({case})")


class DampedMLP(torch.nn.Module):
    """A contracting MLP field, f(y) = mlp(y) - 3 y: y's backward re-solve is what limits 'resolve'."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.l1 = torch.nn.Linear(2, 32).double()
        self.l2 = torch.nn.Linear(32, 2).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.5)

    def forward(self, t, y):
        return self.l2(torch.tanh(self.l1(y))) - 3.0 * y


def test_interpolated_adjoint_needs_fewer_backward_evaluations_on_an_mlp():
    f = DampedMLP()
    y0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=DT, requires_grad=True)
    t = torch.tensor([0.0, 3.0], dtype=DT)
    params = tuple(f.parameters())
    kw = dict(rtol=1e-6, atol=1e-8)
    direct = _grads(fastdiffeq.odeint, f, y0, t, params, **kw)
    resolve = _grads(fastdiffeq.odeint_adjoint, f, y0, t, params, **kw)
    nfe_resolve = fastdiffeq.last_backward_stats().nfe
    interp = _grads(fastdiffeq.odeint_adjoint, f, y0, t, params, **_interpolated(**kw))
    nfe_interp = fastdiffeq.last_backward_stats().nfe
    print(f"\nbackward NFE: resolve {nfe_resolve}, interpolated {nfe_interp}")
    assert nfe_interp < nfe_resolve
    _assert_close_all(interp, direct, 1e-5, "interpolated vs direct")
    _assert_close_all(resolve, direct, 1e-5, "resolve vs direct")


def _dissipative_problem():
    """y' = y A^T with A symmetric, eigenvalues -50 ... -100; several outputs inside the transient."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=DT))
    A = Q @ torch.diag(torch.tensor([-50.0, -60.0, -80.0, -100.0], dtype=DT)) @ Q.T
    y0 = torch.randn(3, 4, generator=g, dtype=DT)
    t = torch.tensor([0.0, 0.02, 0.05, 0.1, 0.5], dtype=DT)
    weights = torch.randn(len(t), 3, 4, generator=g, dtype=DT)
    return A, y0, t, weights


class Linear(torch.nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = torch.nn.Parameter(A.clone())

    def forward(self, t, y):
        return y @ self.A.T


def test_dissipative_linear_system_interpolated_is_accurate_where_resolve_is_not():
    A, y0, t, w = _dissipative_problem()
    # Exact: y(t) = y0 expm(A t)^T, differentiated by autograd through matrix_exp.
    A_ref, y_ref = A.clone().requires_grad_(True), y0.clone().requires_grad_(True)
    ys = torch.stack([y_ref @ torch.linalg.matrix_exp(A_ref * ti).T for ti in t])
    gA_exact, gy_exact = torch.autograd.grad((ys * w).sum(), (A_ref, y_ref))

    def adjoint_grads(trajectory):
        f, y = Linear(A), y0.clone().requires_grad_(True)
        ys = fastdiffeq.odeint_adjoint(f, y, t, rtol=1e-6, atol=1e-8,
                                       adjoint_options=dict(trajectory=trajectory))
        gA, gy = torch.autograd.grad((ys * w).sum(), (f.A, y))
        return gA, gy, fastdiffeq.last_backward_stats().nfe

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    gA, gy, nfe_interp = adjoint_grads("interpolated")
    assert rel(gA, gA_exact) <= 1e-4 and rel(gy, gy_exact) <= 1e-4, (rel(gA, gA_exact), rel(gy, gy_exact))
    gA_res, _, nfe_resolve = adjoint_grads("resolve")
    # Re-solving y backwards amplifies its errors by exp(50 t): the parameter gradient is far off.
    assert rel(gA_res, gA_exact) > 1e-2, rel(gA_res, gA_exact)
    assert nfe_interp < nfe_resolve


@pytest.mark.parametrize("trajectory", ["resolve", "interpolated"])
def test_one_backward_solve_reevaluates_once_per_inner_output_time(trajectory):
    """ONE reverse-time solve: Hairer's initial step once (2 evaluations), 6 per attempted dopri5 step, and
    one re-evaluation at each output time strictly inside (t[0], t[-1]) where the adjoint jumps."""
    f, y0, t, params = _case("time_dependent")
    ys = fastdiffeq.odeint_adjoint(f, y0, t, adjoint_options=dict(trajectory=trajectory), **TIGHT)
    ys.sum().backward()
    s = fastdiffeq.last_backward_stats()
    assert s.status == "success" and s.t_final == float(t[0])
    assert s.nfe == 2 + 6 * (s.n_accepted + s.n_rejected) + (len(t) - 2), s


@pytest.mark.parametrize("trajectory", ["resolve", "interpolated"])
def test_adjoint_jump_t_both_trajectories(trajectory):
    """A field with a jump at t=0.5 (options['jump_t']): the backward solve stops on it, both trajectories."""
    f = Switch()
    y0 = torch.tensor([1.0, 2.0], dtype=DT, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 3, dtype=DT)
    kw = dict(TIGHT, options=dict(jump_t=torch.tensor([0.5], dtype=DT)))
    direct = _grads(fastdiffeq.odeint, f, y0, t, (f.a,), **kw)
    got = _grads(fastdiffeq.odeint_adjoint, f, y0, t, (f.a,), **dict(kw, adjoint_options=dict(
        jump_t=torch.tensor([0.5], dtype=DT), trajectory=trajectory)))
    _assert_close_all(got, direct, 1e-7, f"adjoint ({trajectory}) with jump_t vs direct")


def test_interpolated_float32():
    f, y0, t, params = _case("mlp")
    f = f.float()
    y0 = y0.detach().float().requires_grad_(True)
    params = tuple(f.parameters())
    direct = _grads(fastdiffeq.odeint, f, y0, t.float(), params, rtol=1e-5, atol=1e-6)
    interp = _grads(fastdiffeq.odeint_adjoint, f, y0, t.float(), params, **_interpolated(rtol=1e-5, atol=1e-6))
    _assert_close_all(interp, direct, 1e-3, "float32 interpolated vs direct")


def test_bad_trajectory_raises():
    f, y0, t, _ = _case("mlp")
    with pytest.raises(ValueError, match="trajectory"):
        fastdiffeq.odeint_adjoint(f, y0, t, adjoint_options=dict(trajectory="bogus"))


def test_backward_failure_raises_solver_error_naming_the_backward():
    """A backward solve that cannot finish raises the typed error (here: max steps), naming the backward pass."""
    f, y0, t, _ = _case("mlp")
    ys = fastdiffeq.odeint_adjoint(f, y0, t, adjoint_options=dict(max_num_steps=1), **TIGHT)
    with pytest.raises(fastdiffeq.MaxStepsError, match=r"odeint_adjoint \(backward\)"):
        ys.sum().backward()
    assert fastdiffeq.last_backward_stats().status == "max_steps"
