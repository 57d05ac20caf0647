"""Continuous normalizing flows (FFJORD) with RNODE regularisation, on fastdiffeq's solvers.

Direction and signs: data x sits at t = 0, the latent z at t = T. Along dz/dt = f(t, z) the log-density
obeys d log p/dt = -tr(df/dz), so

    log p(x) = log p_base(z(T)) - delta_logp,   delta_logp = -int_0^T tr(df/dz) dt   (FFJORD's convention).

The solve runs in normalised time s = t / T in [0, 1] (dz/ds = T f(sT, z)): the learnable end time T is
then an ordinary parameter of the augmented field, differentiable in every gradient mode, and the steps
are those of the solve in t (the increments are identical). The state is one tensor
[z (flattened), delta_logp, kinetic?, jacobian?] per sample, so one solve integrates the log-density and
the RNODE terms together.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .._adjoint import odeint_adjoint
from .._odeint import METHODS, odeint
from .._stats import last_backward_stats, last_stats
from ._layers import ConcatSquashLinear, ConcatSquashMLP

__all__ = ["CNF"]

TRACES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")
GRADIENTS = ("adjoint", "direct", "checkpoint")
# Up to this many data dimensions the exact trace runs the dynamics once on D stacked copies of the batch (one
# backward pass); above it, one backward pass per dimension (memory stays that of one batch).
EXACT_TRACE_STACK_MAX_DIM = 16
BACKENDS = ("fastdiffeq", "torchdiffeq")
DERIVATIVES = ("auto", "forward", "autograd")


def _nonnegative_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
    return float(value)


def _choice(value: Any, name: str, allowed: Tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}")
    return value


def _draw_noise(kind: str, like: torch.Tensor) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn_like(like)
    return torch.randint(0, 2, like.shape, device=like.device).to(like.dtype) * 2 - 1


class _AugmentedField:
    """The field of one solve: [z, delta_logp, kinetic?, jacobian?] -> their s-derivatives.

    A plain callable, not an nn.Module (the solvers get the parameters explicitly; a module here would make
    the CNF and its last field submodules of each other). One instance per solve, so the Hutchinson noise it
    holds is the one drawn for that solve and the backward pass of that solve (adjoint or checkpoint replay)
    reuses it, however many solves run in between. It counts its own calls (forward and backward NFE for any
    backend).
    """

    def __init__(self, cnf: "CNF", event_shape: torch.Size, with_logp: bool, noise: Optional[torch.Tensor]) -> None:
        self.cnf = cnf
        self.event_shape = event_shape
        self.dim = math.prod(event_shape)
        self.with_logp = with_logp
        self.with_kinetic = with_logp and cnf.kinetic > 0
        self.with_jacobian = with_logp and cnf.jacobian > 0
        self.noise = noise
        # The network's own forward-mode Jacobian products (no autograd.grad, no double backward) when it has them.
        # Only for ConcatSquashMLP's own forward (not a subclass that overrides it) without hooks.
        dyn = cnf.dynamics
        self.forward_mode = (cnf.derivatives in ("auto", "forward") and isinstance(dyn, ConcatSquashMLP)
                             and type(dyn).forward is ConcatSquashMLP.forward
                             and not (dyn._forward_hooks or dyn._forward_pre_hooks)
                             and (cnf.trace == "hutchinson" or self.dim <= EXACT_TRACE_STACK_MAX_DIM))
        # 'auto' on fastdiffeq's solvers: the whole augmented field in C++ (_C.NativeCNF) when the layers are
        # ConcatSquashMLP's own (fastdiffeq_native_field says when, per solve).
        self.native_candidate = (self.forward_mode and cnf.derivatives == "auto" and cnf.backend == "fastdiffeq"
                                 and len(event_shape) == 1
                                 and all(type(layer) is ConcatSquashLinear
                                         and not (layer._forward_hooks or layer._forward_pre_hooks)
                                         for layer in dyn.layers))
        self.native_used = False  # set by CNF._flow from the solve's stats
        self.calls = 0
        self._unit_directions: Optional[torch.Tensor] = None  # [d, d] identity, built on the first evaluation

    def unit_directions(self, like: torch.Tensor) -> torch.Tensor:
        """The d unit vectors (an identity in the state's dtype and device): made once per solve, not per call."""
        if self._unit_directions is None:
            self._unit_directions = torch.eye(self.dim, dtype=like.dtype, device=like.device)
        return self._unit_directions

    def fastdiffeq_native_field(self, y0: torch.Tensor) -> Optional[Any]:
        """The C++ description of this augmented field for state ``y0`` (fastdiffeq._native), or None: float32 /
        float64 on the CPU, every parameter and sqrt_T of y0's dtype and device."""
        if not self.native_candidate or y0.device.type != "cpu" or y0.dtype not in (torch.float32, torch.float64):
            return None
        from .. import _C

        cnf = self.cnf
        layers = list(cnf.dynamics.layers)
        tensors = [p for layer in layers for p in layer.parameters()] + [cnf.sqrt_T]
        if any(p.dtype != y0.dtype or p.device != y0.device for p in tensors):
            return None
        noise = self.noise.reshape(self.noise.shape[0], self.dim) if self.noise is not None else None
        return _C.NativeCNF([m.weight for m in layers], [m.bias for m in layers], [m.gate_weight for m in layers],
                            [m.gate_bias for m in layers], [m.time_weight for m in layers], cnf.sqrt_T,
                            train_T=cnf.sqrt_T.requires_grad, activation=cnf.dynamics.activation, trace=cnf.trace,
                            noise=noise, with_logp=self.with_logp, kinetic=self.with_kinetic,
                            jacobian=self.with_jacobian)

    def __call__(self, s: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        cnf = self.cnf
        T = cnf.T
        t = s * T
        n = state.shape[0]
        z = state[:, : self.dim].reshape((n,) + self.event_shape)
        if not self.with_logp:
            return (T * self._dynamics(t, z)).reshape(n, self.dim)
        dz, trace, frobenius = self._forward_mode(t, z) if self.forward_mode else self._autograd(t, z)
        columns = [T * dz.reshape(n, self.dim), (-T * trace).unsqueeze(1)]
        if self.with_kinetic:
            columns.append((T * dz.reshape(n, self.dim).square().sum(1)).unsqueeze(1))
        if self.with_jacobian:
            columns.append((T * frobenius).unsqueeze(1))
        return torch.cat(columns, dim=1)

    def _forward_mode(self, t: torch.Tensor, z: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """dz, the trace and the Frobenius term from the network's own forward-mode Jacobian products."""
        n, d = z.shape[0], self.dim
        if self.cnf.trace == "exact":  # the d unit directions: jv[i, k] = column i of sample k's Jacobian
            directions = self.unit_directions(z).unsqueeze(1).expand(d, n, d)
            dz, jv = self.cnf.dynamics.forward_with_tangents(t, z, directions)
            trace = torch.diagonal(jv, dim1=0, dim2=2).sum(-1)
            frobenius = jv.square().sum((0, 2)) if self.with_jacobian else None
            return dz, trace, frobenius
        eps = self.noise
        dz, jv = self.cnf.dynamics.forward_with_tangents(t, z, eps.unsqueeze(0))
        trace = (jv[0] * eps).sum(1)
        frobenius = jv[0].square().sum(1) if self.with_jacobian else None
        return dz, trace, frobenius

    def _autograd(self, t: torch.Tensor, z: torch.Tensor
                  ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """dz, the trace and the Frobenius term by autograd, for any dynamics."""
        # Keep the graph of the Jacobian products only when someone differentiates this call (direct mode, an
        # adjoint or checkpoint backward): the adjoint's forward pass runs without one.
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if self.cnf.trace == "exact" and self.dim <= EXACT_TRACE_STACK_MAX_DIM:
                return self._exact_stacked(t, z, keep_graph)
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            dz = self._dynamics(t, z)
            return (dz,) + self._trace(dz, z, keep_graph)

    def _dynamics(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dz = self.cnf.dynamics(t, z)
        if not isinstance(dz, torch.Tensor) or dz.shape != z.shape:
            got = list(dz.shape) if isinstance(dz, torch.Tensor) else type(dz).__name__
            raise ValueError(f"CNF: dynamics(t, z) must return a tensor of z's shape {list(z.shape)}, got {got}")
        return dz

    def _exact_stacked(self, t: torch.Tensor, z: torch.Tensor, keep_graph: bool
                       ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The exact Jacobian diagonal (and rows) from ONE backward pass: the dynamics runs on D stacked copies of
        the batch and copy i is differentiated along e_i. Same FLOPs as D separate passes, 1/D of the operator
        calls (small fields are dispatch-bound); assumes the samples do not interact, as any per-sample trace does.
        """
        n, d = z.shape[0], self.dim
        copies = (d,) + (1,) * (z.dim() - 1)
        # Differentiable z (direct mode, a backward replay): the copies route gradients back to it.
        stacked = z.repeat(copies) if z.requires_grad else z.detach().repeat(copies).requires_grad_(True)
        dz_all = self._dynamics(t, stacked)
        if not dz_all.requires_grad:  # a field that ignores z (and every parameter): zero Jacobian
            zeros = z.new_zeros(n)
            return dz_all[:n], zeros, (zeros if self.with_jacobian else None)
        basis = self.unit_directions(z).repeat_interleave(n, dim=0).reshape(dz_all.shape)
        (rows,) = torch.autograd.grad(dz_all, stacked, basis, create_graph=keep_graph, allow_unused=True)
        dz = dz_all[:n]
        if rows is None:  # the field ignores z
            zeros = z.new_zeros(n)
            return dz, zeros, (zeros if self.with_jacobian else None)
        rows = rows.reshape(d, n, d)  # rows[i, k] = row i of sample k's Jacobian
        trace = torch.diagonal(rows, dim1=0, dim2=2).sum(-1)
        frobenius = rows.square().sum((0, 2)) if self.with_jacobian else None
        return dz, trace, frobenius

    def _trace(self, dz: torch.Tensor, z: torch.Tensor, keep_graph: bool
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """tr(df/dz) per sample and, when the Jacobian term is on, ||df/dz||_F^2 (exact or Hutchinson)."""
        n = z.shape[0]
        zeros = dz.new_zeros(n)
        if not dz.requires_grad:  # a field that ignores z (and every parameter): zero Jacobian
            return zeros, (zeros if self.with_jacobian else None)
        if self.cnf.trace == "hutchinson":
            eps = self.noise
            (eps_j,) = torch.autograd.grad(dz, z, eps, create_graph=keep_graph, allow_unused=True)
            if eps_j is None:
                return zeros, (zeros if self.with_jacobian else None)
            trace = (eps_j * eps).reshape(n, -1).sum(1)
            frobenius = eps_j.reshape(n, -1).square().sum(1) if self.with_jacobian else None
            return trace, frobenius
        # Exact: one vector-Jacobian product per dimension gives row i of every sample's Jacobian.
        dz_flat = dz.reshape(n, self.dim)
        trace = zeros
        frobenius = zeros if self.with_jacobian else None
        for i in range(self.dim):
            (row,) = torch.autograd.grad(dz_flat[:, i].sum(), z, create_graph=keep_graph,
                                         retain_graph=keep_graph or i + 1 < self.dim, allow_unused=True)
            if row is None:
                continue
            row = row.reshape(n, self.dim)
            trace = trace + row[:, i]
            if frobenius is not None:
                frobenius = frobenius + row.square().sum(1)
        return trace, frobenius


class CNF(nn.Module):
    """A continuous normalizing flow (FFJORD, Grathwohl et al. 2019) with RNODE regularisation (Finlay et al. 2020).

    The flow maps data x (t = 0) to latent z (t = T) along dz/dt = dynamics(t, z), integrating the
    log-density change in the same solve, so ``log_prob(x) = base.log_prob(z) - delta_logp``.

    Args:
        dynamics: any nn.Module called as ``dynamics(t, z)`` -> dz/dt with z's shape ``[N, *event_shape]``
            (t a 0-dim tensor), e.g. :class:`fastdiffeq.nn.ConcatSquashMLP`.
        trace: 'exact' (one vector-Jacobian product per dimension, any dynamics) or 'hutchinson'
            (tr(J) ~ eps^T J eps, one product per evaluation; unbiased).
        noise: the Hutchinson noise, 'rademacher' (default) or 'gaussian': one draw per sample, shaped like
            z, drawn once per solve and reused by that solve's backward pass.
        T: the end time (> 0). train_T: learn T (parametrised as T = sqrt_T ** 2, as FFJORD, so it stays >= 0).
        kinetic, jacobian: weights (>= 0) of the RNODE terms int_0^T ||f||^2 dt and
            int_0^T ||df/dz||_F^2 dt, integrated as extra channels of the same solve when > 0 (the Frobenius
            norm exact under trace='exact', estimated with the same noise under 'hutchinson');
            :meth:`regularization` returns them.
        method, rtol, atol, options: the ODE solver's (as :func:`fastdiffeq.odeint`).
        gradient: 'adjoint' (default; constant memory, :func:`fastdiffeq.odeint_adjoint`), 'direct' or
            'checkpoint' (exact gradients of the discrete solve, as :func:`fastdiffeq.odeint`).
        adjoint_options: passed to the adjoint (e.g. ``dict(norm='seminorm')``).
        base: a ``torch.distributions`` object for the latent (default: the standard normal). Its
            ``log_prob`` of ``[N, *event_shape]`` must be ``[N]``, or ``[N, *event_shape]`` (summed).
        dim: the data's event shape (an int or a tuple), needed by :meth:`sample` when neither ``base`` nor
            ``dynamics.dim`` nor an earlier call tells it.
        backend: 'fastdiffeq' (default) or 'torchdiffeq' (the same model and augmented field on
            torchdiffeq's solvers, for comparison; it has no 'checkpoint').
        derivatives: how the field and its trace are computed. 'auto' (default): with a
            :class:`ConcatSquashMLP` (its own forward and layers, no hooks), float32/float64 on the CPU and the
            fastdiffeq backend, the whole augmented field in C++ (``fastdiffeq.last_stats().field == 'native'``;
            hand-written vector-Jacobian products; exact traces up to D = 16; it cannot be differentiated twice);
            otherwise as 'forward'. 'forward': the network's own forward-mode products in Python when dynamics is
            a ConcatSquashMLP (explicit operations: no ``autograd.grad`` per evaluation and no double backward),
            else autograd. 'autograd': always by autograd (exact: the dynamics on D stacked copies of the batch
            and one backward pass for D <= 16, one backward pass per dimension above; Hutchinson: one
            vector-Jacobian product; its Hutchinson Frobenius estimate is ||eps^T J||^2, the others' ||J eps||^2).

    Example:
        >>> import torch, fastdiffeq
        >>> flow = fastdiffeq.nn.CNF(fastdiffeq.nn.ConcatSquashMLP(2), trace="exact")
        >>> x = fastdiffeq.datasets.toy_2d("8gaussians", 256, seed=0)
        >>> loss = -flow.log_prob(x).mean()          # then loss.backward(), an optimizer step...
        >>> samples = flow.sample(1000)              # [1000, 2]
    """

    def __init__(self, dynamics: nn.Module, *, trace: str = "exact", noise: str = "rademacher", T: float = 1.0,
                 train_T: bool = True, kinetic: float = 0.0, jacobian: float = 0.0, method: str = "dopri5",
                 rtol: float = 1e-5, atol: float = 1e-5, gradient: str = "adjoint",
                 base: Optional[torch.distributions.Distribution] = None, options: Optional[Dict[str, Any]] = None,
                 adjoint_options: Optional[Dict[str, Any]] = None, dim: Optional[Any] = None,
                 backend: str = "fastdiffeq", derivatives: str = "auto") -> None:
        super().__init__()
        if not isinstance(dynamics, nn.Module):
            raise TypeError(f"`dynamics` must be an nn.Module called as dynamics(t, z), got {type(dynamics).__name__}")
        self.dynamics = dynamics
        self.trace = _choice(trace, "trace", TRACES)
        self.noise = _choice(noise, "noise", NOISES)
        T = _nonnegative_float(T, "T")
        if T == 0:
            raise ValueError("`T` must be > 0, got 0")
        if train_T:
            self.sqrt_T = nn.Parameter(torch.tensor(math.sqrt(T)))
        else:
            self.register_buffer("sqrt_T", torch.tensor(math.sqrt(T)))
        self.train_T = bool(train_T)
        self.kinetic = _nonnegative_float(kinetic, "kinetic")
        self.jacobian = _nonnegative_float(jacobian, "jacobian")
        self.backend = _choice(backend, "backend", BACKENDS)
        self.derivatives = _choice(derivatives, "derivatives", DERIVATIVES)
        self.method = _choice(method, "method", METHODS if backend == "fastdiffeq" else (method,))
        self.rtol = _nonnegative_float(rtol, "rtol")
        self.atol = _nonnegative_float(atol, "atol")
        self.gradient = _choice(gradient, "gradient", GRADIENTS)
        if backend == "torchdiffeq" and gradient == "checkpoint":
            raise ValueError("`gradient`='checkpoint' needs backend='fastdiffeq' (torchdiffeq has no checkpointed "
                             "gradients); use 'adjoint' or 'direct'")
        if base is not None and not isinstance(base, torch.distributions.Distribution):
            raise TypeError(f"`base` must be a torch.distributions.Distribution or None, got {type(base).__name__}")
        self.base = base
        self.options = dict(options) if options is not None else None
        self.adjoint_options = dict(adjoint_options) if adjoint_options is not None else None
        self._event_shape = self._initial_event_shape(dim)
        self._last_terms: Optional[Dict[str, torch.Tensor]] = None
        self._last_field: Optional[_AugmentedField] = None
        self._last_forward_calls = 0
        self._last_python_calls = 0
        self._backward_stats_before: Any = None

    # ---- shapes -------------------------------------------------------------------------------------
    def _initial_event_shape(self, dim: Any) -> Optional[torch.Size]:
        if dim is not None:
            shape = (dim,) if isinstance(dim, int) else tuple(dim)
            if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
                raise ValueError(f"`dim` must be a positive int or a tuple of them, got {dim!r}")
            return torch.Size(shape)
        if self.base is not None and len(self.base.event_shape) > 0:
            return torch.Size(self.base.event_shape)
        dyn_dim = getattr(self.dynamics, "dim", None)
        if isinstance(dyn_dim, int) and not isinstance(dyn_dim, bool) and dyn_dim > 0:
            return torch.Size((dyn_dim,))
        return None

    def _check_input(self, x: Any, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`{name}` must be a tensor [N, *event_shape], got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"`{name}` must be a floating tensor, got dtype {x.dtype}")
        if x.dim() < 2:
            raise ValueError(f"`{name}` must have a batch dimension and data dimensions [N, D], got shape "
                             f"{list(x.shape)}")
        if self._event_shape is not None and x.shape[1:] != self._event_shape:
            raise ValueError(f"`{name}` must have shape [N, {', '.join(map(str, self._event_shape))}] (the flow's "
                             f"data dimension), got {list(x.shape)}")
        if self._event_shape is None:
            self._event_shape = x.shape[1:]
        return x

    # ---- the flow -----------------------------------------------------------------------------------
    @property
    def T(self) -> torch.Tensor:
        """The end time (a 0-dim tensor; differentiable when train_T)."""
        return self.sqrt_T.square()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Map data to latent: returns ``(z, delta_logp)``, z like x, delta_logp ``[N]`` = log p_T(z) - log p_0(x)."""
        x = self._check_input(x, "x")
        z, delta, terms = self._flow(x, reverse=False, with_logp=True)
        self._last_terms = terms
        return z, delta

    def inverse(self, z: torch.Tensor, *, with_logp: bool = False) -> Any:
        """Map latent to data (t from T to 0). With ``with_logp``: ``(x, log p(x))`` under the base, from the same
        solve."""
        z = self._check_input(z, "z")
        if not with_logp:
            return self._flow(z, reverse=True, with_logp=False)[0]
        x, delta, _ = self._flow(z, reverse=True, with_logp=True)
        # Integrated from T down to 0, delta = log p_0(x) - log p_T(z).
        return x, self.base_log_prob(z) + delta

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per sample, ``[N]``, under the base distribution pushed through the flow."""
        z, delta = self.forward(x)
        return self.base_log_prob(z) - delta

    def sample(self, n: int, *, with_log_prob: bool = False) -> Any:
        """``n`` samples ``[n, *event_shape]`` (and their log-densities when ``with_log_prob``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"`n` must be a positive int, got {n!r}")
        z = self.sample_base(n)
        return self.inverse(z, with_logp=with_log_prob)

    def sample_base(self, n: int) -> torch.Tensor:
        """``n`` draws of the latent (the base distribution)."""
        if self.base is not None:
            return self.base.sample((n,))
        if self._event_shape is None:
            raise ValueError("CNF.sample needs the data dimension: pass `dim=` to CNF, a `base` with an event shape, "
                             "or call the flow on data first")
        return torch.randn((n,) + tuple(self._event_shape), dtype=self.sqrt_T.dtype, device=self.sqrt_T.device)

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p_base(z) per sample, ``[N]``."""
        if self.base is None:
            return (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
        lp = self.base.log_prob(z)
        if lp.shape == z.shape:
            lp = lp.flatten(1).sum(1)
        if lp.shape != z.shape[:1]:
            raise ValueError(f"`base`.log_prob of a batch {list(z.shape)} must be [N] or [N, *event_shape], got "
                             f"{list(lp.shape)}")
        return lp

    def regularization(self) -> torch.Tensor:
        """The weighted RNODE terms of the last :meth:`forward` (or :meth:`log_prob`), per sample ``[N]``.

        ``kinetic * int_0^T ||f||^2 dt + jacobian * int_0^T ||df/dz||_F^2 dt`` for each sample (take ``.mean()``
        for a loss); zeros when both weights are 0. Differentiable like the forward that produced it.
        """
        if self._last_terms is None:
            raise RuntimeError("CNF.regularization() needs a forward pass first (forward or log_prob)")
        terms = self._last_terms
        total = terms["zeros"]
        if "kinetic" in terms:
            total = total + self.kinetic * terms["kinetic"]
        if "jacobian" in terms:
            total = total + self.jacobian * terms["jacobian"]
        return total

    def regularization_terms(self) -> Dict[str, torch.Tensor]:
        """The unweighted RNODE integrals of the last forward, per sample: keys 'kinetic' and/or 'jacobian'
        (each present when its weight is > 0)."""
        if self._last_terms is None:
            raise RuntimeError("CNF.regularization_terms() needs a forward pass first (forward or log_prob)")
        return {k: v for k, v in self._last_terms.items() if k != "zeros"}

    @property
    def nfe_forward(self) -> int:
        """Evaluations of the dynamics in the last solve (forward, inverse, log_prob or sample)."""
        return self._last_forward_calls

    @property
    def nfe_backward(self) -> int:
        """Evaluations of the dynamics by the last solve's backward pass so far (0 in 'direct' mode, where
        backpropagation goes through the recorded evaluations instead)."""
        field = self._last_field
        if field is None:
            return 0
        python_calls = field.calls - self._last_python_calls
        if not field.native_used:
            return python_calls
        # The native path counts in the solver's stats: the backward pass recorded since this solve, if native.
        stats = last_backward_stats()
        native_calls = stats.nfe if stats is not None and stats is not self._backward_stats_before and \
            stats.field == "native" else 0
        return python_calls + native_calls

    # ---- the solve ----------------------------------------------------------------------------------
    def _flow(self, x: torch.Tensor, reverse: bool, with_logp: bool
              ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        n = x.shape[0]
        noise = _draw_noise(self.noise, x) if (with_logp and self.trace == "hutchinson") else None
        field = _AugmentedField(self, x.shape[1:], with_logp, noise)
        if n == 0:  # an empty batch: nothing to integrate (empty results, like a distribution's log_prob)
            self._last_field, self._last_forward_calls, self._last_python_calls = field, 0, 0
            field.native_used = False
            empty = x.new_zeros(0)
            terms = {"zeros": empty}
            if with_logp:
                terms.update({k: empty for k, on in (("kinetic", field.with_kinetic),
                                                     ("jacobian", field.with_jacobian)) if on})
            return x.clone(), (empty if with_logp else None), terms
        columns = [x.reshape(n, -1)]
        extra = (1 + field.with_kinetic + field.with_jacobian) if with_logp else 0
        if extra:
            columns.append(x.new_zeros(n, extra))
        state0 = torch.cat(columns, dim=1) if extra else columns[0]
        s = torch.tensor([1.0, 0.0] if reverse else [0.0, 1.0], dtype=x.dtype, device=x.device)
        self._backward_stats_before = last_backward_stats()
        state1 = self._solve(field, state0, s)
        self._last_field = field
        self._last_python_calls = field.calls
        stats = last_stats() if self.backend == "fastdiffeq" else None
        field.native_used = stats is not None and stats.field == "native"
        self._last_forward_calls = stats.nfe if field.native_used else field.calls
        y = state1[:, : field.dim].reshape(x.shape)
        terms: Dict[str, torch.Tensor] = {"zeros": x.new_zeros(n)}
        if not with_logp:
            return y, None, terms
        col = field.dim + 1
        if field.with_kinetic:
            terms["kinetic"] = state1[:, col]
            col += 1
        if field.with_jacobian:
            terms["jacobian"] = state1[:, col]
        return y, state1[:, field.dim], terms

    def _params(self) -> Tuple[torch.Tensor, ...]:
        return tuple(p for p in self.parameters() if p.requires_grad)

    def _solve(self, field: _AugmentedField, state0: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        kwargs: Dict[str, Any] = dict(rtol=self.rtol, atol=self.atol, method=self.method, options=self.options)
        if self.backend == "torchdiffeq":
            try:
                import torchdiffeq
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise ImportError("CNF(backend='torchdiffeq') needs torchdiffeq installed") from exc
            if self.gradient == "adjoint" and torch.is_grad_enabled():
                return torchdiffeq.odeint_adjoint(field, state0, s, adjoint_params=self._params(),
                                                  adjoint_options=self.adjoint_options, **kwargs)[-1]
            return torchdiffeq.odeint(field, state0, s, **kwargs)[-1]
        if self.gradient == "adjoint":
            return odeint_adjoint(field, state0, s, adjoint_params=self._params(),
                                  adjoint_options=self.adjoint_options, **kwargs)[-1]
        return odeint(field, state0, s, gradient=self.gradient, gradient_params=self._params(), **kwargs)[-1]

    def extra_repr(self) -> str:
        parts: List[str] = [f"trace={self.trace!r}"]
        if self.trace == "hutchinson":
            parts.append(f"noise={self.noise!r}")
        parts += [f"T={self.T.item():.4g}", f"train_T={self.train_T}"]
        if self.kinetic or self.jacobian:
            parts += [f"kinetic={self.kinetic}", f"jacobian={self.jacobian}"]
        parts += [f"method={self.method!r}", f"rtol={self.rtol}", f"atol={self.atol}", f"gradient={self.gradient!r}"]
        if self.backend != "fastdiffeq":
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)
