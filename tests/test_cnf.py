"""fastdiffeq.nn.CNF, its layers and the toy datasets, against closed forms (linear fields: matrix exponentials)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fastdiffeq.datasets import TOY_2D, TOY_2D_ENTROPY, toy_2d
from fastdiffeq.nn import ACTIVATIONS, CNF, ConcatSquashLinear, ConcatSquashMLP

GRADIENTS = ("adjoint", "direct", "checkpoint")
pytestmark = pytest.mark.usefixtures("single_thread")  # tiny fields: intra-op threads only add contention


class Linear(nn.Module):
    """f(t, z) = A z: z(t) = exp(At) x, tr(df/dz) = tr(A)."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t, z):
        return z @ self.A.T


A0 = torch.tensor([[0.3, -0.7, 0.1], [0.5, -0.2, 0.0], [0.2, 0.4, -0.5]], dtype=torch.float64)


def std_normal_logprob(z):
    return (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(-1)


def analytic_logprob(A, T, x):
    z = x @ torch.linalg.matrix_exp(A * T).T
    return std_normal_logprob(z) + T * torch.trace(A)


def small_mlp(dim=2, seed=0, activation="softplus", hidden=(16, 16)):
    torch.manual_seed(seed)
    return ConcatSquashMLP(dim, hidden, activation).double()


# ---- linear fields: closed forms ---------------------------------------------------------------------------

@pytest.mark.parametrize("gradient", GRADIENTS)
def test_linear_field_log_density_and_gradients_match_matrix_exponential(gradient):
    torch.manual_seed(0)
    T = 1.3
    flow = CNF(Linear(A0), T=T, rtol=1e-10, atol=1e-10, gradient=gradient).double()
    T = flow.T.item()  # 1.3 as the float32 parameter held it before .double()
    x = torch.randn(6, 3, dtype=torch.float64)
    z, delta = flow(x)
    torch.testing.assert_close(z, x @ torch.linalg.matrix_exp(A0 * T).T, rtol=0, atol=1e-7)
    torch.testing.assert_close(delta, torch.full((6,), -T * torch.trace(A0).item(), dtype=torch.float64),
                               rtol=0, atol=1e-9)
    lp = flow.log_prob(x)
    A_ref = A0.clone().requires_grad_(True)
    sqrt_T = torch.tensor(math.sqrt(T), dtype=torch.float64, requires_grad=True)
    ref = analytic_logprob(A_ref, sqrt_T.square(), x)
    torch.testing.assert_close(lp, ref.detach(), rtol=0, atol=1e-6)
    lp.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(flow.dynamics.A.grad, A_ref.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(flow.sqrt_T.grad, sqrt_T.grad, rtol=0, atol=1e-5)


def test_linear_field_inverse_and_sample_log_prob():
    torch.manual_seed(1)
    T = 0.8
    flow = CNF(Linear(A0), T=T, rtol=1e-10, atol=1e-10).double()
    T = flow.T.item()
    z = torch.randn(5, 3, dtype=torch.float64)
    x, lp = flow.inverse(z, with_logp=True)
    torch.testing.assert_close(x, z @ torch.linalg.matrix_exp(-A0 * T).T, rtol=0, atol=1e-7)
    torch.testing.assert_close(lp, analytic_logprob(A0, T, x), rtol=0, atol=1e-6)
    torch.testing.assert_close(flow.inverse(z), x, rtol=0, atol=1e-9)


def test_rnode_terms_match_closed_forms_for_a_linear_field():
    torch.manual_seed(2)
    T = 1.1
    flow = CNF(Linear(A0), T=T, kinetic=0.5, jacobian=0.25, rtol=1e-10, atol=1e-10).double()
    T = flow.T.item()
    x = torch.randn(4, 3, dtype=torch.float64)
    flow(x)
    terms = flow.regularization_terms()
    # kinetic: int_0^T ||A exp(At) x||^2 dt by composite Simpson on a fine grid of matrix exponentials.
    ts = torch.linspace(0, T, 2001, dtype=torch.float64)
    speeds = torch.stack([(x @ (A0 @ torch.linalg.matrix_exp(A0 * t)).T).square().sum(1) for t in ts])
    w = torch.ones(2001, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    kinetic = (w[:, None] * speeds).sum(0) * (T / 2000) / 3
    torch.testing.assert_close(terms["kinetic"], kinetic, rtol=1e-8, atol=0)
    frob = torch.full((4,), T * A0.square().sum().item(), dtype=torch.float64)
    torch.testing.assert_close(terms["jacobian"], frob, rtol=1e-9, atol=0)
    torch.testing.assert_close(flow.regularization(), 0.5 * kinetic + 0.25 * frob, rtol=1e-8, atol=0)
    # Hutchinson's Frobenius estimate is unbiased: ||J^T eps||^2 averages to ||A||_F^2.
    torch.manual_seed(3)
    hutch = CNF(Linear(A0), T=T, trace="hutchinson", noise="gaussian", jacobian=1.0, rtol=1e-8, atol=1e-8).double()
    hutch.sqrt_T.data.fill_(math.sqrt(T))
    hutch(torch.randn(20000, 3, dtype=torch.float64))
    est = hutch.regularization_terms()["jacobian"]
    assert abs(est.mean().item() - frob[0].item()) < 4 * est.std().item() / math.sqrt(est.numel())


def test_regularization_zero_weights_and_before_forward():
    flow = CNF(Linear(A0)).double()
    with pytest.raises(RuntimeError, match="forward"):
        flow.regularization()
    flow(torch.randn(3, 3, dtype=torch.float64))
    assert torch.equal(flow.regularization(), torch.zeros(3, dtype=torch.float64))
    assert flow.regularization_terms() == {}


# ---- the Hutchinson estimator ------------------------------------------------------------------------------

@pytest.mark.parametrize("gradient", GRADIENTS)
def test_hutchinson_noise_is_drawn_once_per_solve_and_reused_backward(gradient):
    # Linear field, Rademacher noise: each sample's delta_logp is exactly -T eps^T A eps = -T (tr A + s (a01 + a10))
    # with s = eps0 eps1 = +-1 -- one value of s per sample means one draw for the whole solve. The gradient must
    # use the same draw: d/dA sum_k delta_k = -T sum_k eps_k eps_k^T.
    A = A0[:2, :2]
    T = 0.9
    torch.manual_seed(4)
    flow = CNF(Linear(A), T=T, train_T=False, trace="hutchinson", rtol=1e-9, atol=1e-9, gradient=gradient).double()
    T = flow.T.item()
    _, delta = flow(torch.randn(64, 2, dtype=torch.float64))
    s = (-delta / T - torch.trace(A)) / (A[0, 1] + A[1, 0])
    torch.testing.assert_close(s.abs(), torch.ones_like(s), rtol=0, atol=1e-6)
    s = s.round()
    delta.sum().backward()
    expected = -T * torch.stack([torch.stack([torch.ones_like(s), s]), torch.stack([s, torch.ones_like(s)])]).sum(-1)
    torch.testing.assert_close(flow.dynamics.A.grad, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("derivatives", ["auto", "autograd"])
@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_for_a_nonlinear_field(noise, derivatives):
    dyn = small_mlp(seed=5)
    x = torch.randn(8, 2, dtype=torch.float64)
    exact = CNF(dyn, rtol=1e-8, atol=1e-8, derivatives=derivatives).double()
    with torch.no_grad():
        _, d_exact = exact(x)
    torch.manual_seed(6)
    hutch = CNF(dyn, trace="hutchinson", noise=noise, rtol=1e-8, atol=1e-8, derivatives=derivatives).double()
    reps = 1500
    with torch.no_grad():
        _, d = hutch(x.repeat(reps, 1))
    d = d.reshape(reps, 8)
    err = (d.mean(0) - d_exact).abs()
    assert (err < 4.5 * d.std(0) / math.sqrt(reps) + 1e-6).all(), (err, d.std(0))


# ---- special fields, round trips, gradient modes -----------------------------------------------------------

class Zero(nn.Module):
    def forward(self, t, z):
        return torch.zeros_like(z)


def exactly(a, b):  # to the last bit, up to the dense output's rounding of y0 (a quartic blend: ~1 ulp of x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_zero_field_gives_the_base_density_exactly():
    x = torch.randn(7, 2, dtype=torch.float64)
    exactly(CNF(Zero(), train_T=False).double().log_prob(x), std_normal_logprob(x))
    dyn = small_mlp(seed=7)
    with torch.no_grad():
        for p in dyn.layers[-1].parameters():
            p.zero_()
    for trace in ("exact", "hutchinson"):
        for derivatives in ("auto", "autograd"):
            flow = CNF(dyn, trace=trace, derivatives=derivatives).double()
            exactly(flow.log_prob(x), std_normal_logprob(x))
    base = torch.distributions.MultivariateNormal(torch.ones(2, dtype=torch.float64), 2 * torch.eye(2).double())
    exactly(CNF(Zero(), base=base).double().log_prob(x), base.log_prob(x))


def test_sample_then_log_prob_round_trip():
    torch.manual_seed(8)
    flow = CNF(small_mlp(seed=8), rtol=1e-9, atol=1e-9).double()
    x, lp = flow.sample(50, with_log_prob=True)
    assert x.shape == (50, 2) and lp.shape == (50,)
    torch.testing.assert_close(flow.log_prob(x), lp, rtol=0, atol=1e-4)
    z = torch.randn(20, 2, dtype=torch.float64)
    torch.testing.assert_close(flow(flow.inverse(z))[0], z, rtol=0, atol=1e-4)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_concat_squash_mlp_jacobian_products_equal_autograd(activation):
    dyn = small_mlp(dim=3, seed=9, activation=activation)
    z = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor(0.4, dtype=torch.float64)
    dz, jv = dyn.forward_with_tangents(t, z, torch.eye(3, dtype=torch.float64).unsqueeze(1).expand(3, 5, 3))
    torch.testing.assert_close(dz, dyn(t, z))
    jac = torch.autograd.functional.jacobian(lambda zz: dyn(t, zz).sum(0), z)  # [3 out, 5, 3 in]
    torch.testing.assert_close(jv, jac.permute(2, 1, 0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_network_jacobian_and_autograd_paths_agree_in_values_and_gradients(trace):
    x = torch.randn(16, 2, dtype=torch.float64)
    results = []
    for derivatives in ("auto", "autograd"):
        flow = CNF(small_mlp(seed=10), trace=trace, kinetic=0.1, jacobian=0.1, rtol=1e-8, atol=1e-8,
                   gradient="direct", derivatives=derivatives).double()
        torch.manual_seed(11)  # the same Hutchinson draw
        loss = -flow.log_prob(x).mean() + flow.regularization().mean()
        loss.backward()
        results.append((loss.detach(), [p.grad for p in flow.parameters()]))
    # eps^T J eps is the same either way; the Frobenius estimates differ (||J eps||^2 vs ||J^T eps||^2).
    if trace == "exact":
        torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=0)
        for g0, g1 in zip(results[0][1], results[1][1]):
            torch.testing.assert_close(g0, g1, rtol=1e-8, atol=1e-10)


def test_a_subclass_that_overrides_forward_is_differentiated_by_autograd():
    class Doubled(ConcatSquashMLP):
        def forward(self, t, z):
            return 2 * super().forward(t, z)

    torch.manual_seed(17)
    doubled = Doubled(2, (8,)).double()
    x = torch.randn(6, 2, dtype=torch.float64)
    lp = CNF(doubled, rtol=1e-9, atol=1e-9).double().log_prob(x)
    ref = CNF(doubled, rtol=1e-9, atol=1e-9, derivatives="autograd").double().log_prob(x)
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-10)


def test_gradient_modes_agree():
    x = torch.randn(16, 2, dtype=torch.float64)
    grads = {}
    for gradient in GRADIENTS:
        flow = CNF(small_mlp(seed=12), rtol=1e-8, atol=1e-8, gradient=gradient, kinetic=0.1, jacobian=0.1).double()
        (-flow.log_prob(x).mean() + flow.regularization().mean()).backward()
        grads[gradient] = torch.cat([p.grad.reshape(-1) for p in flow.parameters()])
    torch.testing.assert_close(grads["checkpoint"], grads["direct"], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(grads["adjoint"], grads["direct"], rtol=1e-4, atol=1e-6)


def test_torchdiffeq_backend_takes_the_same_steps():
    pytest.importorskip("torchdiffeq")
    x = torch.randn(32, 2, dtype=torch.float64)
    out = {}
    for backend in ("fastdiffeq", "torchdiffeq"):
        flow = CNF(small_mlp(seed=13), backend=backend).double()
        lp = flow.log_prob(x)
        lp.mean().backward()
        out[backend] = (lp.detach(), flow.nfe_forward, flow.nfe_backward)
    torch.testing.assert_close(out["fastdiffeq"][0], out["torchdiffeq"][0], rtol=0, atol=1e-8)
    assert out["fastdiffeq"][1] == out["torchdiffeq"][1]


def test_end_time_is_learned_only_when_train_T():
    x = torch.randn(8, 2, dtype=torch.float64)
    flow = CNF(small_mlp(seed=14), T=0.5).double()
    assert flow.T.item() == pytest.approx(0.5)
    flow.log_prob(x).sum().backward()
    assert flow.sqrt_T.grad is not None and flow.sqrt_T.grad.abs().item() > 0
    fixed = CNF(small_mlp(seed=14), T=0.5, train_T=False).double()
    assert "sqrt_T" not in dict(fixed.named_parameters())


def test_non_flat_event_shapes_and_autograd_loop_for_large_dimensions():
    class Mix(nn.Module):  # a per-sample linear map on [N, 3, 7] data (21 dimensions: the per-dimension loop)
        def __init__(self):
            super().__init__()
            self.A = nn.Parameter(0.1 * torch.randn(21, 21, dtype=torch.float64))

        def forward(self, t, z):
            return (z.reshape(z.shape[0], -1) @ self.A.T).reshape(z.shape)

    torch.manual_seed(15)
    mix = Mix()
    flow = CNF(mix, rtol=1e-9, atol=1e-9).double()
    x = torch.randn(4, 3, 7, dtype=torch.float64)
    lp = flow.log_prob(x)
    torch.testing.assert_close(lp, analytic_logprob(mix.A.detach(), 1.0, x.reshape(4, -1)), rtol=0, atol=1e-6)
    assert flow.sample(3).shape == (3, 3, 7)


def test_training_lowers_the_8gaussians_nll_by_a_nat():
    torch.manual_seed(0)
    flow = CNF(ConcatSquashMLP(2, (32, 32), "tanh"), T=0.5, gradient="direct", rtol=1e-3, atol=1e-3)
    x_test = toy_2d("8gaussians", 4000, seed=1)
    with torch.no_grad():
        nll0 = -flow.log_prob(x_test).mean().item()
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        (-flow.log_prob(toy_2d("8gaussians", 128)).mean()).backward()
        opt.step()
    with torch.no_grad():
        nll = -flow.log_prob(x_test).mean().item()
    assert nll0 - nll >= 1.0, (nll0, nll)


# ---- layers ------------------------------------------------------------------------------------------------

def test_concat_squash_linear_formula_and_per_sample_times():
    torch.manual_seed(16)
    layer = ConcatSquashLinear(3, 4).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor(0.7, dtype=torch.float64)
    expected = (x @ layer.weight.T + layer.bias) * torch.sigmoid(layer.gate_weight * t + layer.gate_bias) \
        + layer.time_weight * t
    torch.testing.assert_close(layer(t, x), expected)
    ts = torch.rand(5, dtype=torch.float64)
    per_sample = layer(ts, x)
    for i in range(5):
        torch.testing.assert_close(per_sample[i], layer(ts[i], x[i:i + 1])[0])
    with pytest.raises(ValueError, match="`t`"):
        layer(torch.rand(4, dtype=torch.float64), x)
    with pytest.raises(ValueError, match="`x`"):
        layer(t, torch.randn(5, 2, dtype=torch.float64))


def test_concat_squash_mlp_shape_and_arguments():
    mlp = ConcatSquashMLP(2)
    assert mlp(torch.tensor(0.0), torch.randn(9, 2)).shape == (9, 2)
    assert [layer.out_features for layer in mlp.layers] == [64, 64, 64, 2]
    with pytest.raises(ValueError, match="activation"):
        ConcatSquashMLP(2, activation="gelu2")
    with pytest.raises(ValueError, match="dim"):
        ConcatSquashMLP(0)
    with pytest.raises(ValueError, match="hidden"):
        ConcatSquashMLP(2, hidden=(64, -1))


# ---- datasets ----------------------------------------------------------------------------------------------

def test_toy_generators_are_reproducible():
    for name in TOY_2D:
        a, b = toy_2d(name, 257, seed=3), toy_2d(name, 257, seed=3)
        assert a.shape == (257, 2) and a.dtype == torch.float32 and torch.equal(a, b)
        assert not torch.equal(a, toy_2d(name, 257, seed=4))
        torch.manual_seed(5)
        c = toy_2d(name, 100)
        torch.manual_seed(5)
        assert torch.equal(c, toy_2d(name, 100))
    assert toy_2d("moons", 10, dtype=torch.float64).dtype == torch.float64


def _knn_entropy(x: np.ndarray, k: int = 5) -> float:
    """Kozachenko-Leonenko nearest-neighbour estimate of differential entropy (nats), 2-D."""
    from scipy.spatial import cKDTree
    from scipy.special import digamma
    r = cKDTree(x).query(x, k=k + 1)[0][:, -1]
    return float(digamma(len(x)) - digamma(k) + math.log(math.pi) + 2 * np.mean(np.log(r)))


@pytest.mark.parametrize("name", TOY_2D)
def test_toy_generators_have_the_published_entropy(name):
    pytest.importorskip("scipy")
    x = toy_2d(name, 60000, seed=0, dtype=torch.float64).numpy()
    assert abs(_knn_entropy(x) - TOY_2D_ENTROPY[name]) < 0.05


def test_toy_generator_moments():
    g8 = toy_2d("8gaussians", 200000, seed=1, dtype=torch.float64)
    torch.testing.assert_close(g8.mean(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=0.02)
    # E||x||^2 = (r^2 + 2 sigma^2) with r = 4 / 1.414, sigma = 0.5 / 1.414.
    assert g8.square().sum(1).mean().item() == pytest.approx((16 + 0.5) / 1.414 ** 2, rel=0.01)
    cb = toy_2d("checkerboard", 200000, seed=1, dtype=torch.float64)
    assert cb.min().item() >= -4 and cb.max().item() < 4
    assert cb[:, 0].var().item() == pytest.approx(64 / 12, rel=0.02)  # x1 uniform on [-4, 4)
    # checkerboard cells: floor(x1 / 2) + floor(x2 / 2) is always even... or odd, the same for every point
    parity = (torch.floor(cb[:, 0] / 2) + torch.floor(cb[:, 1] / 2)).remainder(2)
    assert parity.unique().numel() == 1
    for name in ("2spirals", "pinwheel", "circles", "rings"):  # symmetric about the origin
        x = toy_2d(name, 200000, seed=2, dtype=torch.float64)
        torch.testing.assert_close(x.mean(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=0.02)
    rings = toy_2d("rings", 40000, seed=3, dtype=torch.float64).norm(dim=1)
    assert rings.mean().item() == pytest.approx(3 * (1 + 0.75 + 0.5 + 0.25) / 4, rel=0.01)


# ---- bad input ---------------------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    mlp = ConcatSquashMLP(2)
    with pytest.raises(ValueError, match="trace"):
        CNF(mlp, trace="exactly")
    with pytest.raises(ValueError, match="noise"):
        CNF(mlp, noise="uniform")
    with pytest.raises(ValueError, match="gradient"):
        CNF(mlp, gradient="backprop")
    with pytest.raises(ValueError, match="method"):
        CNF(mlp, method="rk45")
    with pytest.raises(ValueError, match="T"):
        CNF(mlp, T=0.0)
    with pytest.raises(ValueError, match="kinetic"):
        CNF(mlp, kinetic=-1.0)
    with pytest.raises(ValueError, match="backend"):
        CNF(mlp, backend="jax")
    with pytest.raises(ValueError, match="checkpoint"):
        CNF(mlp, gradient="checkpoint", backend="torchdiffeq")
    with pytest.raises(TypeError, match="dynamics"):
        CNF(lambda t, z: z)
    with pytest.raises(TypeError, match="base"):
        CNF(mlp, base="normal")
    flow = CNF(mlp)
    with pytest.raises(ValueError, match="`x`"):
        flow.log_prob(torch.randn(5, 3))
    with pytest.raises(ValueError, match="`x`"):
        flow.log_prob(torch.randn(5))
    with pytest.raises(TypeError, match="`x`"):
        flow.log_prob([[0.0, 1.0]])
    with pytest.raises(ValueError, match="`z`"):
        flow.inverse(torch.randn(5, 1))
    with pytest.raises(ValueError, match="`n`"):
        flow.sample(0)
    with pytest.raises(ValueError, match="dim"):
        CNF(Zero()).sample(3)

    class WrongShape(nn.Module):
        def forward(self, t, z):
            return z[:, :1]

    with pytest.raises(ValueError, match="dynamics"):
        CNF(WrongShape()).log_prob(torch.randn(4, 2))
    with pytest.raises(ValueError, match="name"):
        toy_2d("9gaussians", 10)
    with pytest.raises(ValueError, match="`n`"):
        toy_2d("moons", 0)
    with pytest.raises(TypeError, match="seed"):
        toy_2d("moons", 10, seed=1.5)


# ---- the demo ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--backend", "torchdiffeq", "--trace", "hutchinson", "--gradient", "direct"]])
def test_demo_script_runs(tmp_path, extra):
    import os
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "cnf_toy.py")
    out = tmp_path / "cnf.png"
    proc = subprocess.run([sys.executable, script, "--iterations", "3", "--batch", "64", "--test-size", "500",
                           "--hidden", "16,16", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test NLL on 500 fresh samples" in proc.stdout
    assert out.exists() and out.stat().st_size > 10000
