"""Neural-SDE models on fastdiffeq's SDE solvers: SDE-BNN (Xu et al., 2022) and the latent SDE (Li et al., 2020).

Both modules solve with :func:`fastdiffeq.sdeint` / :func:`fastdiffeq.sdeint_adjoint` by default and, with
``backend='torchsde'``, hand the same SDE object to ``torchsde.sdeint`` / ``torchsde.sdeint_adjoint`` (the
benchmarks compare the two on the same Brownian path).

SDEBNN — a Bayesian neural ODE whose weights follow an SDE. One solve integrates the state

    y = [h (B, H), w (B, m), kl (B, 1)],    H = in_features + augment_dim, m = number of weights of f_h,

    dh  = f_h(h, t; w) dt                                     (an ODE driven by each sample's own weights)
    dw  = (−w + u(w, t)) dt + σ dW,   u = MLP_φ(w, t)     (posterior; the prior is the OU process −w dt + σ dW)
    dkl = ½‖u/σ‖² dt  [+ (u_{sg φ}/σ)·dW  with stl=True]     (Girsanov: KL(posterior path ‖ prior path))

MLP_φ's last layer starts at zero, so u = 0 and the KL is exactly 0 at initialisation.

LatentSDE — the model of torchsde's ``examples/latent_sde_lorenz.py`` as a module: a GRU encoder over the
reversed series gives a context per time and q(z0); posterior drift f(t, z, ctx), prior drift h(t, z), a
diagonal diffusion of per-dimension small networks ending in a sigmoid, a linear projector to the observations;
``logqp=True`` gives the path KL, to which KL(q(z0) ‖ p(z0)) is added.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._brownian import BrownianInterval
from .._sde import sdeint
from .._sde_adjoint import sdeint_adjoint
from ._layers import ACTIVATIONS

__all__ = ["SDEBNN", "LatentSDE", "LatentSDEOutput"]

GRADIENTS = ("direct", "adjoint")
BACKENDS = ("fastdiffeq", "torchsde")
READOUTS = ("linear", "first")
LIKELIHOODS = ("gaussian", "laplace")


# Argument checks (ValueError naming the argument) ------------------------------------------------------------
def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    return value


def _nonnegative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"`{name}` must be an int >= 0, got {value!r}")
    return value


def _positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}")
    return float(value)


def _choice(value: Any, name: str, allowed: Tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}")
    return value


def _method(value: Any, name: str = "method") -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"`{name}` must be a method name (str) or None, got {value!r}")
    return value


def _solvers(backend: str):
    if backend == "torchsde":
        try:
            import torchsde
        except ImportError as exc:  # pragma: no cover - torchsde is a test/bench dependency
            raise ValueError("backend='torchsde' needs the torchsde package (pip install torchsde)") from exc
        return torchsde.sdeint, torchsde.sdeint_adjoint
    return sdeint, sdeint_adjoint


def _time_column(t: Any, like: torch.Tensor) -> torch.Tensor:
    """The solver's time as a (B, 1) column in like's dtype and device."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(1, 1).expand(like.size(0), 1)


