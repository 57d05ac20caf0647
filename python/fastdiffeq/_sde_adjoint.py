"""sdeint_adjoint: the stochastic adjoint (Li et al., 2020) as torchsde 0.2.6 forms it.

The backward pass solves the adjoint SDE of the augmented state [y, a = dL/dy, dL/dθ] (flattened to one row)
in negated time on the same Brownian path (queried reversed), one output interval at a time from ts[-1] to
ts[0], re-anchoring y to the saved forward output and adding dL/dy(t_i) at each output time. For Itô SDEs the
adjoint's drift carries the Itô–Stratonovich corrections (double vector-Jacobian products); Stratonovich SDEs
need none. reversible_heun's adjoint (adjoint_reversible_heun) inverts the forward steps algebraically, so its
gradient is the exact gradient of the discrete forward solve (when ts lie on the step grid).

Gradients match torchsde's sdeint_adjoint on the same path (same bm, methods and dt). Not supported: a second
derivative through the adjoint (torchsde supports it for Stratonovich SDEs): the backward pass runs without a
graph and says so if asked for one.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch

from ._brownian import ReverseBrownian
from ._sde import _warn_unused, check_method_options, check_number, init_extra, integrate, parse_return, prepare
from ._sde_methods import Method, check_method, select
from ._sde_view import SDEView, vjp


def _flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def _unflatten(flat: torch.Tensor, shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
    sizes = [s.numel() for s in shapes]
    return [part.reshape(shape) for part, shape in zip(flat.split(sizes), shapes)]


class AdjointSDE:
    """The adjoint SDE of [y, a, dL/dθ] (a single flattened row) in negated time.

    Drift: (−f, aᵀ∂f/∂y, aᵀ∂f/∂θ) with f Itô-corrected for Itô SDEs with non-additive noise; diffusion
    products: (−g·v, aᵀ∂(g·v)/∂y, aᵀ∂(g·v)/∂θ). Only products are offered (no g), so methods that need g
    itself (srk, log_ode, derivative-free milstein) cannot solve it.
    """

    is_adjoint = True

    def __init__(self, forward: SDEView, params: Sequence[torch.Tensor], shapes: Sequence[torch.Size]) -> None:
        self.forward = forward
        self.params = list(params)
        self.shapes = list(shapes)
        self.sde_type = forward.sde_type
        self.noise_type = {"additive": "general"}.get(forward.noise_type, forward.noise_type)
        self.diagonal = forward.noise_type == "diagonal"
        ito_corrected = forward.sde_type == "ito" and forward.noise_type != "additive"
        self._correction = None if not ito_corrected else (
            self._ito_correction_diagonal if self.diagonal else self._ito_correction_columns)

    # What the methods call --------------------------------------------------------------------------------
    def state(self, y_aug: torch.Tensor, with_extras: bool = False):
        shapes = self.shapes if with_extras else self.shapes[:2]
        numel = sum(s.numel() for s in shapes)
        y, adj_y, *rest = _unflatten(y_aug.reshape(-1)[:numel], shapes)
        return y.detach().requires_grad_(True), adj_y, rest

    def f(self, t, y_aug):
        y, adj_y, _ = self.state(y_aug)
        with torch.enable_grad():
            if self._correction is None:
                return self._drift(self.forward.f(-t, y), y, adj_y)
            f, g = self.forward.f_and_g(-t, y)
            return self._corrected_drift(f, g, y, adj_y)

    def g_prod(self, t, y_aug, v):
        y, adj_y, _ = self.state(y_aug)
        with torch.enable_grad():
            return self._diffusion(self.forward.g_prod(-t, y, v), y, adj_y)

    def f_and_g_prod(self, t, y_aug, v):
        y, adj_y, _ = self.state(y_aug)
        with torch.enable_grad():
            if self._correction is None:
                f, g_prod = self.forward.f_and_g_prod(-t, y, v)
                return self._drift(f, y, adj_y), self._diffusion(g_prod, y, adj_y)
            f, g = self.forward.f_and_g(-t, y)
            g_prod = self.forward.prod(g, v)
            return self._corrected_drift(f, g, y, adj_y), self._diffusion(g_prod, y, adj_y)

    def g_prod_and_gdg_prod(self, t, y_aug, v1, v2):
        """Milstein on the adjoint of a diagonal-noise SDE: the diffusion product and its gdg term."""
        if not self.diagonal:
            raise ValueError("adjoint_method 'milstein' needs a diagonal-noise SDE (the adjoint of other noise types "
                             "has general noise); choose euler or a Stratonovich method")
        y, adj_y, _ = self.state(y_aug)
        with torch.enable_grad():
            g = self.forward.g(-t, y)
            g_prod = g * v1
            (vg_dg,) = vjp(g, y, v2 * g, retain_graph=True)
            (dg_dy,) = vjp(g.sum(), y, torch.ones((), dtype=g.dtype, device=g.device), retain_graph=True)
            prod_partials = vjp(g, [y] + self.params, adj_y * v2 * dg_dy, retain_graph=True)
            (avg_dg,) = vjp(g, y, (adj_y * v2 * g).detach(), create_graph=True)
            mixed_partials = vjp(avg_dg.sum(), [y] + self.params,
                                 torch.ones((), dtype=g.dtype, device=g.device), retain_graph=True)
            partials = [p - m for p, m in zip(prod_partials, mixed_partials)]
            return self._diffusion(g_prod, y, adj_y), _flatten([vg_dg, *partials]).unsqueeze(0)

    def g(self, t, y):
        raise ValueError("the adjoint SDE offers only diffusion-vector products; this adjoint_method needs g itself")

    f_and_g = g

    def prod(self, g, v):
        raise ValueError("the adjoint SDE offers only diffusion-vector products; this adjoint_method needs g itself")

    # Pieces -----------------------------------------------------------------------------------------------
    def _drift(self, f, y, adj_y):
        grads = vjp(f, [y] + self.params, adj_y, retain_graph=True)
        return _flatten([-f.detach(), *grads]).unsqueeze(0)

    def _diffusion(self, g_prod, y, adj_y):
        grads = vjp(g_prod, [y] + self.params, adj_y, retain_graph=True)
        return _flatten([-g_prod.detach(), *grads]).unsqueeze(0)

    def _corrected_drift(self, f, g, y, adj_y):
        return self._correction(f, g, y, adj_y)

    def _ito_correction_diagonal(self, f, g, y, adj_y):
        # Itô → Stratonovich drift: f − ½·2 g ∂g/∂y (torchsde's form: f − g·∂g/∂y with the ½ folded in the
        # adjoint's own correction terms below).
        (g_dg,) = vjp(g, y, g, create_graph=True)
        f = f - g_dg
        grads = vjp(f, [y] + self.params, adj_y, retain_graph=True)
        (a_dg,) = vjp(g, y, adj_y, retain_graph=True)
        extra = vjp(g, [y] + self.params, a_dg, retain_graph=True)
        return _flatten([-f.detach(), *[u + w for u, w in zip(grads, extra)]]).unsqueeze(0)

    def _ito_correction_columns(self, f, g, y, adj_y):
        columns = [c.squeeze(-1) for c in g.split(1, dim=-1)]
        from ._sde_view import jvp

        f = f - sum(jvp(c, y, c, create_graph=True) for c in columns)
        grads = vjp(f, [y] + self.params, adj_y, retain_graph=True)
        for c in columns:
            (a_dg,) = vjp(c, y, adj_y, retain_graph=True)
            extra = vjp(c, [y] + self.params, a_dg, retain_graph=True)
            grads = [u + w for u, w in zip(grads, extra)]
        return _flatten([-f.detach(), *grads]).unsqueeze(0)


def _adjoint_reversible_heun(adjoint: AdjointSDE):
    """One reverse step of reversible Heun: rebuild the forward step's input and backpropagate through it."""
    forward = adjoint.forward
    prod = forward.prod
    outer = (lambda a, w: a * w) if forward.diagonal else (lambda a, w: a.unsqueeze(-1) * w.unsqueeze(-2))

    def step(sde, t0, t1, dt, y_aug, extra0, w, u, a, options):
        f0, g0, z0 = extra0
        half_dt, half_w = 0.5 * dt, 0.5 * w
        y0, adj_y0, (adj_f0, adj_g0, adj_z0, *adj_params) = adjoint.state(y_aug, with_extras=True)
        y0 = y0.detach()
        # The forward step from (y1, z1) to (y0, z0) inverted: z1 = 2 y0 − z0 − f0 dt − g0 dW.
        z1 = 2 * y0 - z0 - f0 * dt - prod(g0, w)
        adj_f1 = adj_y0 * half_dt
        adj_f0 = adj_f0 + adj_y0 * half_dt
        adj_g1 = outer(adj_y0, half_w)
        adj_g0 = adj_g0 + outer(adj_y0, half_w)
        with torch.enable_grad():
            z0_leaf = z0.detach().requires_grad_(True)
            f0_re, g0_re = forward.f_and_g(-t0, z0_leaf)
            vjp_z, *vjp_params = vjp((f0_re, g0_re), [z0_leaf] + adjoint.params, (adj_f0, adj_g0))
        adj_z0 = adj_z0 + vjp_z
        adj_params = [p + q for p, q in zip(adj_params, vjp_params)]
        f1, g1 = forward.f_and_g(-t1, z1)
        y1 = y0 - (f0 + f1) * half_dt - prod(g0 + g1, half_w)
        adj_y1 = adj_y0 + 2 * adj_z0
        adj_z1 = -adj_z0
        adj_f1 = adj_f1 + adj_z0 * dt
        adj_g1 = adj_g1 + outer(adj_z0, w)
        out = _flatten([y1, adj_y1, adj_f1, adj_g1, adj_z1, *adj_params]).unsqueeze(0)
        return out, (f1, g1, z1)

    return Method("adjoint_reversible_heun", forward.sde_type, ("diagonal", "additive", "scalar", "general"),
                  ("none", "space-time", "davie", "foster"), "W", step, lambda noise: 0.5)


