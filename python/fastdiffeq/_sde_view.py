"""The user's SDE seen through one interface: drift, diffusion and their products with a Brownian increment.

torchsde's contract: an SDE object has ``noise_type`` ('diagonal' | 'additive' | 'scalar' | 'general'),
``sde_type`` ('ito' | 'stratonovich') and some of ``f(t, y)``, ``g(t, y)``, ``f_and_g``, ``g_prod(t, y, v)``,
``f_and_g_prod`` (and the prior drift ``h`` for logqp). `SDEView` fills in the ones the user left out from the
ones given, so every method is written against the full set; `LogqpSDE` appends the KL path channel.

Shapes (B the batch, d the state, m the Brownian channels): y (B, d); f (B, d); g (B, d) for diagonal noise and
(B, d, m) otherwise (scalar: m = 1); a Brownian increment v (B, m) (diagonal: m = d); g_prod (B, d).

A diffusion that reuses another channel's increment (e.g. SDE-BNN's sticking-the-landing KL channel, driven by
the weights' increments) is written as ``noise_type='general'`` with a ``g_prod`` (or ``f_and_g_prod``) that
computes the product directly, so no (B, d, m) matrix is formed: euler, midpoint, heun, euler_heun and
reversible_heun only need products.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

NOISE_TYPES = ("diagonal", "additive", "scalar", "general")
SDE_TYPES = ("ito", "stratonovich")
_RENAMABLE = {  # names= key -> the attribute it renames
    "drift": "f",
    "diffusion": "g",
    "prior_drift": "h",
    "diffusion_prod": "g_prod",
    "drift_and_diffusion": "f_and_g",
    "drift_and_diffusion_prod": "f_and_g_prod",
}


def batch_mvp(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """(B, d, m) @ (B, m) -> (B, d)."""
    return torch.bmm(matrix, vector.unsqueeze(-1)).squeeze(-1)


def stable_division(a: torch.Tensor, b: torch.Tensor, epsilon: float = 1e-7) -> torch.Tensor:
    """a / b with |b| clamped away from 0 (keeping its sign), as torchsde does for the logqp integrand."""
    b = torch.where(b.abs().detach() > epsilon, b, torch.full_like(b, epsilon) * b.sign())
    return a / b


def vjp(outputs, inputs, grad_outputs, **kwargs) -> list[torch.Tensor]:
    """torch.autograd.grad with zeros for unused inputs and outputs that need not require grad."""
    outputs = [outputs] if torch.is_tensor(outputs) else list(outputs)
    inputs = [inputs] if torch.is_tensor(inputs) else list(inputs)
    grad_outputs = [grad_outputs] if torch.is_tensor(grad_outputs) else list(grad_outputs)
    keep = [i for i, o in enumerate(outputs) if o.requires_grad]
    if not keep:
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad([outputs[i] for i in keep], inputs, [grad_outputs[i] for i in keep],
                                allow_unused=True, **kwargs)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def jvp(outputs: torch.Tensor, inputs: torch.Tensor, tangent: torch.Tensor, **kwargs) -> torch.Tensor:
    """(∂outputs/∂inputs) · tangent by the double-vjp trick (no second forward pass)."""
    dummy = torch.zeros_like(outputs, requires_grad=True)
    (pullback,) = torch.autograd.grad(outputs, inputs, dummy, create_graph=True, allow_unused=True)
    if pullback is None:
        return torch.zeros_like(outputs)
    (out,) = torch.autograd.grad(pullback, dummy, tangent, allow_unused=True, **kwargs)
    return torch.zeros_like(outputs) if out is None else out


def rename(sde: Any, names: dict[str, str] | None) -> Any:
    """The SDE with methods renamed as torchsde's ``names=`` does (drift, diffusion, prior_drift, ...)."""
    if not names:
        return sde
    if not isinstance(names, dict):
        raise TypeError(f"names must be a dict, got {type(names).__name__}")
    unknown = sorted(set(names) - set(_RENAMABLE))
    if unknown:
        raise ValueError(f"names: unknown key(s) {unknown}; expected some of {sorted(_RENAMABLE)}")
    return _Renamed(sde, {_RENAMABLE[key]: value for key, value in names.items()})


class _Renamed:
    def __init__(self, sde: Any, mapping: dict[str, str]) -> None:
        self.noise_type = sde.noise_type
        self.sde_type = sde.sde_type
        self._base = sde
        for attr in ("f", "g", "h", "g_prod", "f_and_g", "f_and_g_prod"):
            source = mapping.get(attr, attr)
            if hasattr(sde, source):
                setattr(self, attr, getattr(sde, source))


