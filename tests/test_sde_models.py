"""fastdiffeq.nn.SDEBNN and fastdiffeq.nn.LatentSDE: shapes, KL at initialisation, STL, backends, gradient modes,
short trainings, argument checks, and the two examples run with tiny settings."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from fastdiffeq import BrownianInterval
from fastdiffeq.nn import SDEBNN, LatentSDE

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RecordingBM:
    """A Brownian motion wrapper that records every increment the solver asks for (generic, non-vectorised path)."""

    def __init__(self, bm):
        self.bm = bm
        self.shape, self.dtype, self.device = bm.shape, bm.dtype, bm.device
        self.levy_area_approximation = "none"
        self.calls = []

    def __call__(self, ta, tb, return_U=False, return_A=False):
        assert not (return_U or return_A)
        out = self.bm(ta, tb)
        self.calls.append((float(ta), float(tb), out))
        return out


def _model(**kwargs) -> SDEBNN:
    torch.manual_seed(0)
    return SDEBNN(1, 1, width=8, augment_dim=2, **kwargs).double()


def _perturb_drift(model: SDEBNN, std: float = 0.05) -> None:
    """Give MLP_φ a nonzero last layer (it starts at zero), so u ≠ 0 and the KL and STL terms are exercised."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.drift_out.weight.copy_(torch.randn(model.drift_out.weight.shape, generator=g, dtype=torch.float64) * std)
        model.drift_out.bias.copy_(torch.randn(model.drift_out.bias.shape, generator=g, dtype=torch.float64) * std)


def _x(n: int = 6) -> torch.Tensor:
    return torch.linspace(-1, 1, n, dtype=torch.float64).unsqueeze(1)


def _bm(model: SDEBNN, batch: int, entropy: int = 7) -> BrownianInterval:
    return model.make_bm(batch, entropy=entropy, dtype=torch.float64)


def _flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype)
                      for p in model.parameters()])


# SDEBNN -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stl", [False, True])
@pytest.mark.parametrize("readout", ["linear", "first"])
def test_sdebnn_shapes_and_zero_kl_at_init(stl, readout):
    model = SDEBNN(2, 2, width=8, augment_dim=3, stl=stl, readout=readout)
    H, W = 5, 8
    assert model.num_weights == W * (H + 1) + W + H * W + H
    x = torch.randn(7, 2)
    pred, kl = model(x)
    assert pred.shape == (7, 2) and kl.shape == (7,)
    assert pred.dtype == torch.float32
    assert torch.equal(kl, torch.zeros(7))  # MLP_φ's last layer is zero: u = 0, and the STL term u·dW = 0 too
    assert torch.isfinite(pred).all()


def test_sdebnn_same_noise_same_output_and_noise_matters():
    model = _model()
    _perturb_drift(model)
    x = _x()
    p1, k1 = model(x, bm=_bm(model, 6, entropy=3))
    p2, k2 = model(x, bm=_bm(model, 6, entropy=3))
    assert torch.equal(p1, p2) and torch.equal(k1, k2)
    torch.manual_seed(11)
    p3, k3 = model(x)
    torch.manual_seed(11)
    p4, k4 = model(x)
    assert torch.equal(p3, p4) and torch.equal(k3, k4)
    p5, _ = model(x, bm=_bm(model, 6, entropy=4))
    assert not torch.allclose(p1, p5)  # the weights are random: another path gives another function
    # Same input in every row: the rows' weight paths (and so their outputs) differ only by their noise.
    same = x[:1].expand(6, 1)
    p6, _ = model(same, bm=_bm(model, 6, entropy=3))
    assert p6.std() > 0


