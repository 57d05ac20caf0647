"""fastdiffeq.solve_ivp: per-sample batched solves (each sample its own step size, output times and status).

References: the same samples solved alone (independence), scipy's DOP853 at tight tolerances and closed-form
solutions (accuracy), fastdiffeq.odeint on one row (directions), the three gradient modes against each other
and against gradcheck, and the error paths. Everything is float64 on the CPU (one float32 smoke test) and
small enough to run in a few seconds.
"""

from __future__ import annotations

import math

import pytest
import torch

import fastdiffeq
from fastdiffeq import Status

pytestmark = pytest.mark.usefixtures("single_thread")

DT = torch.float64


# --------------------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------------------

def vdp(mu: torch.Tensor):
    """Van der Pol with one mu per sample: y [B, 2], mu [B]."""

    def f(t, y):
        x, v = y.unbind(-1)
        return torch.stack([v, mu.to(y) * (1 - x * x) * v - x], -1)

    return f


def forced_decay(k: torch.Tensor):
    """y' = -k (y - sin t) + cos t, k [B]: y(t) = sin t + (y0 - sin t0) exp(-k (t - t0)). t may be [B] or 0-dim."""

    def f(t, y):
        s = torch.sin(t).to(y).reshape(-1, *([1] * (y.dim() - 1)))
        c = torch.cos(t).to(y).reshape(-1, *([1] * (y.dim() - 1)))
        return -k.to(y).reshape(-1, *([1] * (y.dim() - 1))) * (y - s) + c

    return f


def forced_decay_exact(k, y0, t_eval):
    """k [B], y0 [B, D], t_eval [B, T] -> [B, T, D]."""
    t0 = t_eval[:, :1]
    amp = (y0 - torch.sin(t0)).unsqueeze(1)  # [B, 1, D]
    return torch.sin(t_eval).unsqueeze(-1) + amp * torch.exp(-k.view(-1, 1, 1) * (t_eval - t0).unsqueeze(-1))


MU = torch.tensor([1.0, 3.0, 6.0, 10.0, 15.0, 20.0], dtype=DT)
VDP_Y0 = torch.tensor([[2.0, 0.0], [1.0, -1.0], [-0.5, 2.0], [2.0, 0.5], [0.1, 0.0], [-1.5, 1.0]], dtype=DT)


def _per_sample_t_eval(T: int = 7) -> torch.Tensor:
    """Rows with different starts and spans (all increasing), for the 6 samples above."""
    starts = torch.tensor([0.0, 0.5, -1.0, 2.0, 0.0, 1.0], dtype=DT)
    spans = torch.tensor([3.0, 10.0, 6.0, 2.0, 8.0, 5.0], dtype=DT)
    return starts[:, None] + spans[:, None] * torch.linspace(0, 1, T, dtype=DT)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float, what: str = ""):
    err = float((a.detach() - b.detach()).abs().max())
    assert err <= tol, f"{what}: max abs difference {err:.3e} > {tol:.1e}"


# --------------------------------------------------------------------------------------------------------
# 1. Independence
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_sample_t", [False, True, "mixed"], ids=["shared_t", "per_sample_t", "mixed_directions"])
def test_each_sample_equals_its_solve_alone(per_sample_t):
    t_eval = _per_sample_t_eval() if per_sample_t else torch.linspace(0.0, 8.0, 9, dtype=DT)
    if per_sample_t == "mixed":
        t_eval[[0, 3]] = t_eval[[0, 3]].flip(1)  # (reverse-time VdP stays bounded for these two)
    kw = dict(rtol=1e-8, atol=1e-8)
    batch = fastdiffeq.solve_ivp(vdp(MU), VDP_Y0, t_eval, **kw)
    assert bool(batch.success.all())
    # The spread is real: the samples do not all take the same steps.
    assert len(set(batch.n_steps.tolist())) > 1
    for b in range(len(MU)):
        t_b = t_eval[b:b + 1] if per_sample_t else t_eval
        alone = fastdiffeq.solve_ivp(vdp(MU[b:b + 1]), VDP_Y0[b:b + 1], t_b, **kw)
        _close(batch.ys[b], alone.ys[0], 1e-12, f"sample {b} in the batch vs alone")
        assert int(batch.n_steps[b]) == int(alone.n_steps[0]), f"sample {b}: n_steps differ"
        assert int(batch.n_accepted[b]) == int(alone.n_accepted[0])


def test_permuting_the_batch_permutes_the_results():
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    t_eval = _per_sample_t_eval()
    kw = dict(rtol=1e-7, atol=1e-7)
    a = fastdiffeq.solve_ivp(vdp(MU), VDP_Y0, t_eval, **kw)
    b = fastdiffeq.solve_ivp(vdp(MU[perm]), VDP_Y0[perm], t_eval[perm], **kw)
    _close(a.ys[perm], b.ys, 1e-12, "permuted batch")
    assert torch.equal(a.n_steps[perm], b.n_steps)