class _SdeintAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, settings: dict, y0: torch.Tensor, *extras_and_params: torch.Tensor):
        n_extra = settings["n_extra"]
        extras = tuple(x.detach() for x in extras_and_params[:n_extra])
        params = extras_and_params[n_extra:]
        ys, extra_state = integrate(settings["view"], settings["method"], settings["bm"], y0.detach(),
                                    settings["ts"], settings["dt"], settings["adaptive"], settings["rtol"],
                                    settings["atol"], settings["dt_min"], settings["options"], extras)
        ctx.settings = settings
        ctx.save_for_backward(ys, *(extra_state if settings["exact"] else ()), *params)
        return (ys, *extra_state)

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor, *grad_extras: torch.Tensor):
        s = ctx.settings
        if torch.is_grad_enabled():
            raise RuntimeError("sdeint_adjoint: a second derivative through the adjoint is not supported (the backward "
                               "pass runs without a graph); use sdeint for higher derivatives")
        ys, *rest = ctx.saved_tensors
        n_extra = s["n_extra"]
        if s["exact"]:
            extra_state, params = tuple(rest[:n_extra]), rest[n_extra:]
            grad_extras = [torch.zeros_like(x) if g is None else g for g, x in zip(grad_extras, extra_state)]
        else:
            extra_state, params, grad_extras = None, rest, []
        grad_ys = torch.zeros_like(ys) if grad_ys is None else grad_ys
        aug = [ys[-1], grad_ys[-1], *grad_extras, *[torch.zeros_like(p) for p in params]]
        shapes = [x.shape for x in aug]
        adjoint = AdjointSDE(s["view"], params, shapes)
        method = _adjoint_reversible_heun(adjoint) if s["adjoint_method"] == "adjoint_reversible_heun" \
            else select(s["adjoint_method"], adjoint.sde_type)
        reverse_bm = ReverseBrownian(s["bm"])
        if method.name != "adjoint_reversible_heun":
            _check_adjoint_method(method, adjoint, s["bm"], s["adjoint_options"])
        ts = s["ts"]
        state = _flatten(aug).unsqueeze(0)
        if extra_state is None:
            extra_state = init_extra(method, adjoint, -ts[-1], state)
        with torch.no_grad():
            for i in range(ys.size(0) - 1, 0, -1):
                span = torch.stack([-ts[i], -ts[i - 1]])
                out, extra_state = integrate(adjoint, method, reverse_bm, state, span, s["dt"], s["adjoint_adaptive"],
                                             s["adjoint_rtol"], s["adjoint_atol"], s["dt_min"], s["adjoint_options"],
                                             extra_state)
                parts = _unflatten(out[-1].reshape(-1), shapes)
                parts[0] = ys[i - 1]
                parts[1] = parts[1] + grad_ys[i - 1]
                state = _flatten(parts).unsqueeze(0)
        parts = _unflatten(state.reshape(-1), shapes)
        if s["exact"]:
            grads = parts[1:]
        else:
            grads = [parts[1]] + [None] * n_extra + parts[2:]
        return (None, *grads)


