"""Argument checking for the public solvers: every bad input becomes a ValueError/TypeError naming it."""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence, Tuple, Union

import torch

from . import _C

TensorOrTuple = Union[torch.Tensor, Tuple[torch.Tensor, ...]]

_STATE_DTYPES = (torch.float32, torch.float64)


def check_func(func: Any, name: str = "func") -> None:
    if not callable(func):
        raise TypeError(f"`{name}` must be callable as {name}(t, y), got {type(func).__name__}")


def check_state_tensor(y: Any, name: str) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor or a tuple of tensors, got {type(y).__name__}")
    if y.dtype not in _STATE_DTYPES:
        raise TypeError(
            f"`{name}` must be a float32 or float64 tensor, got {y.dtype}"
            + (" (integer states cannot be integrated: convert with .double() or .float())"
               if not y.is_floating_point() and not y.is_complex() else "")
        )
    if y.device.type not in ("cpu", "cuda"):
        raise ValueError(f"`{name}` must be on a CPU or CUDA device, got {y.device}")
    if y.device.type == "cuda" and not _C.built_with_cuda:
        raise ValueError(
            f"`{name}` is on {y.device} but this fastdiffeq build has no CUDA kernels "
            "(it was built against a CPU-only torch or without nvcc)"
        )
    if not _C.all_finite(y):
        raise ValueError(f"`{name}` contains NaN or inf")
    return y


def check_time_grid(t: Any, name: str = "t") -> torch.Tensor:
    """A 1-D floating tensor, finite, strictly increasing or strictly decreasing."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a 1-D torch.Tensor of times, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got {t.dtype}")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"`{name}` must be on a CPU or CUDA device, got {t.device}")
    if t.dim() != 1:
        raise ValueError(f"`{name}` must be one-dimensional, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"`{name}` must hold at least one time")
    t64 = t.detach().to(device="cpu", dtype=torch.float64)
    if t64.numel() <= 64:
        # Short grids (the common case) are checked in Python: a handful of tensor ops cost more here.
        values = t64.tolist()
        finite = all(math.isfinite(v) for v in values)
        pairs = list(zip(values, values[1:]))
        monotone = all(b > a for a, b in pairs) or all(b < a for a, b in pairs)
    else:
        finite = bool(torch.isfinite(t64).all())
        d = t64[1:] - t64[:-1]
        monotone = bool((d > 0).all()) or bool((d < 0).all())
    if not finite:
        raise ValueError(f"`{name}` contains NaN or inf")
    if t64.numel() > 1:
        if not monotone:
            raise ValueError(
                f"`{name}` must be strictly increasing or strictly decreasing (no repeated times), got {t64.tolist()}"
                if t64.numel() <= 10 else
                f"`{name}` must be strictly increasing or strictly decreasing (no repeated times)"
            )
    return t64


def _scalar_tol(value: Any, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            raise ValueError(f"`{name}` cannot require gradient")
        if value.numel() != 1:
            raise ValueError(
                f"`{name}` must be a number (or one number per tuple element); per-element tolerance tensors "
                f"are not supported, got shape {tuple(value.shape)}"
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    value = _to_float(value, f"`{name}`", "finite and >= 0")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be finite and >= 0, got {value}")
    return value


def _to_float(value: Any, label: str, requirement: str) -> float:
    """float(value), with a ValueError naming the argument where Python raises OverflowError (10**400)."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{label} must be {requirement}, got {value!r:.40} (too large for a float)") from None


def check_tolerance(value: Any, name: str, n_parts: int) -> list[float]:
    """One tolerance per state segment (tuple element): a number, or a sequence with one per element."""
    if isinstance(value, (list, tuple)) or (isinstance(value, torch.Tensor) and value.dim() == 1 and n_parts > 1
                                            and value.numel() == n_parts):
        values = list(value)
        if len(values) != n_parts:
            raise ValueError(
                f"`{name}` given as a sequence must have one entry per tuple element of y0 ({n_parts}), got {len(values)}"
            )
        return [_scalar_tol(v, f"{name}[{i}]") for i, v in enumerate(values)]
    return [_scalar_tol(value, name)] * n_parts


def _option_number(value: Any, name: str) -> Any:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"options['{name}'] must be a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"options['{name}'] must be a real number, got {type(value).__name__}")
    return value


def positive_float(value: Any, name: str, *, allow_zero: bool = False, allow_inf: bool = False) -> float:
    bound = ">= 0" if allow_zero else "> 0"
    requirement = f"{bound}{'' if allow_inf else ' and finite'}"
    value = _to_float(_option_number(value, name), f"options['{name}']", requirement)
    if math.isnan(value) or (math.isinf(value) and not allow_inf) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"options['{name}'] must be {requirement}, got {value}")
    return value


def real_option(value: Any, name: str) -> float:
    """A real-valued option as a float (inf allowed, NaN not); its range is checked by the caller."""
    value = _option_number(value, name)
    try:
        value = float(value)
    except OverflowError:
        value = math.inf if value > 0 else -math.inf  # 10**400: the range rules then name the option
    if math.isnan(value):
        raise ValueError(f"options['{name}'] must not be NaN")
    return value


_INT64_MAX = 2**63 - 1


def max_num_steps_option(value: Any) -> int:
    """options['max_num_steps']: a positive integer that fits the solver's int64 counters."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"options['max_num_steps'] must be a positive integer, got {value!r}")
    if value > _INT64_MAX:
        raise ValueError(f"options['max_num_steps'] must be at most 2**63 - 1, got {value}")
    return int(value)


def time_points(value: Any, name: str) -> list[float]:
    """step_t / jump_t: a 1-D tensor or sequence of finite times."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 1:
            raise ValueError(f"options['{name}'] must be one-dimensional, got shape {tuple(value.shape)}")
        values = value.detach().to("cpu", torch.float64).reshape(-1).tolist()
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = [_to_float(v, f"options['{name}']", "finite") for v in value]
    else:
        raise TypeError(f"options['{name}'] must be a 1-D tensor or a sequence of times, got {type(value).__name__}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"options['{name}'] contains NaN or inf")
    return values
