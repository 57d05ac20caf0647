"""ResNets and HeunNets as discretised neural ODEs, with the memory-free 'reconstruct' gradient.

Sander, Ablin & Peyre, "Do residual neural networks discretize neural ODEs?" (NeurIPS 2022): a network of N
residual blocks f_0 .. f_{N-1}, each with its own weights, is a depth-varying vector field on [0, 1] with
step 1/N. The 'reconstruct' gradient keeps only the output x_N and, in reverse, rebuilds each earlier state
approximately by running the scheme backwards, recomputes block n there and takes its vector-Jacobian
product. The loop, the state updates and the reverse walk are C++ (csrc/solver/residual.cpp).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .. import _C

SCHEMES = ("euler", "heun")
GRADIENTS = ("backprop", "reconstruct")


class _Reconstruct(torch.autograd.Function):
    """Forward without a graph keeping only x_N; backward rebuilds the states in reverse (C++)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: "ResidualODE", *params: torch.Tensor) -> torch.Tensor:
        blocks, groups = module._calls()
        with torch.no_grad():
            x_end = _C.residual_forward(blocks, groups, x.detach(), module.scheme)
        ctx.module = module
        ctx.save_for_backward(x_end)
        return x_end.clone()  # the output may be modified in place by the caller; x_end stays ours

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (x_end,) = ctx.saved_tensors
        module = ctx.module
        blocks, groups = module._calls()
        grad_x, grads, _ = _C.residual_backward(blocks, groups, x_end, grad.contiguous(), module.scheme)
        # Per block, per trainable parameter, in the order of module._calls(); back to module.parameters().
        by_id = {}
        for group, g in zip(groups, grads):
            for p, gp in zip(group, g):
                by_id[id(p)] = gp if id(p) not in by_id else by_id[id(p)] + gp
        out = [by_id.get(id(p)) for p in module._trainable()]
        return (grad_x, None, *out)


class ResidualODE(nn.Module):
    """A residual network read as a neural ODE: ``x_{n+1} = x_n + f_n(x_n) / N`` (ResNet, ``scheme='euler'``)
    or Heun's method (HeunNet, ``scheme='heun'``): ``u = x_n + f_n(x_n) / N``,
    ``x_{n+1} = x_n + (f_n(x_n) + f_{n+1}(u)) / (2N)``.

    Each block is its own module with its own weights (a vector field that varies with depth, sampled at
    t = n / N). **How a HeunNet ends**: there is no f_N, so the last step's corrector evaluates the last block
    again, ``x_N = x_{N-1} + (f_{N-1}(x_{N-1}) + f_{N-1}(u)) / (2N)`` (the field held constant over the
    last step; it changes the result by O(1/N^2) for weights smooth in depth).

    Args:
        blocks: a sequence of N >= 1 modules (or callables, registered when they are modules), each called
            as ``block(x)`` and returning a tensor of x's shape, dtype and device.
        scheme: 'euler' (ResNet, default) or 'heun' (HeunNet: two block evaluations per step).
        gradient: 'backprop' (default): ordinary autograd through the loop, memory growing with N.
            'reconstruct': the memory-free adjoint of Sander et al.: no activations are stored; the backward
            pass rebuilds x_{N-1}, ..., x_0 from x_N by running the scheme backwards (ResNet:
            ``x_n ~ x_{n+1} - f_n(x_{n+1}) / N``; HeunNet: Heun's method backwards), recomputes step n at the
            rebuilt state and back-propagates through it. The rebuilt states are approximations, so the
            gradients are too: the error falls like 1/N (ResNet) or 1/N^2 (HeunNet) when the weights are
            smooth in depth, and can be large when they are not. Memory does not grow with N.

    Raises:
        TypeError / ValueError: bad blocks, scheme or gradient (named in the message); blocks returning a
            tensor of the wrong shape, dtype or device.

    Example:
        >>> import torch
        >>> from fastdiffeq.nn import ResidualODE
        >>> net = ResidualODE([torch.nn.Linear(4, 4) for _ in range(8)], scheme="heun", gradient="reconstruct")
        >>> net(torch.randn(3, 4)).shape
        torch.Size([3, 4])
    """

    def __init__(self, blocks: Sequence, *, scheme: str = "euler", gradient: str = "backprop") -> None:
        super().__init__()
        if isinstance(blocks, (torch.Tensor, str)) or not hasattr(blocks, "__len__") or not hasattr(blocks, "__iter__"):
            raise TypeError(f"`blocks` must be a sequence of modules, got {type(blocks).__name__}")
        blocks = list(blocks)
        if not blocks:
            raise ValueError("`blocks` must hold at least one block")
        for i, b in enumerate(blocks):
            if not callable(b):
                raise TypeError(f"`blocks[{i}]` must be callable (a module), got {type(b).__name__}")
        if not isinstance(scheme, str) or scheme not in SCHEMES:
            raise ValueError(f"`scheme` must be one of {SCHEMES}, got {scheme!r}")
        if not isinstance(gradient, str) or gradient not in GRADIENTS:
            raise ValueError(f"`gradient` must be one of {GRADIENTS}, got {gradient!r}")
        self.blocks = nn.ModuleList([b for b in blocks if isinstance(b, nn.Module)])
        self._all = blocks  # in depth order (plain callables included)
        self.scheme = scheme
        self.gradient = gradient

    @property
    def depth(self) -> int:
        """N, the number of blocks."""
        return len(self._all)

    def _trainable(self) -> List[torch.Tensor]:
        return [p for p in self.parameters() if p.requires_grad]

    def _calls(self) -> Tuple[List, List[List[torch.Tensor]]]:
        groups = [[p for p in b.parameters() if p.requires_grad] if isinstance(b, nn.Module) else []
                  for b in self._all]
        return self._all, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x_N from x_0 = x (any shape the blocks accept; float32/float64)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"`x` must be float32 or float64, got {x.dtype}")
        blocks, groups = self._calls()
        if self.gradient == "backprop" or not torch.is_grad_enabled():
            return _C.residual_forward(blocks, groups, x, self.scheme)
        params = self._trainable()
        if not x.requires_grad and not params:
            with torch.no_grad():
                return _C.residual_forward(blocks, groups, x, self.scheme)
        return _Reconstruct.apply(x, self, *params)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, scheme={self.scheme!r}, gradient={self.gradient!r}"