# SDE-BNN ----------------------------------------------------------------------------------------------------
class _SDEBNNField:
    """The SDE of one SDEBNN solve, in torchsde's interface: ``f_and_g_prod(t, y, v)`` only.

    noise_type: 'additive' without STL (σ on the weights, 0 elsewhere: a constant diffusion); 'general' with STL
    (the KL channel's diffusion row u_sg(w)/σ depends on the state). sde_type: 'ito', except for the stochastic
    adjoint with STL, which runs the Stratonovich form (see SDEBNN's docstring). A plain object, not an
    nn.Module: the solvers get the parameters through ``adjoint_params``.
    """

    def __init__(self, model: "SDEBNN", stratonovich: bool) -> None:
        self.model = model
        self.stl = model.stl
        self.noise_type = "general" if model.stl else "additive"
        self.sde_type = "stratonovich" if stratonovich else "ito"
        self.stratonovich = stratonovich

    def f_and_g_prod(self, t, y, v):
        m = self.model
        H, P = m.state_dim, m.num_weights
        h, w = y[:, :H], y[:, H:H + P]
        tcol = _time_column(t, y)
        dh = m._field(h, w, tcol)
        u, hidden_pre = m._drift_net(w, tcol, detach=False)
        sigma = m.sigma
        dkl = 0.5 * (u / sigma).square().sum(1, keepdim=True)
        if self.stl:
            u_sg, pre_sg = m._drift_net(w, tcol, detach=True)
            g_kl = (u_sg * v).sum(1, keepdim=True) / sigma
            if self.stratonovich:  # Itô → Stratonovich: − ½ Σ_k ∂(u_k/σ)/∂w_k · σ = − ½ div_w u_sg
                dkl = dkl - 0.5 * m._drift_divergence(pre_sg)
        else:
            g_kl = y.new_zeros(y.size(0), 1)
        f = torch.cat([dh, u - w, dkl], dim=1)
        g_prod = torch.cat([y.new_zeros(y.size(0), H), sigma * v, g_kl], dim=1)
        return f, g_prod


class _RepeatedBrownian:
    """A (S, m) Brownian motion seen as (S·n, m): row s·n + i gets sample s's increment (shared weight paths)."""

    levy_area_approximation = "none"

    def __init__(self, bm: Any, repeats: int) -> None:
        self.bm, self.repeats = bm, repeats
        self.shape = torch.Size((bm.shape[0] * repeats, *bm.shape[1:]))
        self.dtype, self.device = bm.dtype, bm.device

    def __call__(self, ta, tb, return_U: bool = False, return_A: bool = False):
        if return_U or return_A:
            raise ValueError("SDEBNN.sample_functions: the shared Brownian motion has no Lévy area; use a method "
                             "that needs increments only (euler, midpoint, heun, ...)")
        return self.bm(ta, tb).repeat_interleave(self.repeats, dim=0)