class LogqpSDE:
    """The SDE with one more state channel: d(log q/p) = ½‖u‖² dt, u = (f − h)/g (diagonal) or pinv(g)(f − h)."""

    def __init__(self, sde: Any) -> None:
        missing = [name for name in ("f", "g", "h") if not hasattr(sde, name)]
        if missing:
            raise ValueError(f"logqp=True needs the drift f, the diffusion g and the prior drift h; sde has no "
                             f"{', '.join(missing)}")
        self.noise_type = sde.noise_type
        self.sde_type = sde.sde_type
        self._f, self._g, self._h = sde.f, sde.g, sde.h
        self._diagonal = sde.noise_type == "diagonal"

    def f_and_g(self, t, y):
        y = y[:, :-1]
        f, g, h = self._f(t, y), self._g(t, y), self._h(t, y)
        if self._diagonal:
            u = stable_division(f - h, g)
            g_logqp = y.new_zeros(y.size(0), 1)
        else:
            try:
                u = batch_mvp(g.pinverse(), f - h)
            except torch.linalg.LinAlgError as err:  # pinverse of a non-finite diffusion: name the cause
                from ._errors import NonFiniteStateError

                raise NonFiniteStateError(f"sdeint(logqp=True): the pseudo-inverse of the diffusion g(t, y) failed "
                                          f"({err}); g is probably not finite", t=float(t)) from None
            g_logqp = y.new_zeros(g.size(0), 1, g.size(-1))
        f_logqp = 0.5 * (u**2).sum(dim=1, keepdim=True)
        return torch.cat([f, f_logqp], dim=1), torch.cat([g, g_logqp], dim=1)

    def f(self, t, y):
        return self.f_and_g(t, y)[0]

    def g(self, t, y):
        y = y[:, :-1]
        g = self._g(t, y)
        if self._diagonal:
            return torch.cat([g, y.new_zeros(y.size(0), 1)], dim=1)
        return torch.cat([g, y.new_zeros(g.size(0), 1, g.size(-1))], dim=1)


class SDEView:
    """f, g, f_and_g, g_prod, f_and_g_prod, prod, g_prod_and_gdg_prod and dg_ga_jvp_column_sum of one SDE.

    Bound once per solve, so each step calls the user's methods directly (no per-call dispatch on what the
    user defined).
    """

    is_adjoint = False

    def __init__(self, sde: Any) -> None:
        self.noise_type = sde.noise_type
        self.sde_type = sde.sde_type
        self.base = sde
        self.diagonal = sde.noise_type == "diagonal"
        self.prod: Callable = _prod_diagonal if self.diagonal else batch_mvp
        self.f = getattr(sde, "f", None) or self._missing("f")
        self.g = getattr(sde, "g", None) or self._missing("g")
        self.f_and_g = getattr(sde, "f_and_g", None) or self._f_and_g
        self.g_prod = getattr(sde, "g_prod", None) or self._g_prod
        if hasattr(sde, "f_and_g_prod"):
            self.f_and_g_prod = sde.f_and_g_prod
        elif hasattr(sde, "f") and hasattr(sde, "g_prod"):
            self.f_and_g_prod = self._f_then_g_prod
        else:
            self.f_and_g_prod = self._f_and_g_then_prod
        if not hasattr(sde, "f") and hasattr(sde, "f_and_g"):
            self.f = lambda t, y: sde.f_and_g(t, y)[0]
        if not hasattr(sde, "g") and hasattr(sde, "f_and_g"):
            self.g = lambda t, y: sde.f_and_g(t, y)[1]

    @staticmethod
    def _missing(name: str) -> Callable:
        def fail(*args, **kwargs):
            raise ValueError(f"this method needs the sde's {name}(t, y), which the sde does not define")
        return fail

    def _f_and_g(self, t, y):
        return self.f(t, y), self.g(t, y)

    def _g_prod(self, t, y, v):
        return self.prod(self.g(t, y), v)

    def _f_then_g_prod(self, t, y, v):
        return self.f(t, y), self.g_prod(t, y, v)

    def _f_and_g_then_prod(self, t, y, v):
        f, g = self.f_and_g(t, y)
        return f, self.prod(g, v)

    def g_prod_and_gdg_prod(self, t, y, v1, v2):
        """g·v1 and Σ_{j,l} g_{jl} ∂g_{jl}/∂y_i v2_l (Milstein's correction); 0 for additive noise."""
        if self.noise_type == "additive":
            return self.g_prod(t, y, v1), 0.0
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            y = y if y.requires_grad else y.detach().requires_grad_(True)
            g = self.g(t, y)
            weights = g * v2 if self.diagonal else g * v2.unsqueeze(-2)
            (gdg,) = vjp(g, y, weights, retain_graph=True, create_graph=create_graph)
        return self.prod(g, v1), gdg

    def dg_ga_jvp_column_sum(self, t, y, a):
        """Σ_{j,k,l} ∂g_{il}/∂y_j g_{jk} A_{kl} (the log-ODE scheme's Lévy-area term; general noise only)."""
        if self.noise_type != "general":
            return 0.0
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            y = y if y.requires_grad else y.detach().requires_grad_(True)
            g = self.g(t, y)
            ga = torch.bmm(g, a)
            total = 0.0
            for col in range(g.size(-1)):
                total = total + jvp(g[..., col], y, ga[..., col], retain_graph=True, create_graph=create_graph)
        return total


def _prod_diagonal(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return g * v