# --------------------------------------------------------------------------------------------------------
# 2. Accuracy
# --------------------------------------------------------------------------------------------------------

def test_matches_scipy_dop853():
    scipy_integrate = pytest.importorskip("scipy.integrate")
    mu = torch.tensor([1.0, 5.0, 20.0], dtype=DT)
    y0 = VDP_Y0[:3]
    t_eval = torch.tensor([[0.0, 1.0, 2.5, 4.0], [0.0, 0.7, 1.9, 3.0], [1.0, 2.0, 4.0, 6.0]], dtype=DT)
    sol = fastdiffeq.solve_ivp(vdp(mu), y0, t_eval, rtol=1e-9, atol=1e-9)
    assert bool(sol.success.all())
    for b in range(3):
        m = float(mu[b])

        def rhs(t, y, m=m):
            return [y[1], m * (1 - y[0] ** 2) * y[1] - y[0]]

        te = t_eval[b].tolist()
        ref = scipy_integrate.solve_ivp(rhs, (te[0], te[-1]), y0[b].tolist(), method="DOP853", t_eval=te,
                                        rtol=1e-12, atol=1e-12)
        assert ref.success
        ref_ys = torch.tensor(ref.y.T, dtype=DT)
        scale = 1 + ref_ys.abs().max()
        _close(sol.ys[b] / scale, ref_ys / scale, 1e-6, f"sample {b} (mu={m}) vs scipy DOP853")


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_matches_closed_form_per_sample_rates_and_start_times(method):
    k = torch.tensor([0.1, 1.0, 5.0, 30.0], dtype=DT)
    y0 = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0], [2.0, 1.0]], dtype=DT)
    t_eval = torch.tensor([[0.0, 0.5, 1.0, 2.0], [1.0, 1.3, 2.0, 4.0], [-2.0, -1.0, 0.0, 1.5], [0.3, 0.4, 0.6, 1.0]],
                          dtype=DT)
    sol = fastdiffeq.solve_ivp(forced_decay(k), y0, t_eval, method=method, rtol=1e-9, atol=1e-9)
    assert bool(sol.success.all())
    _close(sol.ys[:, 0], y0, 0.0, "column 0 is y0")
    _close(sol.ys, forced_decay_exact(k, y0, t_eval), 1e-6, f"{method} vs closed form")


def test_user_norm_is_per_sample():
    t_eval = _per_sample_t_eval(5)
    kw = dict(rtol=1e-7, atol=1e-7)
    shapes = []

    def rms(x):
        shapes.append(tuple(x.shape))
        return x.pow(2).mean(dim=tuple(range(1, x.dim()))).sqrt()

    default = fastdiffeq.solve_ivp(vdp(MU), VDP_Y0, t_eval, **kw)
    user = fastdiffeq.solve_ivp(vdp(MU), VDP_Y0, t_eval, options=dict(norm=rms), **kw)
    assert set(shapes) == {(6, 2)}
    assert torch.equal(user.n_steps, default.n_steps)
    _close(user.ys, default.ys, 1e-10, "user RMS norm vs the built-in one")

    def max_norm(x):
        return x.abs().amax(dim=1)

    batch = fastdiffeq.solve_ivp(vdp(MU), VDP_Y0, t_eval, options=dict(norm=max_norm), **kw)
    assert not torch.equal(batch.n_steps, default.n_steps)
    for b in (0, 5):
        alone = fastdiffeq.solve_ivp(vdp(MU[b:b + 1]), VDP_Y0[b:b + 1], t_eval[b:b + 1], options=dict(norm=max_norm),
                                     **kw)
        _close(batch.ys[b], alone.ys[0], 1e-12, f"max norm: sample {b} in the batch vs alone")
        assert int(batch.n_steps[b]) == int(alone.n_steps[0])


# --------------------------------------------------------------------------------------------------------
# 3. Per-sample step sizes
# --------------------------------------------------------------------------------------------------------

def test_easy_samples_take_fewer_steps_than_hard_ones_and_than_joint_mode():
    mu = torch.tensor([0.5, 1.0, 2.0, 5.0, 10.0, 20.0], dtype=DT)
    y0 = torch.tensor([2.0, 0.0], dtype=DT).repeat(len(mu), 1)
    t = torch.linspace(0.0, 20.0, 11, dtype=DT)
    kw = dict(rtol=1e-6, atol=1e-6)
    sol = fastdiffeq.solve_ivp(vdp(mu), y0, t, **kw)
    assert bool(sol.success.all())
    steps = sol.n_steps
    assert torch.equal(steps, sol.n_accepted + sol.n_rejected)
    assert int(steps[0]) * 2 < int(steps[-1]), f"mu=0.5 should need far fewer steps than mu=20: {steps.tolist()}"
    assert int(steps[:3].sum()) < int(steps[3:].sum()), steps.tolist()
    fastdiffeq.odeint(vdp(mu), y0, t, **kw)
    st = fastdiffeq.last_stats()
    joint_steps = st.n_accepted + st.n_rejected
    assert int(steps.sum()) < joint_steps * len(mu), (steps.tolist(), joint_steps)
    # The easiest sample is no longer held back by the hardest one.
    assert int(steps[0]) < joint_steps


