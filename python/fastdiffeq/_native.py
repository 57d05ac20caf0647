"""Native vector fields: modules the solvers evaluate in C++ instead of calling back into Python.

A module opts in with a method ``fastdiffeq_native_field(y0)`` returning a ``_C`` native description
(``_C.NativeMLP`` from :class:`fastdiffeq.nn.MLP`; ``_C.NativeCNF`` from :class:`fastdiffeq.nn.CNF`'s augmented field
over a ConcatSquashMLP) or None when it cannot run natively for this state (dtype,
device, shape, hooks, an overridden forward). The description shares the module's parameters, so direct and
checkpointed gradients reach them through autograd as usual; its adjoint products are hand-written in C++.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import torch

__all__ = ["native_field", "field_for"]


def native_field(func: Callable, y0: torch.Tensor) -> Optional[Any]:
    """The native description of ``func`` for state ``y0``, or None (then ``func`` runs in Python)."""
    make = getattr(func, "fastdiffeq_native_field", None)
    return make(y0) if callable(make) else None


def field_for(field: Any, func: Callable, native: bool, params: Sequence[torch.Tensor]) -> Tuple[Any, str]:
    """What a backward pass hands the C++ loop, and its path ('native' or 'python'): the native field when it
    differentiates exactly ``params`` (all of the module's parameters, in order), else the Python module (a
    frozen parameter or a custom parameter list)."""
    if not native:
        return field, "python"
    # A description that knows its parameters (a CNF's augmented field is not a module) answers itself (the
    # tensors it returns are new Python objects over the same storage, so `is` cannot compare them).
    if hasattr(field, "differentiates"):
        if field.differentiates(list(params)):
            return field, "native"
        return func, "python"
    own = list(func.parameters())
    if len(own) == len(params) and all(a is b for a, b in zip(own, params)):
        return field, "native"
    return func, "python"
