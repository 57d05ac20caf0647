"""Time-conditioned layers for neural vector fields: FFJORD's ConcatSquash layer and the MLP built from it."""

from __future__ import annotations

import math
from typing import Callable, Dict, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConcatSquashLinear", "ConcatSquashMLP", "MLP", "ACTIVATIONS"]


class Activation(NamedTuple):
    """An activation and its derivative, given the input x and the output y = fn(x) (whichever is cheaper)."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    derivative: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _silu_derivative(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s + y * (1 - s)


# The activations every fastdiffeq network accepts by name (one table: the MLPs, their Jacobians and their
# argument checks read it). elu is alpha = 1, so elu'(x) = y + 1 for x <= 0.
ACTIVATIONS: Dict[str, Activation] = {
    "softplus": Activation(F.softplus, lambda x, y: torch.sigmoid(x)),
    "tanh": Activation(torch.tanh, lambda x, y: 1 - y.square()),
    "relu": Activation(F.relu, lambda x, y: (x > 0).to(x.dtype)),
    "elu": Activation(F.elu, lambda x, y: torch.where(x > 0, torch.ones_like(y), y + 1)),
    "sigmoid": Activation(torch.sigmoid, lambda x, y: y * (1 - y)),
    "silu": Activation(F.silu, _silu_derivative),
}


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    return value


def _layer_widths(in_features: int, hidden: Sequence[int] | int, out_features: int, activation: str
                  ) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """The checked hidden widths and every layer boundary (in, *hidden, out) of an MLP; checks the activation."""
    if isinstance(hidden, int):
        hidden = (hidden,)
    hidden = tuple(_positive_int(h, "hidden") for h in hidden)
    if activation not in ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {list(ACTIVATIONS)}, got {activation!r}")
    return hidden, (in_features, *hidden, out_features)


def _time_column(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """t as a tensor that broadcasts against a layer's output [N, out]: 0-dim, or [N, 1] for per-sample times."""
    if not isinstance(t, torch.Tensor):
        return torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        return t
    if t.dim() == 1 and x.dim() >= 1 and t.shape[0] == x.shape[0]:
        return t.reshape((-1,) + (1,) * (x.dim() - 1))
    raise ValueError(
        f"`t` must be a 0-dim tensor or one time per sample (shape [{x.shape[0] if x.dim() else 1}]), "
        f"got shape {list(t.shape)}"
    )


class ConcatSquashLinear(nn.Module):
    """A linear layer gated and shifted by time (FFJORD's ConcatSquash layer).

    ``out = (W x + b) * sigmoid(a_g t + b_g) + a_b t``, with W, b, a_g, b_g, a_b learned; the gate and
    shift act per output feature.

    Args:
        in_features, out_features: sizes of the last dimension of the input and output.

    Shapes:
        forward(t, x): x ``[..., in_features]``; t a 0-dim tensor (or a float), or ``[N]`` (one time per
        sample, x ``[N, in_features]``). Returns ``[..., out_features]``.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.gate_weight = nn.Parameter(torch.empty(out_features))
        self.gate_bias = nn.Parameter(torch.empty(out_features))
        self.time_weight = nn.Parameter(torch.empty(out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # W, b as nn.Linear(in, out); the three time maps as nn.Linear(1, out) (fan-in 1: uniform(-1, 1)).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.bias, -bound, bound)
        for p in (self.gate_weight, self.gate_bias, self.time_weight):
            nn.init.uniform_(p, -1.0, 1.0)

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_tangents(t, x, None)[0]

    def forward_with_tangents(self, t: torch.Tensor | float, x: torch.Tensor, tangents: torch.Tensor | None
                              ) -> Tuple[torch.Tensor, torch.Tensor | None]:
        """The output and its directional derivatives: tangents ``[K, *x.shape]`` -> ``[K, *out.shape]``
        (d out = (W dx) * gate: the layer is linear in x). ``tangents`` None -> (out, None)."""
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"`x` must end in {self.in_features} features, got shape {list(x.shape)}")
        tc = _time_column(t, x)
        gate = torch.sigmoid(self.gate_weight * tc + self.gate_bias)
        out = F.linear(x, self.weight, self.bias) * gate + self.time_weight * tc
        if tangents is None:
            return out, None
        return out, F.linear(tangents, self.weight) * gate

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class ConcatSquashMLP(nn.Module):
    """FFJORD's dynamics network: ConcatSquashLinear layers dim -> hidden... -> dim, activation between them.

    Args:
        dim: the state's size (input and output features).
        hidden: the hidden layer widths (default three of 64, as FFJORD's toy models).
        activation: one of :data:`ACTIVATIONS` ('softplus', 'tanh', 'relu', 'elu', 'sigmoid', 'silu').

    forward(t, z) -> dz/dt with z's shape ``[N, dim]`` (t 0-dim or ``[N]``): usable directly as a vector
    field in :func:`fastdiffeq.odeint` or inside :class:`fastdiffeq.nn.CNF`.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64, 64), activation: str = "softplus") -> None:
        super().__init__()
        self.dim = _positive_int(dim, "dim")
        self.hidden, widths = _layer_widths(self.dim, hidden, self.dim, activation)
        self.activation = activation
        self.layers = nn.ModuleList(ConcatSquashLinear(i, o) for i, o in zip(widths[:-1], widths[1:]))

    def forward(self, t: torch.Tensor | float, z: torch.Tensor) -> torch.Tensor:
        act = ACTIVATIONS[self.activation].fn
        h = z
        for layer in self.layers[:-1]:
            h = act(layer(t, h))
        return self.layers[-1](t, h)

    def forward_with_tangents(self, t: torch.Tensor | float, z: torch.Tensor, tangents: torch.Tensor
                              ) -> Tuple[torch.Tensor, torch.Tensor]:
        """dz and the Jacobian-vector products J v for K directions at once (forward-mode, explicit ops).

        ``tangents`` ``[K, N, dim]`` -> ``(dz [N, dim], J v [K, N, dim])``. With the K = dim unit vectors this is
        the whole Jacobian (rows indexed by direction); with a Hutchinson draw it is J eps. Plain differentiable
        torch operations: no autograd.grad call and no double backward when the result is differentiated.
        """
        act = ACTIVATIONS[self.activation]
        h, v = z, tangents
        for layer in self.layers[:-1]:
            pre, v = layer.forward_with_tangents(t, h, v)
            h = act.fn(pre)
            v = v * act.derivative(pre, h)
        return self.layers[-1].forward_with_tangents(t, h, v)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, activation={self.activation!r}"