# --------------------------------------------------------------------------------------------------------
# 4. Directions
# --------------------------------------------------------------------------------------------------------

def _row_by_odeint(k_b, y0_b, t_b, **kw):
    return fastdiffeq.odeint(forced_decay(k_b), y0_b, t_b, **kw)  # [T, 1, D]


@pytest.mark.parametrize("rows", ["mixed", "all_decreasing"])
def test_directions_match_odeint_row_by_row(rows):
    k = torch.tensor([0.5, 2.0, 1.0, 4.0], dtype=DT)
    y0 = torch.tensor([[1.0, -0.5], [0.3, 2.0], [-1.0, 0.7], [2.0, 0.0]], dtype=DT)
    up = torch.tensor([[0.0, 0.4, 1.1, 2.0], [0.5, 1.0, 2.0, 3.5], [-1.0, 0.0, 0.3, 0.9], [1.0, 1.5, 2.5, 3.0]],
                      dtype=DT)
    down = -up.flip(1) + 1.0  # strictly decreasing rows, other spans
    if rows == "mixed":
        t_eval = torch.stack([up[0], down[1], up[2], down[3]])
    else:
        t_eval = down
    kw = dict(rtol=1e-8, atol=1e-8)
    sol = fastdiffeq.solve_ivp(forced_decay(k), y0, t_eval, **kw)
    assert bool(sol.success.all())
    _close(sol.ys, forced_decay_exact(k, y0, t_eval), 1e-5, "vs closed form")
    assert torch.equal(sol.t_eval, t_eval)
    for b in range(4):
        ref = _row_by_odeint(k[b:b + 1], y0[b:b + 1], t_eval[b], **kw)
        st = fastdiffeq.last_stats()
        _close(sol.ys[b], ref[:, 0], 1e-10, f"row {b} vs odeint on that row")
        assert int(sol.n_steps[b]) == st.n_accepted + st.n_rejected, f"row {b}: steps differ from odeint's"


# --------------------------------------------------------------------------------------------------------
# 5. Failures
# --------------------------------------------------------------------------------------------------------

BLOW_Y0 = torch.tensor([[0.1], [0.2], [2.0], [0.3]], dtype=DT)  # y' = y^2: sample 2 blows up at t = 0.5
BLOW_T = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], dtype=DT)


def _square(t, y):
    return y * y


def test_blow_up_raises_naming_the_sample():
    with pytest.raises(fastdiffeq.SolverError, match=r"sample 2\b") as info:
        fastdiffeq.solve_ivp(_square, BLOW_Y0, BLOW_T, rtol=1e-8, atol=1e-8)
    assert type(info.value) is not fastdiffeq.SolverError  # a typed subclass
    assert "sample 0" not in str(info.value) and "sample 1" not in str(info.value)
    assert 0.4 <= info.value.t <= 0.6


def test_blow_up_marked_others_unaffected():
    kw = dict(rtol=1e-8, atol=1e-8)
    sol = fastdiffeq.solve_ivp(_square, BLOW_Y0, BLOW_T, on_failure="mark", **kw)
    assert sol.status.dtype == torch.int32
    assert Status(int(sol.status[2])) != Status.SUCCESS
    assert Status(int(sol.status[2])) in (Status.STEP_UNDERFLOW, Status.NON_FINITE, Status.MAX_STEPS)
    assert sol.success.tolist() == [True, True, False, True]
    # Before the blow-up: the exact solution y0 / (1 - y0 t); after: NaN.
    exact = 2.0 / (1 - 2.0 * BLOW_T[:3])
    assert torch.allclose(sol.ys[2, :3, 0], exact, rtol=1e-6)
    assert bool(torch.isnan(sol.ys[2, 3:]).all())
    good = torch.tensor([0, 1, 3])
    alone = fastdiffeq.solve_ivp(_square, BLOW_Y0[good], BLOW_T, **kw)
    _close(sol.ys[good], alone.ys, 1e-13, "good samples vs their solve without the bad one")
    assert torch.equal(sol.n_steps[good], alone.n_steps)
    assert bool(torch.isfinite(sol.ys[good]).all())