class SDEBNN(nn.Module):
    """SDE-BNN (Xu, Chen, Li, Duvenaud, AISTATS 2022): a neural ODE whose weights follow a posterior SDE.

    ``forward(x)`` returns ``(prediction, kl)``: prediction (B, out_features), kl (B,) the per-sample estimate of
    KL(posterior weight path ‖ OU prior path) over [0, t1]. Each call draws a fresh weight path per sample (pass
    ``bm`` for a fixed one); ``sample_functions(x, samples)`` draws whole functions (one weight path shared by
    all inputs) for the posterior predictive. Train on ``task_loss + kl_coef * kl.mean()`` (kl_coef e.g.
    1 / dataset size).

    State of the solve (one tensor, (B, H + m + 1)): activations h (H = in_features + augment_dim), the
    flattened weights w of f_h (m of them) and the KL accumulator.

    * Input: h(0) = [x, zeros(augment_dim)] (no input layer; the zero padding lets the flow of a 1-D input
      produce non-monotone functions, as in the paper's 1-D toy).
    * f_h(h, t; w) = W2 · act(W1 · [h, t] + b1) + b2, one hidden layer of ``width`` units whose weights
      (W1, b1, W2, b2), flattened in that order, ARE the sample's w (per-sample weights: batched matmuls).
    * Weights: prior drift −w (Ornstein–Uhlenbeck), posterior drift −w + MLP_φ(w, t) (MLP_φ: [w, t] →
      ``drift_hidden`` → m, its last layer initialised to zero, so kl = 0 exactly at initialisation), constant
      diffusion σ on the weights only. w(0) = w0, a learnable parameter broadcast over the batch: the samples'
      weight paths differ only by their Brownian noise.
    * KL channel: drift ½‖MLP_φ/σ‖². With ``stl=True`` ("sticking the landing") it also gets the diffusion
      (MLP_{stop-grad φ}(w, t)/σ)·dW with the SAME dW as the weights: a zero-mean term that cancels the
      estimator's noise at the optimum. This diffusion reuses the weights' increments, so the SDE is
      ``noise_type='general'`` with m Brownian channels and offers only ``f_and_g_prod(t, y, v)``, returning
      the drift and the product [0 for h, σ·v for w, Σ_k u_sg,k·v_k/σ for the KL channel] — no (B, d, m)
      matrix is ever formed. Without STL the diffusion is constant: ``noise_type='additive'``.
    * Readout (``readout``): 'linear' (default) a learnable nn.Linear(H, out_features) on h(t1); 'first' the
      first out_features channels of h(t1) (no extra parameters; needs out_features <= H).

    The weights' noise is additive, so Euler–Maruyama (the default) has strong order 1 and Itô = Stratonovich
    for h and w. The stochastic adjoint of an Itô SDE with general noise needs the diffusion matrix itself;
    with ``gradient='adjoint'`` and ``stl=True`` the model therefore solves the equivalent Stratonovich SDE
    (the KL drift gets the conversion term −½ div_w u_sg, computed in closed form for MLP_φ's one hidden
    layer) with a Stratonovich method (default 'midpoint'). Without STL the noise is additive and the adjoint
    runs the Itô SDE with Euler.

    Args:
        in_features: size of x.
        out_features: size of the prediction.
        width: hidden units of f_h (default 16).
        augment_dim: zero channels appended to x (default 2).
        drift_hidden: hidden units of MLP_φ (default 32).
        activation: f_h's activation, one of ACTIVATIONS (default 'tanh'); MLP_φ uses tanh.
        sigma: the weights' diffusion σ (default 0.1).
        t1: end time (default 1.0; the solve runs on [0, t1]).
        steps: fixed steps on [0, t1] (default 20, as in the paper) — or ``dt`` (overrides steps).
        method: SDE method (default 'euler'; 'midpoint' for the adjoint with STL).
        stl: sticking the landing (default True).
        gradient: 'direct' (backpropagate through sdeint) or 'adjoint' (sdeint_adjoint).
        adjoint_method: the adjoint's method (default: the solver's default for the SDE).
        backend: 'fastdiffeq' or 'torchsde' (the same SDE solved by torchsde.sdeint / sdeint_adjoint).
        readout: 'linear' or 'first' (see above).

    Raises:
        ValueError: a bad argument, naming it.

    Example::

        model = SDEBNN(1, 1, width=16, augment_dim=2)
        pred, kl = model(x)                      # x (B, 1)
        loss = F.mse_loss(pred, y) + kl.mean() / len(dataset)
    """

    def __init__(self, in_features: int, out_features: int, *, width: int = 16, augment_dim: int = 2,
                 drift_hidden: int = 32, activation: str = "tanh", sigma: float = 0.1, t1: float = 1.0,
                 steps: int = 20, dt: Optional[float] = None, method: Optional[str] = None, stl: bool = True,
                 gradient: str = "direct", adjoint_method: Optional[str] = None, backend: str = "fastdiffeq",
                 readout: str = "linear") -> None:
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        self.width = _positive_int(width, "width")
        self.augment_dim = _nonnegative_int(augment_dim, "augment_dim")
        self.drift_hidden = _positive_int(drift_hidden, "drift_hidden")
        if activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {list(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.sigma = _positive_float(sigma, "sigma")
        self.t1 = _positive_float(t1, "t1")
        self.steps = _positive_int(steps, "steps")
        self.dt = None if dt is None else _positive_float(dt, "dt")
        if not isinstance(stl, bool):
            raise ValueError(f"`stl` must be a bool, got {stl!r}")
        self.stl = stl
        self.gradient = _choice(gradient, "gradient", GRADIENTS)
        self.backend = _choice(backend, "backend", BACKENDS)
        self.method = _method(method)
        self.adjoint_method = _method(adjoint_method, "adjoint_method")
        self.readout_mode = _choice(readout, "readout", READOUTS)

        H, W = self.in_features + self.augment_dim, self.width
        self.state_dim = H
        if readout == "first" and self.out_features > H:
            raise ValueError(f"`readout`='first' needs out_features <= in_features + augment_dim = {H}, got "
                             f"out_features={self.out_features}")
        # f_h's weights, flattened: W1 (W, H + 1), b1 (W,), W2 (H, W), b2 (H,).
        self._shapes = ((W, H + 1), (W,), (H, W), (H,))
        self.num_weights = sum(math.prod(s) for s in self._shapes)
        w0 = []
        for fan_in, shape in ((H + 1, (W, H + 1)), (H + 1, (W,)), (W, (H, W)), (W, (H,))):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation
            w0.append(torch.empty(shape).uniform_(-bound, bound).reshape(-1))
        self.w0 = nn.Parameter(torch.cat(w0))
        self.drift_in = nn.Linear(self.num_weights + 1, self.drift_hidden)
        self.drift_out = nn.Linear(self.drift_hidden, self.num_weights)
        nn.init.zeros_(self.drift_out.weight)
        nn.init.zeros_(self.drift_out.bias)
        self.readout = nn.Linear(H, self.out_features) if readout == "linear" else None

    # Pieces of the SDE ------------------------------------------------------------------------------------
    def _field(self, h: torch.Tensor, w: torch.Tensor, tcol: torch.Tensor) -> torch.Tensor:
        """f_h(h, t; w) with each sample's own weights (batched matmuls)."""
        B, H, W = h.size(0), self.state_dim, self.width
        W1, b1, W2, b2 = (part.reshape(B, *shape) for part, shape in
                          zip(w.split([math.prod(s) for s in self._shapes], dim=1), self._shapes))
        x = torch.cat([h, tcol], dim=1)
        a = ACTIVATIONS[self.activation].fn(torch.baddbmm(b1.unsqueeze(-1), W1, x.unsqueeze(-1)))
        return torch.baddbmm(b2.unsqueeze(-1), W2, a).squeeze(-1)

    def _drift_net(self, w: torch.Tensor, tcol: torch.Tensor, detach: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """u = MLP_φ(w, t) and its hidden pre-activation; detach=True: φ under stop-gradient (w keeps its graph)."""
        params = (self.drift_in.weight, self.drift_in.bias, self.drift_out.weight, self.drift_out.bias)
        if detach:
            params = tuple(p.detach() for p in params)
        A, a, Bm, b = params
        pre = F.linear(torch.cat([w, tcol], dim=1), A, a)
        return F.linear(torch.tanh(pre), Bm, b), pre

    def _drift_divergence(self, pre: torch.Tensor) -> torch.Tensor:
        """div_w MLP_{sg φ}(w, t) per sample, (B, 1): Σ_j tanh'(pre_j) Σ_k B_kj A_jk (one hidden layer: closed form)."""
        A = self.drift_in.weight.detach()[:, :self.num_weights]
        Bm = self.drift_out.weight.detach()
        diag = (A * Bm.t()).sum(1)  # (drift_hidden,)
        return ((1 - torch.tanh(pre).square()) @ diag).unsqueeze(1)

    # Solve --------------------------------------------------------------------------------------------------
    def _settings(self) -> Tuple[bool, Optional[str], float]:
        stratonovich = self.gradient == "adjoint" and self.stl
        method = self.method or ("midpoint" if stratonovich else "euler")
        dt = self.dt if self.dt is not None else self.t1 / self.steps
        return stratonovich, method, dt

    def make_bm(self, batch: int, entropy: Optional[int] = None, dtype: Optional[torch.dtype] = None,
                device: Any = None) -> BrownianInterval:
        """A fastdiffeq BrownianInterval of this model's shape (batch, num_weights) on [0, t1]."""
        return BrownianInterval(t0=0.0, t1=self.t1, size=(batch, self.num_weights), entropy=entropy,
                                dtype=dtype or self.w0.dtype, device=device or self.w0.device)

    def forward(self, x: torch.Tensor, bm: Any = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(prediction (B, out_features), kl (B,)) for x (B, in_features); bm: Brownian motion (B, num_weights)."""
        if not torch.is_tensor(x) or x.dim() != 2 or x.size(1) != self.in_features:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"`x` must be a tensor of shape (batch, {self.in_features}), got {got}")
        B = x.size(0)
        x = x.to(self.w0.dtype)
        y0 = torch.cat([x, x.new_zeros(B, self.augment_dim), self.w0.unsqueeze(0).expand(B, -1),
                        x.new_zeros(B, 1)], dim=1)
        ts = torch.tensor([0.0, self.t1], dtype=x.dtype, device=x.device)
        if bm is None:
            bm = self.make_bm(B, entropy=int(torch.randint(0, 2**31 - 1, ()).item()), dtype=x.dtype,
                              device=x.device)
        stratonovich, method, dt = self._settings()
        sde = _SDEBNNField(self, stratonovich)
        solve, solve_adjoint = _solvers(self.backend)
        if self.gradient == "adjoint":
            params = (self.drift_in.weight, self.drift_in.bias, self.drift_out.weight, self.drift_out.bias)
            kwargs = {} if self.adjoint_method is None else {"adjoint_method": self.adjoint_method}
            ys = solve_adjoint(sde, y0, ts, bm=bm, method=method, dt=dt, adjoint_params=params, **kwargs)
        else:
            ys = solve(sde, y0, ts, bm=bm, method=method, dt=dt)
        y1 = ys[-1]
        h1, kl = y1[:, :self.state_dim], y1[:, -1]
        pred = self.readout(h1) if self.readout is not None else h1[:, :self.out_features]
        return pred, kl

    @torch.no_grad()
    def sample_functions(self, x: torch.Tensor, samples: int, entropy: Optional[int] = None
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampled functions evaluated at x (N, in_features): (samples, N, out_features) and kl (samples,).

        Unlike ``forward`` (one weight path per row), each function is ONE weight path shared by all N inputs
        (the Brownian increments of a (samples, m) motion repeated over the inputs), so the rows of one sample
        form a coherent function: what to plot, and the posterior predictive's mean and spread.
        """
        samples = _positive_int(samples, "samples")
        if not torch.is_tensor(x) or x.dim() != 2 or x.size(1) != self.in_features:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"`x` must be a tensor of shape (N, {self.in_features}), got {got}")
        n = x.size(0)
        if entropy is None:
            entropy = int(torch.randint(0, 2**31 - 1, ()).item())
        bm = _RepeatedBrownian(self.make_bm(samples, entropy=entropy, dtype=self.w0.dtype, device=x.device), n)
        pred, kl = self(x.repeat(samples, 1), bm=bm)
        return pred.reshape(samples, n, self.out_features), kl.reshape(samples, n)[:, 0]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, width={self.width}, "
                f"augment_dim={self.augment_dim}, num_weights={self.num_weights}, sigma={self.sigma}, "
                f"steps={self.steps}, stl={self.stl}, gradient={self.gradient!r}, backend={self.backend!r}, "
                f"readout={self.readout_mode!r}")


# Latent SDE -------------------------------------------------------------------------------------------------
class LatentSDEOutput(NamedTuple):
    """What LatentSDE.forward returns: the ELBO is log_likelihood − kl (both batch means, summed over time)."""

    log_likelihood: torch.Tensor
    kl: torch.Tensor


class _Encoder(nn.Module):
    def __init__(self, data_size: int, hidden_size: int, context_size: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size=data_size, hidden_size=hidden_size)
        self.lin = nn.Linear(hidden_size, context_size)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(xs)
        return self.lin(out)


class _DiagonalDiffusion(nn.Module):
    """latent_size independent nets g_i(z_i) = sigmoid(Linear(H, 1)(softplus(Linear(1, H)(z_i)))), vectorised.

    The same function and initialisation as torchsde's example's ModuleList of per-dimension nn.Sequential, as
    one set of (latent, H) parameters (one fused evaluation instead of latent_size small ones).
    """

    def __init__(self, latent_size: int, hidden_size: int) -> None:
        super().__init__()
        b = 1.0 / math.sqrt(hidden_size)
        self.w1 = nn.Parameter(torch.empty(latent_size, hidden_size).uniform_(-1.0, 1.0))
        self.b1 = nn.Parameter(torch.empty(latent_size, hidden_size).uniform_(-1.0, 1.0))
        self.w2 = nn.Parameter(torch.empty(latent_size, hidden_size).uniform_(-b, b))
        self.b2 = nn.Parameter(torch.empty(latent_size).uniform_(-b, b))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        hidden = F.softplus(z.unsqueeze(-1) * self.w1 + self.b1)
        return torch.sigmoid((hidden * self.w2).sum(-1) + self.b2)


def _mlp(in_size: int, hidden_size: int, out_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_size, hidden_size), nn.Softplus(), nn.Linear(hidden_size, hidden_size),
                         nn.Softplus(), nn.Linear(hidden_size, out_size))


class LatentSDE(nn.Module):
    """The latent SDE of torchsde's ``examples/latent_sde_lorenz.py`` as a module (Li et al., 2020).

    * Encoder: a GRU over the time-reversed series and a linear layer give a context ctx(t_i) (it has seen
      x(t_i), ..., x(t_T)); q(z0) = N(μ, σ) from ctx(t_0) (a linear layer).
    * Posterior drift f(t, z) = f_net([z, ctx(t)]) with ctx(t) the context of the first observation time > t
      (the last one past the end); prior drift h(t, z) = h_net(z); both 3-layer softplus MLPs.
    * Diffusion: diagonal, g_i(z_i) = sigmoid(small net(z_i)) per latent dimension (Itô, diagonal noise).
    * Projector: a linear map z → x; likelihood Gaussian or Laplace with a fixed scale ``noise_std``.
    * KL: the path KL (``logqp=True``: ∫ ½‖(f − h)/g‖² dt, summed over intervals) + KL(q(z0) ‖ p(z0)) with a
      learnable Gaussian prior p(z0).

    ``forward(xs, ts)`` → ``LatentSDEOutput(log_likelihood, kl)``: log p(xs | z) summed over time and data
    dimensions, and the KL, both averaged over the batch; maximise ``log_likelihood − kl_coef · kl``.
    ``sample_posterior(xs, ts)`` and ``sample_prior(batch, ts)`` return projected latent paths (T, B, data_size)
    (means of the likelihood, without observation noise).

    The module is itself the SDE handed to the solver (``noise_type='diagonal'``, ``sde_type='ito'``, ``f``,
    ``g``, ``h``): ``fastdiffeq.sdeint`` by default, ``torchsde.sdeint`` with ``backend='torchsde'``, their
    adjoints with ``gradient='adjoint'`` (the context is passed in ``adjoint_params``, as in torchsde's example).

    Args:
        data_size: observation dimensions.
        latent_size, context_size, hidden_size: sizes (defaults 4, 64, 128 as in torchsde's example).
        likelihood: 'gaussian' or 'laplace'.
        noise_std: the likelihood's scale (default 0.01).
        method: SDE method (default 'euler'); dt: the fixed step (default 1e-2).
        gradient: 'direct' or 'adjoint'; adjoint_method: the adjoint's method (default: the solver's).
        backend: 'fastdiffeq' or 'torchsde'.

    Raises:
        ValueError: a bad argument (naming it), or xs / ts of the wrong shape.

    Example::

        model = LatentSDE(data_size=3)
        log_px, kl = model(xs, ts)               # xs (T, B, 3), ts (T,)
        (-(log_px - kl)).backward()
    """

    sde_type = "ito"
    noise_type = "diagonal"

    def __init__(self, data_size: int, latent_size: int = 4, context_size: int = 64, hidden_size: int = 128, *,
                 likelihood: str = "gaussian", noise_std: float = 0.01, method: str = "euler", dt: float = 1e-2,
                 gradient: str = "direct", adjoint_method: Optional[str] = None,
                 backend: str = "fastdiffeq") -> None:
        super().__init__()
        self.data_size = _positive_int(data_size, "data_size")
        self.latent_size = _positive_int(latent_size, "latent_size")
        self.context_size = _positive_int(context_size, "context_size")
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        self.likelihood = _choice(likelihood, "likelihood", LIKELIHOODS)
        self.noise_std = _positive_float(noise_std, "noise_std")
        if not isinstance(method, str):
            raise ValueError(f"`method` must be a method name (str), got {method!r}")
        self.method = method
        self.dt = _positive_float(dt, "dt")
        self.gradient = _choice(gradient, "gradient", GRADIENTS)
        self.adjoint_method = _method(adjoint_method, "adjoint_method")
        self.backend = _choice(backend, "backend", BACKENDS)

        self.encoder = _Encoder(data_size, hidden_size, context_size)
        self.qz0_net = nn.Linear(context_size, 2 * latent_size)
        self.f_net = _mlp(latent_size + context_size, hidden_size, latent_size)
        self.h_net = _mlp(latent_size, hidden_size, latent_size)
        self.g_net = _DiagonalDiffusion(latent_size, hidden_size)
        self.projector = nn.Linear(latent_size, data_size)
        self.pz0_mean = nn.Parameter(torch.zeros(1, latent_size))
        self.pz0_logstd = nn.Parameter(torch.zeros(1, latent_size))
        self._ctx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    # The SDE (torchsde's interface) ------------------------------------------------------------------------
    def f(self, t, z):
        if self._ctx is None:
            raise ValueError("LatentSDE.f needs a context: call forward / sample_posterior (they set it)")
        ts, ctx = self._ctx
        t = torch.as_tensor(t, dtype=ts.dtype, device=ts.device).reshape(1)
        i = min(int(torch.searchsorted(ts, t, right=True)), len(ts) - 1)
        return self.f_net(torch.cat([z, ctx[i]], dim=1))

    def h(self, t, z):
        return self.h_net(z)

    def g(self, t, z):
        return self.g_net(z)

    # Checks and pieces ------------------------------------------------------------------------------------
    def _check(self, xs: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(xs) or xs.dim() != 3 or xs.size(-1) != self.data_size:
            got = tuple(xs.shape) if torch.is_tensor(xs) else type(xs).__name__
            raise ValueError(f"`xs` must be a tensor of shape (T, batch, {self.data_size}), got {got}")
        ts = torch.as_tensor(ts, dtype=xs.dtype, device=xs.device)
        if ts.dim() != 1 or ts.numel() != xs.size(0):
            raise ValueError(f"`ts` must be 1-D with xs.shape[0] = {xs.size(0)} times, got shape {tuple(ts.shape)}")
        if ts.numel() < 2 or not bool((ts[1:] > ts[:-1]).all()):
            raise ValueError("`ts` must be strictly increasing with at least 2 times")
        return ts

    def _posterior_z0(self, xs: torch.Tensor, ts: torch.Tensor):
        ctx = torch.flip(self.encoder(torch.flip(xs, dims=(0,))), dims=(0,))
        self._ctx = (ts, ctx)
        qz0_mean, qz0_logstd = self.qz0_net(ctx[0]).chunk(2, dim=1)
        z0 = qz0_mean + qz0_logstd.exp() * torch.randn_like(qz0_mean)
        return ctx, qz0_mean, qz0_logstd, z0

    def _solve(self, z0, ts, bm, ctx, logqp: bool, names=None, dt=None):
        solve, solve_adjoint = _solvers(self.backend)
        dt = self.dt if dt is None else dt
        if self.gradient == "adjoint" and torch.is_grad_enabled():
            params = (ctx,) + tuple(self.f_net.parameters()) + tuple(self.g_net.parameters()) + \
                tuple(self.h_net.parameters())
            kwargs = {} if self.adjoint_method is None else {"adjoint_method": self.adjoint_method}
            return solve_adjoint(self, z0, ts, bm=bm, method=self.method, dt=dt, logqp=logqp, names=names,
                                 adjoint_params=params, **kwargs)
        return solve(self, z0, ts, bm=bm, method=self.method, dt=dt, logqp=logqp, names=names)

    def _log_likelihood(self, xs_hat: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        if self.likelihood == "laplace":
            dist = torch.distributions.Laplace(loc=xs_hat, scale=self.noise_std)
        else:
            dist = torch.distributions.Normal(loc=xs_hat, scale=self.noise_std)
        return dist.log_prob(xs).sum(dim=(0, 2)).mean(dim=0)

    # Public -----------------------------------------------------------------------------------------------
    def forward(self, xs: torch.Tensor, ts: torch.Tensor, bm: Any = None) -> LatentSDEOutput:
        """ELBO pieces for a batch of series xs (T, B, data_size) observed at ts (T,).

        bm: optional Brownian motion of shape (B, latent_size + 1): with ``logqp=True`` and diagonal noise the
        solver's state carries the KL channel, and its (zero) diffusion has a channel too (as in torchsde).
        """
        ts = self._check(xs, ts)
        ctx, qz0_mean, qz0_logstd, z0 = self._posterior_z0(xs, ts)
        zs, log_ratio = self._solve(z0, ts, bm, ctx, logqp=True)
        log_px = self._log_likelihood(self.projector(zs), xs)
        qz0 = torch.distributions.Normal(loc=qz0_mean, scale=qz0_logstd.exp())
        pz0 = torch.distributions.Normal(loc=self.pz0_mean, scale=self.pz0_logstd.exp())
        kl_z0 = torch.distributions.kl_divergence(qz0, pz0).sum(dim=1).mean(dim=0)
        kl_path = log_ratio.sum(dim=0).mean(dim=0)
        return LatentSDEOutput(log_px, kl_z0 + kl_path)

    @torch.no_grad()
    def sample_posterior(self, xs: torch.Tensor, ts: torch.Tensor, bm: Any = None,
                         dt: Optional[float] = None) -> torch.Tensor:
        """Projected posterior paths (T, B, data_size) given the series xs (T, B, data_size); bm (B, latent_size)."""
        ts = self._check(xs, ts)
        ctx, _, _, z0 = self._posterior_z0(xs, ts)
        return self.projector(self._solve(z0, ts, bm, ctx, logqp=False, dt=dt))

    @torch.no_grad()
    def sample_prior(self, batch_size: int, ts: torch.Tensor, bm: Any = None,
                     dt: Optional[float] = None) -> torch.Tensor:
        """Projected prior paths (T, batch_size, data_size): z0 ~ p(z0), prior drift h, the same diffusion.

        bm: optional Brownian motion of shape (batch_size, latent_size); dt: the step (default the model's).
        """
        batch_size = _positive_int(batch_size, "batch_size")
        ts = torch.as_tensor(ts, dtype=self.pz0_mean.dtype, device=self.pz0_mean.device)
        if ts.dim() != 1 or ts.numel() < 2 or not bool((ts[1:] > ts[:-1]).all()):
            raise ValueError("`ts` must be 1-D and strictly increasing with at least 2 times")
        eps = torch.randn(batch_size, self.latent_size, dtype=ts.dtype, device=ts.device)
        z0 = self.pz0_mean + self.pz0_logstd.exp() * eps
        return self.projector(self._solve(z0, ts, bm, None, logqp=False, names={"drift": "h"}, dt=dt))

    def extra_repr(self) -> str:
        return (f"data_size={self.data_size}, latent_size={self.latent_size}, likelihood={self.likelihood!r}, "
                f"noise_std={self.noise_std}, method={self.method!r}, dt={self.dt}, gradient={self.gradient!r}, "
                f"backend={self.backend!r}")