def sdeint_adjoint(sde: Any, y0: torch.Tensor, ts, bm: Any = None, method: str | None = None,
                   adjoint_method: str | None = None, dt: float = 1e-3, adaptive: bool = False,
                   adjoint_adaptive: bool = False, rtol: float = 1e-5, adjoint_rtol: float = 1e-5, atol: float = 1e-4,
                   adjoint_atol: float = 1e-4, dt_min: float = 1e-5, options: dict | None = None,
                   adjoint_options: dict | None = None, adjoint_params: Sequence[torch.Tensor] | None = None,
                   names: dict | None = None, logqp: bool = False, extra: bool = False,
                   extra_solver_state: tuple | None = None, **unused_kwargs):
    """Solve an SDE with gradients by the stochastic adjoint (drop-in for ``torchsde.sdeint_adjoint``).

    Arguments as :func:`sdeint`, plus ``adjoint_method`` (default: reversible_heun → adjoint_reversible_heun;
    Itô diagonal → milstein; other Itô → euler; Stratonovich → midpoint), ``adjoint_adaptive``,
    ``adjoint_rtol``, ``adjoint_atol``, ``adjoint_options`` and ``adjoint_params`` (default: the sde's
    parameters that require grad; an sde that is not an nn.Module must pass them, ``()`` for none).
    Memory is O(1) in the number of steps; the backward pass re-solves the adjoint SDE on the same path.
    Stratonovich SDEs have the cheaper adjoint (no Itô correction terms).
    """
    _warn_unused(unused_kwargs, "sdeint_adjoint")
    if adjoint_params is None and not isinstance(sde, torch.nn.Module):
        raise ValueError("sdeint_adjoint: sde must be an nn.Module to find the adjoint parameters; otherwise pass "
                         "adjoint_params explicitly (adjoint_params=() when there are none)")
    params = tuple(sde.parameters()) if adjoint_params is None else tuple(adjoint_params)
    for i, p in enumerate(params):
        if not torch.is_tensor(p):
            raise TypeError(f"adjoint_params[{i}] must be a tensor, got {type(p).__name__}")
    params = tuple(p for p in params if p.requires_grad)
    for name, value in (("adjoint_rtol", adjoint_rtol), ("adjoint_atol", adjoint_atol)):
        check_number(value, name)
    adjoint_options = check_method_options(adjoint_options, "adjoint_options")
    p = prepare(sde, y0, ts, bm, method, dt, adaptive, rtol, atol, dt_min, options, names, logqp)
    adjoint_method = _default_adjoint_method(p.view, p.method, adjoint_method)
    exact = p.method.name == "reversible_heun" and adjoint_method == "adjoint_reversible_heun"
    if adjoint_method == "adjoint_reversible_heun" and not exact:
        raise ValueError("adjoint_method='adjoint_reversible_heun' is the adjoint of method='reversible_heun' only")
    if not exact:  # refuse an adjoint method that cannot solve the adjoint SDE now, not at backward()
        _check_adjoint_method(select(adjoint_method, p.view.sde_type), AdjointSDE(p.view, (), ()), p.bm,
                              adjoint_options)
    if p.method.name == "reversible_heun":
        _warn_reversible(p.ts, dt, adaptive or adjoint_adaptive, adjoint_method)
    if extra_solver_state is None:
        extra_solver_state = init_extra(p.method, p.view, p.ts[0], p.y0)
    extra_solver_state = tuple(extra_solver_state)
    settings = dict(view=p.view, method=p.method, bm=p.bm, ts=p.ts, dt=dt, adaptive=adaptive, rtol=rtol, atol=atol,
                    dt_min=dt_min, options=p.options, adjoint_method=adjoint_method,
                    adjoint_adaptive=adjoint_adaptive, adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol,
                    adjoint_options=adjoint_options, n_extra=len(extra_solver_state), exact=exact)
    ys, *extra_state = _SdeintAdjoint.apply(settings, p.y0, *extra_solver_state, *params)
    return parse_return(p.y0, ys, tuple(extra_state), extra, logqp)