def test_max_num_steps_on_a_stiff_sample():
    k = torch.tensor([1.0, 1e4, 2.0], dtype=DT)
    y0 = torch.ones(3, 1, dtype=DT)
    t = torch.linspace(0.0, 1.0, 5, dtype=DT)
    kw = dict(rtol=1e-6, atol=1e-6, options={"max_num_steps": 200})

    def f(t, y):
        return -k.view(-1, 1) * y

    with pytest.raises(fastdiffeq.MaxStepsError, match=r"sample 1\b"):
        fastdiffeq.solve_ivp(f, y0, t, **kw)
    sol = fastdiffeq.solve_ivp(f, y0, t, on_failure="mark", **kw)
    assert [Status(int(s)) for s in sol.status] == [Status.SUCCESS, Status.MAX_STEPS, Status.SUCCESS]
    assert int(sol.n_steps[1]) == 200
    assert bool(torch.isnan(sol.ys[1, 1:]).all())
    _close(sol.ys[[0, 2], :, 0], torch.exp(-k[[0, 2], None] * t), 1e-5, "easy samples vs exp(-k t)")
    # Without the limit every sample succeeds.
    assert bool(fastdiffeq.solve_ivp(f, y0, t, rtol=1e-6, atol=1e-6).success.all())


@pytest.mark.parametrize("loop", ["masked", "direct", "checkpoint"])
def test_non_finite_initial_derivative_fails_only_that_sample(loop):
    rate = torch.tensor([1.0, math.inf, 2.0], dtype=DT).view(-1, 1)  # sample 1: f(t0, y0) = -inf
    y0 = torch.ones(3, 1, dtype=DT)
    t = torch.linspace(0.0, 1.0, 5, dtype=DT)
    kw = dict(rtol=1e-8, atol=1e-8, on_failure="mark")
    if loop == "masked":
        with torch.no_grad():
            sol = fastdiffeq.solve_ivp(lambda t, y: -rate * y, y0, t, **kw)
    else:
        y0 = y0.clone().requires_grad_(True)
        sol = fastdiffeq.solve_ivp(lambda t, y: -rate * y, y0, t, gradient=loop, params=(), **kw)
    assert [Status(int(x)) for x in sol.status] == [Status.SUCCESS, Status.NON_FINITE, Status.SUCCESS]
    _close(sol.ys[[0, 2], :, 0].detach(), torch.exp(-rate[[0, 2]] * t), 1e-6, "the finite samples")


class NaNAfterHalf(torch.nn.Module):
    """y' = c y, except sample 1 whose field is NaN for t > 0.5 (whatever its state): it fails NON_FINITE."""

    def __init__(self):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(-0.5, dtype=DT))

    def forward(self, t, y):
        bad = (torch.arange(y.shape[0]) == 1) & (t > 0.5)
        return self.c * y + torch.where(bad.view(-1, 1), math.nan, 0.0)


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "adjoint"])
def test_sample_with_non_finite_field_mid_solve(gradient):
    t = torch.linspace(0.0, 1.0, 5, dtype=DT)
    kw = dict(rtol=1e-8, atol=1e-8, gradient=gradient, on_failure="mark")

    def grads(B):
        f = NaNAfterHalf()
        y0 = torch.linspace(0.5, 1.5, B, dtype=DT).view(-1, 1).repeat(1, 2).requires_grad_(True)
        sol = fastdiffeq.solve_ivp(f, y0, t, **kw)
        loss = torch.where(torch.isfinite(sol.ys), sol.ys, 0.0).sum()
        return sol, torch.autograd.grad(loss, (y0, f.c), allow_unused=True)

    sol, (gy, gc) = grads(3)
    assert [Status(int(x)) for x in sol.status] == [Status.SUCCESS, Status.NON_FINITE, Status.SUCCESS]
    assert bool(torch.isfinite(sol.ys[1, :3]).all()) and bool(torch.isnan(sol.ys[1, 3:]).all())
    assert float(gy[1].abs().max()) == 0.0
    # The good samples: y = y0 exp(c t), so d/dy0 sum_t y = sum_t exp(c t) and d/dc = sum_t t y0 exp(c t).
    e = torch.exp(-0.5 * t)
    _close(gy[[0, 2]], e.sum().expand(2, 2), 1e-6, "y0 gradient of the good samples")
    y0_good = torch.tensor([0.5, 1.5], dtype=DT)
    assert gc is not None and abs(float(gc) - float(2 * y0_good.sum() * (t * e).sum())) < 1e-6, float(gc)


# --------------------------------------------------------------------------------------------------------
# 6. Gradients
# --------------------------------------------------------------------------------------------------------

class DampedMLP(torch.nn.Module):
    """f(t, y) = mlp([y, sin t]) - damp[b] * y: a shared MLP and one damping rate per sample."""

    def __init__(self, B: int, dim: int = 2, hidden: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = torch.nn.Linear(dim + 1, hidden).double()
        self.l2 = torch.nn.Linear(hidden, dim).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.5)
        self.damp = torch.nn.Parameter(torch.linspace(0.2, 2.0, B, dtype=DT))

    def forward(self, t, y):
        feats = torch.cat([y, torch.sin(t).to(y).reshape(-1, 1).expand(y.shape[0], 1)], -1)
        return self.l2(torch.tanh(self.l1(feats))) - self.damp.view(-1, 1) * y


