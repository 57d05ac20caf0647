"""fastdiffeq: fused, compiled ODE solvers for PyTorch (drop-in for torchdiffeq's ``odeint``)."""

import torch  # noqa: F401  (loads libtorch before the extension, which has no RPATH to it)

from . import _C  # noqa: F401
