"""fastdiffeq: compiled, fused Runge-Kutta ODE solvers for PyTorch, drop-in for torchdiffeq.

The adaptive loop (dopri5, tsit5, bosh3) runs in C++; every per-step operation (stage combination, error
norm with accept/reject and step-size control, dense output, state update) is a fused CPU/CUDA kernel
(``torch.ops.fastdiffeq.*``); only the calls of the vector field go back to Python. Gradients: direct
backprop through the fused ops, exact checkpointed replay (``gradient="checkpoint"``), or the adjoint method
(``odeint_adjoint``, with seminorm and an interpolated-trajectory option), or algebraically reversible
Runge-Kutta (``gradient="reversible"``: exact gradients of the reversible solve, memory flat in the steps).

Public API:
    odeint(func, y0, t, *, rtol, atol, method, options, gradient, progress, reversible_coupling)  -- drop-in for
        torchdiffeq.odeint
    odeint_adjoint(func, y0, t, *, ..., adjoint_options, adjoint_params, progress) -- drop-in for torchdiffeq's
    solve_ivp(func, y0, t_eval, *, method, rtol, atol, gradient, options, on_failure, event_fn, params, progress)
        -- a batch of independent problems, each sample with its own step size -> Solution
    odeint_event(func, y0, t0, *, event_fn, reverse_time, odeint_interface, **kwargs) -- torchdiffeq's: solve until
        an event; the event time differentiable (implicit function theorem)
    last_stats(), last_backward_stats() -> SolveStats  -- NFE, accepted/rejected steps, status
    SolverError, MaxStepsError, StepSizeUnderflowError, NonFiniteStateError
    Status  -- the solver's status codes (an IntEnum of the values the compiled core defines)
    sdeint(sde, y0, ts, bm, method, dt, adaptive, ...), sdeint_adjoint(...) -- drop-in for torchsde's
    BrownianInterval, BrownianPath, BrownianTree -- torchsde's Brownian motions (seeded, any query order)
    nn.CNF, nn.ConcatSquashLinear, nn.ConcatSquashMLP  -- continuous normalizing flows (FFJORD, RNODE)
    nn.ResidualODE  -- ResNet / HeunNet as discretised neural ODEs, with the memory-free reconstruct gradient
    datasets.toy_2d, datasets.TOY_2D, datasets.TOY_2D_ENTROPY  -- FFJORD's 2-D toy distributions
"""

import torch  # noqa: F401  (loads libtorch before the extension, which has no RPATH to it)

from . import _torch_compat

_torch_compat.check()  # a clear ImportError when torch is not the one _C was compiled against

from . import _C  # noqa: F401
from ._errors import MaxStepsError, NonFiniteStateError, SolverError, StepSizeUnderflowError
from ._adjoint import odeint_adjoint
from ._odeint import METHODS, odeint
from ._solve_ivp import Solution, solve_ivp
from ._events import odeint_event
from ._brownian import BrownianInterval, BrownianPath, BrownianTree
from ._sde import sdeint
from ._sde_adjoint import sdeint_adjoint
from ._stats import SolveStats, last_backward_stats, last_stats
from ._status import Status
from . import datasets, nn  # noqa: E402  (fastdiffeq.nn: CNF and layers; fastdiffeq.datasets: toy data)

__version__ = "0.1.0"

__all__ = [
    "odeint",
    "odeint_adjoint",
    "solve_ivp",
    "odeint_event",
    "Solution",
    "last_stats",
    "last_backward_stats",
    "SolveStats",
    "SolverError",
    "MaxStepsError",
    "StepSizeUnderflowError",
    "NonFiniteStateError",
    "METHODS",
    "Status",
    "nn",
    "datasets",
]