def _weights(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


GRAD_T = {
    "shared": torch.linspace(0.0, 1.5, 4, dtype=DT).expand(3, 4),
    "mixed": torch.tensor([[0.0, 0.5, 1.0, 1.5], [2.0, 1.6, 1.0, 0.2], [-0.5, 0.0, 0.8, 2.0]], dtype=DT),
    "decreasing": torch.tensor([[1.5, 1.0, 0.5, 0.0], [2.0, 1.6, 1.0, 0.2], [0.5, 0.0, -0.8, -1.0]], dtype=DT),
}


def _module_grads(gradient, t_eval, rtol=1e-10, atol=1e-10):
    f = DampedMLP(3)
    y0 = _weights((3, 2), 1).requires_grad_(True)
    extra = {}
    if gradient == "adjoint_interpolated":
        gradient, extra = "adjoint", dict(adjoint_options=dict(trajectory="interpolated"))
    sol = fastdiffeq.solve_ivp(f, y0, t_eval, gradient=gradient, rtol=rtol, atol=atol, **extra)
    loss = (sol.ys * _weights(sol.ys.shape, 2)).sum()
    inputs = (y0, *f.parameters())
    return sol, torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("times", list(GRAD_T))
def test_gradient_modes_agree_on_a_module(times):
    t_eval = GRAD_T[times]
    sol_d, direct = _module_grads("direct", t_eval)
    sol_c, ckpt = _module_grads("checkpoint", t_eval)
    sol_a, adj = _module_grads("adjoint", t_eval)
    sol_i, interp = _module_grads("adjoint_interpolated", t_eval)
    for s in (sol_d, sol_c, sol_a, sol_i):
        assert bool(s.success.all())
    _close(sol_c.ys, sol_d.ys, 1e-13, "checkpoint forward vs direct forward")
    _close(sol_a.ys, sol_d.ys, 1e-13, "adjoint forward vs direct forward")
    _close(sol_i.ys, sol_d.ys, 1e-13, "interpolated adjoint forward vs direct forward")
    assert len(direct) == len(ckpt) == len(adj) == len(interp) == 6
    for i, (d, c, a, ip) in enumerate(zip(direct, ckpt, adj, interp)):
        assert float(d.norm()) > 0, f"gradient {i} is zero"
        assert _rel(c, d) < 1e-12, f"gradient {i}: checkpoint vs direct {_rel(c, d):.2e}"
        assert _rel(a, d) < 1e-6, f"gradient {i}: adjoint vs direct {_rel(a, d):.2e}"
        assert _rel(ip, d) < 1e-6, f"gradient {i}: interpolated adjoint vs direct {_rel(ip, d):.2e}"


def test_per_sample_parameter_gradient_is_per_sample():
    """Sample b's loss only depends on damp[b]: the gradient of sample 0's outputs w.r.t. damp is zero elsewhere."""
    for gradient in ("direct", "checkpoint", "adjoint"):
        f = DampedMLP(3)
        y0 = _weights((3, 2), 1)
        sol = fastdiffeq.solve_ivp(f, y0, GRAD_T["mixed"], gradient=gradient, rtol=1e-9, atol=1e-9)
        (g,) = torch.autograd.grad(sol.ys[0].sum(), f.damp)
        assert float(g[0].abs()) > 1e-6, gradient
        assert float(g[1:].abs().max()) == 0.0, f"{gradient}: {g.tolist()}"


def _closure_run(gradient, options=None, rtol=1e-10, atol=1e-12):
    t_eval = torch.tensor([[0.0, 0.4, 1.0], [0.3, 0.8, 1.2]], dtype=DT)

    def run(y0, a, w):
        def field(t, y):
            return torch.tanh(y @ w.T) * a.view(-1, 1) + torch.cos(t).view(-1, 1) * 0.3

        kw = dict(rtol=rtol, atol=atol, options=options, gradient=gradient)
        if gradient != "direct":
            kw["params"] = (a, w)
        return fastdiffeq.solve_ivp(field, y0, t_eval, **kw).ys

    inputs = (torch.tensor([[0.5, -0.3], [1.1, 0.2]], dtype=DT, requires_grad=True),
              torch.tensor([0.8, -1.3], dtype=DT, requires_grad=True),
              torch.tensor([[-0.3, 1.0], [-1.2, 0.1]], dtype=DT, requires_grad=True))
    return run, inputs


H = 0.05
FIXED = dict(first_step=H, min_step=H, max_step=H)


@pytest.mark.parametrize("gradient", ["direct", "checkpoint"])
def test_gradcheck_fixed_steps(gradient):
    run, inputs = _closure_run(gradient, FIXED)
    assert torch.autograd.gradcheck(run, inputs, eps=1e-5, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("gradient", ["direct", "checkpoint"])
def test_gradcheck_adaptive(gradient):
    # Step sizes are constants of the gradient: the missing d(solution)/dh * dh/d(input) term is of the size
    # of the local error, hence the loosened atol (as tests/test_gradients.py::test_gradcheck_adaptive).
    run, inputs = _closure_run(gradient)
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_adjoint_closure_matches_direct():
    run_d, inputs = _closure_run("direct")
    run_a, _ = _closure_run("adjoint")
    w = _weights((2, 3, 2), 5)
    gd = torch.autograd.grad((run_d(*inputs) * w).sum(), inputs)
    ga = torch.autograd.grad((run_a(*inputs) * w).sum(), inputs)
    for i, (a, d) in enumerate(zip(ga, gd)):
        assert _rel(a, d) < 1e-7, f"input {i}: adjoint vs direct {_rel(a, d):.2e}"


def test_adjoint_closure_without_params_raises():
    y0 = torch.ones(2, 1, dtype=DT, requires_grad=True)
    a = torch.tensor(0.5, dtype=DT, requires_grad=True)
    with pytest.raises(ValueError, match="params"):
        fastdiffeq.solve_ivp(lambda t, y: -a * y, y0, torch.linspace(0, 1, 3, dtype=DT), gradient="adjoint")


# --------------------------------------------------------------------------------------------------------
# 7. Failed samples give no gradient
# --------------------------------------------------------------------------------------------------------

class Quadratic(torch.nn.Module):
    """y' = a[b] y^2 + c y: per-sample a, shared c."""

    def __init__(self, a):
        super().__init__()
        self.a = torch.nn.Parameter(a.clone())
        self.c = torch.nn.Parameter(torch.tensor(-0.3, dtype=DT))

    def forward(self, t, y):
        return self.a.view(-1, 1) * y * y + self.c * y


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "adjoint", "adjoint_interpolated"])
def test_failed_samples_have_zero_gradient(gradient):
    a = torch.tensor([1.0, 0.5, 1.0, -1.0], dtype=DT)
    y0_all = torch.tensor([[0.2], [0.4], [3.0], [0.5]], dtype=DT)  # sample 2 blows up near t = 0.35
    kw = dict(rtol=1e-9, atol=1e-9, gradient=gradient, on_failure="mark")
    if gradient == "adjoint_interpolated":
        kw.update(gradient="adjoint", adjoint_options=dict(trajectory="interpolated"))

    def grads(idx):
        f = Quadratic(a[idx])
        y0 = y0_all[idx].clone().requires_grad_(True)
        sol = fastdiffeq.solve_ivp(f, y0, BLOW_T, **kw)
        w = _weights((4, len(BLOW_T), 1), 3)[idx]
        loss = (torch.where(torch.isfinite(sol.ys), sol.ys, 0.0) * w).sum()
        return sol, torch.autograd.grad(loss, (y0, f.a, f.c))

    sol, (gy, ga, gc) = grads(torch.arange(4))
    assert sol.success.tolist() == [True, True, False, True]
    assert bool(torch.isfinite(sol.ys[2, :2]).all()) and bool(torch.isnan(sol.ys[2, -1]).all())
    for g in (gy, ga, gc):
        assert bool(torch.isfinite(g).all()), f"non-finite gradient {g}"
    assert float(gy[2].abs()) == 0.0 and float(ga[2].abs()) == 0.0
    good = torch.tensor([0, 1, 3])
    sol_g, (gy_g, ga_g, gc_g) = grads(good)
    assert bool(sol_g.success.all())
    _close(gy[good], gy_g, 1e-12, "y0 gradient of the good samples")
    _close(ga[good], ga_g, 1e-12, "per-sample parameter gradient of the good samples")
    _close(gc, gc_g, 1e-12, "shared parameter gradient")