class MLP(nn.Module):
    """A multilayer perceptron vector field: nn.Linear layers in_features -> hidden... -> out_features.

    An ordinary nn.Module (``mlp(x)`` or ``mlp(t, x)``, t ignored: an autonomous field) that fastdiffeq's
    solvers recognise and evaluate natively in C++ — no Python call per evaluation, and hand-written
    vector-Jacobian products for the adjoint — when it maps the state to itself (``out_features ==
    in_features == y0.shape[-1]``), its parameters have the state's dtype and device, and neither its forward
    nor its layers were replaced and no hooks are registered. Otherwise it runs as the Python module it is.
    :func:`fastdiffeq.last_stats` says which path ran (``field='native'`` or ``'python'``).

    Args:
        in_features: input size (the state's last dimension).
        hidden: hidden layer widths (default two of 64).
        out_features: output size (default: in_features).
        activation: one of :data:`ACTIVATIONS` between the layers (default 'tanh').
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (64, 64), out_features: int | None = None,
                 activation: str = "tanh") -> None:
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = self.in_features if out_features is None else _positive_int(out_features, "out_features")
        self.hidden, widths = _layer_widths(self.in_features, hidden, self.out_features, activation)
        self.activation = activation
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:]))

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        if len(args) not in (1, 2):
            raise TypeError(f"MLP takes (x) or (t, x), got {len(args)} arguments")
        h = args[-1]
        act = ACTIVATIONS[self.activation].fn
        for layer in self.layers[:-1]:
            h = act(layer(h))
        return self.layers[-1](h)

    def fastdiffeq_native_field(self, y0: torch.Tensor):
        """The C++ description the solvers evaluate for state ``y0``, or None when this module must run in Python."""
        from .. import _C

        if type(self).forward is not MLP.forward or self._forward_hooks or self._forward_pre_hooks:
            return None
        if self.out_features != self.in_features or y0.dim() == 0 or y0.shape[-1] != self.in_features:
            return None
        if self.activation not in ACTIVATIONS:
            return None
        for layer in self.layers:
            if type(layer) is not nn.Linear or layer.bias is None or layer._forward_hooks or layer._forward_pre_hooks:
                return None
            for p in (layer.weight, layer.bias):
                if p.dtype != y0.dtype or p.device != y0.device:
                    return None
        return _C.NativeMLP([layer.weight for layer in self.layers], [layer.bias for layer in self.layers],
                            self.activation)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, hidden={self.hidden}, out_features={self.out_features}, "
                f"activation={self.activation!r}")