def test_sdebnn_sample_functions_share_one_weight_path_per_sample():
    model = _model()
    _perturb_drift(model)
    x = torch.cat([_x(5), _x(5)[:1]])  # the last input repeats the first
    funcs, kl = model.sample_functions(x, 4, entropy=3)
    assert funcs.shape == (4, 6, 1) and kl.shape == (4,)
    torch.testing.assert_close(funcs[:, 0], funcs[:, 5], rtol=0, atol=0)  # same input, same path: same value
    assert funcs[:, 0].std() > 0  # different samples: different functions
    again, _ = model.sample_functions(x, 4, entropy=3)
    assert torch.equal(funcs, again)
    # Sample s equals forward() on its own rows driven by the increments of row s of the (4, m) motion.
    row = RecordingBM(model.make_bm(4, entropy=3, dtype=torch.float64))
    row.shape = torch.Size((1, model.num_weights))
    row.bm = (lambda full: (lambda a, b: full(a, b)[2:3]))(row.bm)
    pred, _ = model(x[:1], bm=row)
    torch.testing.assert_close(pred[0], funcs[2, 0], rtol=1e-12, atol=1e-12)


def test_sdebnn_stl_adds_integral_of_u_dw_on_the_same_path():
    """kl(stl) − kl(no stl) = Σ_n u_sg(w_n, t_n)·ΔW_n / σ, w_n the Euler path of the weights on the SAME ΔW_n,
    rebuilt here independently from the recorded increments (and the prediction does not change)."""
    model = _model(stl=False)
    _perturb_drift(model, std=0.1)
    x = _x()
    recorder = RecordingBM(_bm(model, 6))
    p0, k0 = model(x, bm=recorder)
    model.stl = True
    replay = RecordingBM(recorder.bm)
    p1, k1 = model(x, bm=replay)
    assert [c[:2] for c in replay.calls] == [c[:2] for c in recorder.calls] and len(replay.calls) == model.steps
    assert torch.equal(p0, p1)  # STL only adds a KL diffusion: h and w are untouched

    with torch.no_grad():
        w = model.w0.detach().unsqueeze(0).expand(6, -1).clone()
        stl_sum = torch.zeros(6, dtype=torch.float64)
        for ta, tb, dw in replay.calls:
            u, _ = model._drift_net(w, torch.full((6, 1), ta, dtype=torch.float64), detach=True)
            stl_sum += (u * dw).sum(1) / model.sigma
            w = w + (u - w) * (tb - ta) + model.sigma * dw
    assert stl_sum.abs().max() > 1e-3  # not vacuous
    torch.testing.assert_close(k1 - k0, stl_sum.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stl", [False, True])
@pytest.mark.parametrize("gradient", ["direct", "adjoint"])
def test_sdebnn_torchsde_backend_same_output_and_gradients(stl, gradient):
    torchsde = pytest.importorskip("torchsde")
    x = _x()
    results = []
    for backend in ("fastdiffeq", "torchsde"):
        model = _model(stl=stl, gradient=gradient, backend=backend)
        _perturb_drift(model)
        bm = torchsde.BrownianInterval(0.0, 1.0, size=(6, model.num_weights), entropy=5, dtype=torch.float64)
        pred, kl = model(x, bm=bm)
        (pred.square().sum() + kl.sum()).backward()
        results.append((pred.detach(), kl.detach(), _flat_grads(model)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stl", [False, True])
def test_sdebnn_adjoint_gradients_match_direct(stl):
    """The stochastic adjoint solves the adjoint SDE backwards on the same path: its gradients converge to the
    direct ones as dt → 0 (strong order 1 in dt for this additive-noise system). Measured relative errors of the
    whole gradient vector (float64, this model): 20 steps ≈ 0.12 / 0.03 (stl False / True), 200 steps ≈ 0.010 /
    0.003, 1000 steps ≈ 0.002 / 0.0007. At 200 steps we allow 0.03; at 20 steps the error must be larger."""
    x = _x()
    errors = {}
    for steps in (20, 200):
        grads, preds = [], []
        for gradient in ("direct", "adjoint"):
            model = _model(stl=stl, gradient=gradient, steps=steps)
            _perturb_drift(model)
            pred, kl = model(x, bm=_bm(model, 6))
            (pred.square().sum() + kl.sum()).backward()
            grads.append(_flat_grads(model))
            preds.append(pred.detach())
        errors[steps] = ((grads[1] - grads[0]).norm() / grads[0].norm()).item()
        if not stl:  # Itô Euler in both modes: the same forward solve
            torch.testing.assert_close(preds[0], preds[1], rtol=0, atol=0)
    assert errors[200] < 0.03, errors
    assert errors[200] < errors[20], errors


def _sine_data(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.linspace(-1, -0.3, n // 2), torch.linspace(0.3, 1, n - n // 2)]).unsqueeze(1)
    y = torch.sin(3 * x) + 0.05 * torch.randn(x.shape, generator=g)
    return x, y


@pytest.mark.parametrize("stl", [False, True])
def test_sdebnn_short_training_lowers_loss(stl):
    torch.manual_seed(0)
    x, y = _sine_data()
    model = SDEBNN(1, 1, width=16, augment_dim=2, stl=stl)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)

    def loss_fn():
        pred, kl = model(x)
        return (pred - y).square().mean() + kl.mean() / len(x)

    with torch.no_grad():
        torch.manual_seed(100)
        before = sum(loss_fn().item() for _ in range(3)) / 3
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    with torch.no_grad():
        torch.manual_seed(100)
        after = sum(loss_fn().item() for _ in range(3)) / 3
    assert math.isfinite(after) and after < 0.5 * before, (before, after)


@pytest.mark.parametrize("kwargs, name", [
    (dict(in_features=0), "in_features"),
    (dict(out_features=1.5), "out_features"),
    (dict(width=-1), "width"),
    (dict(augment_dim=-1), "augment_dim"),
    (dict(augment_dim=True), "augment_dim"),
    (dict(sigma=0.0), "sigma"),
    (dict(sigma=float("nan")), "sigma"),
    (dict(steps=0), "steps"),
    (dict(dt=-0.1), "dt"),
    (dict(t1=0), "t1"),
    (dict(stl="yes"), "stl"),
    (dict(gradient="checkpoint"), "gradient"),
    (dict(backend="jax"), "backend"),
    (dict(readout="mean"), "readout"),
    (dict(out_features=5, readout="first"), "readout"),
    (dict(activation="gelu"), "activation"),
    (dict(drift_hidden=0), "drift_hidden"),
    (dict(method=3), "method"),
])
def test_sdebnn_bad_arguments(kwargs, name):
    args = dict(in_features=1, out_features=1)
    args.update(kwargs)
    in_features, out_features = args.pop("in_features"), args.pop("out_features")
    with pytest.raises(ValueError, match=name):
        SDEBNN(in_features, out_features, **args)


def test_sdebnn_bad_input():
    model = SDEBNN(2, 1)
    with pytest.raises(ValueError, match="x"):
        model(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="x"):
        model(torch.zeros(4))


# LatentSDE --------------------------------------------------------------------------------------------------
def _series(batch: int = 16, T: int = 12, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ts = torch.linspace(0, 1, T, dtype=dtype)
    phase = torch.rand(batch, generator=g, dtype=dtype) * 2 * math.pi
    x1 = torch.exp(-0.5 * ts)[:, None] * torch.sin(4 * ts[:, None] + phase)
    x2 = torch.exp(-0.5 * ts)[:, None] * torch.cos(4 * ts[:, None] + phase)
    xs = torch.stack([x1, x2], dim=-1) + 0.02 * torch.randn(T, batch, 2, generator=g, dtype=dtype)
    return xs, ts


def _latent(**kwargs) -> LatentSDE:
    torch.manual_seed(0)
    defaults = dict(latent_size=3, context_size=8, hidden_size=16, noise_std=0.1, dt=0.05)
    defaults.update(kwargs)
    return LatentSDE(2, **defaults)


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace"])
def test_latent_sde_elbo_pieces_and_samples(likelihood):
    model = _latent(likelihood=likelihood)
    xs, ts = _series()
    log_px, kl = model(xs, ts)
    assert log_px.shape == () and kl.shape == ()
    assert torch.isfinite(log_px) and torch.isfinite(kl)
    assert kl.item() > -1e-4  # a KL (z0 part exact; path part ∫ ½‖u‖² dt ≥ 0)
    (-(log_px - kl)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    post = model.sample_posterior(xs, ts)
    prior = model.sample_prior(5, ts)
    assert post.shape == (12, 16, 2) and prior.shape == (12, 5, 2)
    assert torch.isfinite(post).all() and torch.isfinite(prior).all()


def test_latent_sde_short_training_lowers_loss():
    model = _latent()
    xs, ts = _series(batch=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn():
        log_px, kl = model(xs, ts)
        return -(log_px - kl)

    with torch.no_grad():
        torch.manual_seed(1)
        before = sum(loss_fn().item() for _ in range(3)) / 3
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    with torch.no_grad():
        torch.manual_seed(1)
        after = sum(loss_fn().item() for _ in range(3)) / 3
    assert after < before - 0.1 * abs(before), (before, after)


def test_latent_sde_torchsde_backend_and_adjoint():
    """Same bm and noise draws: the torchsde backend gives the same ELBO and gradients (float64); the adjoint's
    gradients are those of the direct solve up to the discretisation (dt = 0.01 here; relative error ≈ 1e-2)."""
    torchsde = pytest.importorskip("torchsde")
    xs, ts = _series(batch=4, dtype=torch.float64)
    outs = {}
    for backend, gradient in (("fastdiffeq", "direct"), ("torchsde", "direct"), ("fastdiffeq", "adjoint")):
        model = _latent(backend=backend, gradient=gradient, dt=0.01).double()
        # forward solves with logqp=True: diagonal noise over latent_size + 1 channels (the KL channel's, zero)
        bm = torchsde.BrownianInterval(0.0, 1.0, size=(4, 3 + 1), entropy=2, dtype=torch.float64)
        torch.manual_seed(3)
        log_px, kl = model(xs, ts, bm=bm)
        (-(log_px - kl)).backward()
        outs[backend, gradient] = (log_px.detach(), kl.detach(), _flat_grads(model))
    ref = outs["fastdiffeq", "direct"]
    for a, b in zip(outs["torchsde", "direct"], ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    adj = outs["fastdiffeq", "adjoint"]
    torch.testing.assert_close(adj[0], ref[0], rtol=1e-12, atol=1e-12)  # the same forward solve
    assert ((adj[2] - ref[2]).norm() / ref[2].norm()).item() < 0.1


@pytest.mark.parametrize("kwargs, name", [
    (dict(data_size=0), "data_size"),
    (dict(latent_size=0), "latent_size"),
    (dict(likelihood="cauchy"), "likelihood"),
    (dict(noise_std=0.0), "noise_std"),
    (dict(dt=-1.0), "dt"),
    (dict(gradient="reversible"), "gradient"),
    (dict(backend="diffrax"), "backend"),
    (dict(method=None), "method"),
])
def test_latent_sde_bad_arguments(kwargs, name):
    args = dict(data_size=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        LatentSDE(**args)


def test_latent_sde_bad_input():
    model = _latent()
    xs, ts = _series()
    with pytest.raises(ValueError, match="xs"):
        model(xs[..., :1], ts)
    with pytest.raises(ValueError, match="ts"):
        model(xs, ts[:-1])
    with pytest.raises(ValueError, match="ts"):
        model(xs, ts.flip(0))
    with pytest.raises(ValueError, match="batch_size"):
        model.sample_prior(0, ts)


# Examples ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script, extra", [
    ("sde_bnn_regression.py", ["--iterations", "3", "--samples", "4"]),
    ("latent_sde.py", ["--iterations", "3", "--batch", "8"]),
])
def test_example_runs(script, extra, tmp_path):
    path = os.path.join(ROOT, "examples", script)
    out = subprocess.run([sys.executable, path, "--no-plot", "--threads", "1", "--out", str(tmp_path / "x.png"),
                          *extra], capture_output=True, text=True, timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "wall time" in out.stdout