# --------------------------------------------------------------------------------------------------------
# 8. The three forward loops agree
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_failure", [False, True], ids=["all_succeed", "one_fails"])
def test_masked_graph_and_record_loops_give_the_same_forward(with_failure):
    """Mixed directions (rows 0 and 3 decreasing); with_failure: row 1 runs Van der Pol backwards from t=10.5,
    which blows up (reverse-time VdP is anti-damped), so it fails in all three loops alike."""
    t_eval = _per_sample_t_eval(5)
    flipped = [0, 3] + ([1] if with_failure else [])
    t_eval[flipped] = t_eval[flipped].flip(1)
    kw = dict(rtol=1e-7, atol=1e-7, on_failure="mark")
    mu = MU.clone()
    with torch.no_grad():
        masked = fastdiffeq.solve_ivp(vdp(mu), VDP_Y0, t_eval, **kw)
    y0 = VDP_Y0.clone().requires_grad_(True)
    graph = fastdiffeq.solve_ivp(vdp(mu), y0, t_eval, gradient="direct", **kw)
    assert graph.ys.requires_grad
    mu_p = mu.clone().requires_grad_(True)
    record = fastdiffeq.solve_ivp(vdp(mu_p), y0, t_eval, gradient="checkpoint", params=(mu_p,), **kw)
    assert record.ys.requires_grad
    expected_ok = [b != 1 for b in range(6)] if with_failure else [True] * 6
    assert masked.success.tolist() == expected_ok
    for name, other in (("direct (graph loop)", graph), ("checkpoint (record loop)", record)):
        ys = other.ys.detach()
        assert torch.equal(torch.isnan(ys), torch.isnan(masked.ys)), f"{name}: NaN rows differ"
        _close(ys.nan_to_num(0.0), masked.ys.nan_to_num(0.0), 1e-13, f"{name} vs masked")
        assert torch.equal(other.n_steps, masked.n_steps), (name, other.n_steps, masked.n_steps)
        assert torch.equal(other.n_accepted, masked.n_accepted), name
        assert torch.equal(other.status, masked.status), name