def _check_adjoint_method(method: Method, adjoint: AdjointSDE, bm: Any, adjoint_options: dict) -> None:
    check_method(method, adjoint, getattr(bm, "levy_area_approximation", "none"))
    if adjoint_options.get("grad_free", False) and method.name == "milstein":
        raise ValueError("adjoint_options: derivative-free Milstein (grad_free=True) cannot solve the adjoint SDE (it "
                         "needs the diffusion itself); use adjoint_options=dict(grad_free=False)")


def _default_adjoint_method(view: SDEView, method: Method, adjoint_method: str | None) -> str:
    if adjoint_method is not None:
        if not isinstance(adjoint_method, str):
            raise TypeError(f"adjoint_method must be a string, got {type(adjoint_method).__name__}")
        return adjoint_method
    if method.name == "reversible_heun":
        return "adjoint_reversible_heun"
    if view.sde_type == "stratonovich":
        return "midpoint"
    return "milstein" if view.noise_type == "diagonal" else "euler"


def _warn_reversible(ts: torch.Tensor, dt: float, adaptive: bool, adjoint_method: str) -> None:
    if adjoint_method != "adjoint_reversible_heun":
        warnings.warn("method='reversible_heun', but adjoint_method!='adjoint_reversible_heun'.")
    if adaptive:
        warnings.warn("method='reversible_heun' with adaptive steps: the backward pass does not revisit the forward "
                      "steps, so its gradient is not the exact gradient of the forward solve.")
        return
    steps = (ts - ts[0]) / dt
    if not torch.allclose(steps, steps.round()):
        warnings.warn("The spacing between the times ts is not an integer multiple of dt: the backward pass steps "
                      "to every ts while the forward pass interpolates to them, so method='reversible_heun' is not "
                      "exact here.")