# --------------------------------------------------------------------------------------------------------
# 9. Bad input
# --------------------------------------------------------------------------------------------------------

def _neg(t, y):
    return -y


Y2 = torch.ones(2, 1, dtype=DT)
T3 = torch.linspace(0.0, 1.0, 3, dtype=DT)


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(t_eval=torch.zeros(3, 4, dtype=DT) + torch.arange(4, dtype=DT)), ValueError, "`t_eval`.*3 rows"),
    (dict(t_eval=torch.tensor([[0.0, 1.0, 2.0], [0.0, 2.0, 1.0]], dtype=DT)), ValueError, "`t_eval`.*rows \\[1\\]"),
    (dict(t_eval=torch.tensor([0.0, 1.0, 1.0], dtype=DT)), ValueError, "`t_eval`"),
    (dict(t_eval=torch.tensor([0.0, float("nan"), 2.0], dtype=DT)), ValueError, "`t_eval`"),
    (dict(t_eval=torch.tensor([0.0, 1.0, float("inf")], dtype=DT)), ValueError, "`t_eval`"),
    (dict(t_eval=torch.zeros(2, 0, dtype=DT)), ValueError, "`t_eval`"),
    (dict(t_eval=torch.zeros(1, 2, 3, dtype=DT)), ValueError, "`t_eval`"),
    (dict(t_eval=torch.arange(3)), TypeError, "`t_eval`"),
    (dict(t_eval=[0.0, 1.0]), TypeError, "`t_eval`"),
    (dict(y0=torch.tensor(1.0, dtype=DT)), ValueError, "`y0`"),
    (dict(y0=torch.zeros(0, 2, dtype=DT)), ValueError, "`y0`"),
    (dict(method="rk4"), ValueError, "`method`"),
    (dict(method="euler"), ValueError, "`method`"),
    (dict(gradient="backprop"), ValueError, "`gradient`"),
    (dict(on_failure="ignore"), ValueError, "`on_failure`"),
    (dict(rtol=0.0, atol=0.0), ValueError, "rtol"),
    (dict(options={"step_t": torch.tensor([0.5], dtype=DT)}), ValueError, "step_t"),
    (dict(options={"jump_t": torch.tensor([0.5], dtype=DT)}), ValueError, "jump_t"),
    (dict(options={"bogus": 1}), ValueError, "bogus"),
], ids=lambda x: None)
def test_bad_input(kwargs, exc, pattern):
    args = dict(y0=Y2, t_eval=T3)
    args.update(kwargs)
    y0, t_eval = args.pop("y0"), args.pop("t_eval")
    with pytest.raises(exc, match=pattern):
        fastdiffeq.solve_ivp(_neg, y0, t_eval, **args)


def test_t_eval_requiring_grad_is_refused():
    t = T3.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="`t_eval`"):
        fastdiffeq.solve_ivp(_neg, Y2, t)


# --------------------------------------------------------------------------------------------------------
# 10. The Solution
# --------------------------------------------------------------------------------------------------------

def test_solution_fields_with_a_multi_dim_state():
    B, T = 4, 5
    k = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=DT)
    y0 = _weights((B, 3, 2), 7)
    t_eval = torch.linspace(0.0, 1.0, T)  # float32 times are accepted; returned as float64

    def f(t, y):
        assert t.shape == (B,) and y.shape == (B, 3, 2)
        return -k.view(-1, 1, 1) * y

    sol = fastdiffeq.solve_ivp(f, y0, t_eval, rtol=1e-8, atol=1e-8)
    assert isinstance(sol, fastdiffeq.Solution)
    assert sol.ys.shape == (B, T, 3, 2) and sol.ys.dtype == DT
    assert sol.t_eval.shape == (B, T) and sol.t_eval.dtype == torch.float64
    assert sol.status.shape == (B,) and sol.status.dtype == torch.int32
    for n in (sol.n_steps, sol.n_accepted, sol.n_rejected):
        assert n.shape == (B,) and n.dtype == torch.int64
    assert torch.equal(sol.n_steps, sol.n_accepted + sol.n_rejected)
    assert bool((sol.n_accepted > 0).all())
    assert isinstance(sol.nfe, int) and sol.nfe >= int(sol.n_steps.max())
    assert sol.success.dtype == torch.bool and bool(sol.success.all())
    assert all(Status(int(s)) is Status.SUCCESS for s in sol.status)
    assert sol.t_events is None and sol.y_events is None
    exact = y0.unsqueeze(1) * torch.exp(-k.view(-1, 1, 1, 1) * sol.t_eval.view(B, T, 1, 1))
    _close(sol.ys, exact, 1e-6, "multi-dim state vs exp(-k t)")
    r = repr(sol)
    assert r.startswith("Solution(") and f"samples={B}" in r and f"succeeded={B}" in r


def test_status_is_exported():
    assert fastdiffeq.Status is Status
    assert "Status" in fastdiffeq.__all__ and "solve_ivp" in fastdiffeq.__all__
    assert {"SUCCESS", "MAX_STEPS", "STEP_UNDERFLOW", "NON_FINITE"} <= set(Status.__members__)
    assert len({int(s) for s in Status}) == len(Status)


def test_single_time_point():
    sol = fastdiffeq.solve_ivp(_neg, Y2, torch.tensor([0.5], dtype=DT))
    assert sol.ys.shape == (2, 1, 1)
    _close(sol.ys[:, 0], Y2, 0.0, "T = 1 returns y0")
    assert bool(sol.success.all())


# --------------------------------------------------------------------------------------------------------
# 11. float32
# --------------------------------------------------------------------------------------------------------

def test_float32_smoke():
    mu = MU[:4]
    t_eval = torch.linspace(0.0, 3.0, 6)
    sol32 = fastdiffeq.solve_ivp(vdp(mu), VDP_Y0[:4].float(), t_eval, rtol=1e-6, atol=1e-6)
    sol64 = fastdiffeq.solve_ivp(vdp(mu), VDP_Y0[:4], t_eval.double(), rtol=1e-9, atol=1e-9)
    assert sol32.ys.dtype == torch.float32
    assert bool(sol32.success.all()) and bool(torch.isfinite(sol32.ys).all())
    scale = 1 + sol64.ys.abs().amax(dim=(1, 2), keepdim=True)
    err = float(((sol32.ys.double() - sol64.ys) / scale).abs().max())
    assert err < 1e-4, f"float32 vs float64: {err:.2e}"


# --------------------------------------------------------------------------------------------------------
# The interpolated per-sample adjoint: stable where re-solving y backwards is not
# --------------------------------------------------------------------------------------------------------

class VdP(torch.nn.Module):
    def __init__(self, B):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.linspace(1.0, 8.0, B, dtype=DT))

    def forward(self, t, y):
        x, v = y.unbind(-1)
        return torch.stack([v, self.mu * (1 - x * x) * v - x], -1)


def test_interpolated_adjoint_is_stable_on_a_limit_cycle():
    """Van der Pol's limit cycle attracts forward, so re-solving y backwards from t = 8 alone (no output
    in between to re-anchor it) diverges; reading y from the forward's dense output does not."""
    B = 4
    y0 = torch.tensor([2.0, 0.0], dtype=DT).repeat(B, 1)
    t = torch.tensor([0.0, 8.0], dtype=DT)
    grads = {}
    for name, extra in [("checkpoint", dict(gradient="checkpoint")),
                        ("interpolated", dict(gradient="adjoint", adjoint_options=dict(trajectory="interpolated")))]:
        f = VdP(B)
        sol = fastdiffeq.solve_ivp(f, y0, t, rtol=1e-9, atol=1e-9, **extra)
        (sol.ys[:, -1] ** 2).sum().backward()
        grads[name] = f.mu.grad.clone()
    assert _rel(grads["interpolated"], grads["checkpoint"]) < 1e-4, grads
    f = VdP(B)
    sol = fastdiffeq.solve_ivp(f, y0, t, rtol=1e-9, atol=1e-9, gradient="adjoint")
    with pytest.raises(fastdiffeq.SolverError, match="adjoint backward"):
        (sol.ys[:, -1] ** 2).sum().backward()


def test_adjoint_options_are_checked():
    f = VdP(2)
    y0 = torch.ones(2, 2, dtype=DT)
    t = torch.linspace(0, 1, 3, dtype=DT)
    with pytest.raises(ValueError, match="trajectory"):
        fastdiffeq.solve_ivp(f, y0, t, gradient="adjoint", adjoint_options=dict(trajectory="bogus"))
    with pytest.raises(ValueError, match="adjoint_options"):
        fastdiffeq.solve_ivp(f, y0, t, gradient="adjoint", adjoint_options=dict(seminorm=True))
    with pytest.raises(TypeError, match="adjoint_options"):
        fastdiffeq.solve_ivp(f, y0, t, gradient="adjoint", adjoint_options="interpolated")
