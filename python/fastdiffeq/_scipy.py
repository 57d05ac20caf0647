"""method='scipy_solver': torchdiffeq's reference path through ``scipy.integrate.solve_ivp``, in plain Python.

As torchdiffeq 0.2.5 does it: the state flattened to one float64 numpy vector, ``solve_ivp(fun, t_span, y0,
t_eval=t, method=options['solver'] (default 'LSODA'), rtol, atol, min_step, max_step)`` on t (on -t with the
field negated when t decreases), func evaluated under no_grad (at t as torchdiffeq converts it: LSODA's
times pass through float32); the result carries no gradient.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ._stats import SolveStats, _record
from ._validate import positive_float

__all__ = ["SCIPY_METHOD", "parse_scipy_options", "solve_scipy"]

SCIPY_METHOD = "scipy_solver"
_SCIPY_OPTIONS = frozenset({"solver", "min_step", "max_step"})
_IGNORED = frozenset({"norm", "grid_points", "eps"})  # accepted and unused, as torchdiffeq does


def parse_scipy_options(options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"`options` must be a dict or None, got {type(options).__name__}")
    unknown = sorted(set(options) - _SCIPY_OPTIONS - _IGNORED)
    if unknown:
        raise ValueError(f"`options` has unknown key(s) {unknown} for method 'scipy_solver'; known keys: "
                         f"{sorted(_SCIPY_OPTIONS)}")
    solver = options.get("solver", "LSODA")
    if not isinstance(solver, str):
        raise TypeError(f"options['solver'] must be the name of a scipy.integrate.solve_ivp method, got "
                        f"{type(solver).__name__}")
    min_step = positive_float(options.get("min_step", 0.0), "min_step", allow_zero=True)
    max_step = positive_float(options.get("max_step", float("inf")), "max_step", allow_inf=True)
    return dict(solver=solver, min_step=min_step, max_step=max_step)


def _tolerance(values: Any, p: Any) -> Any:
    """One number, or one per element of the flat state (per-tuple-element tolerances)."""
    import numpy as np

    if len(set(values)) == 1:
        return values[0]
    return np.concatenate([np.full(n, v) for v, n in zip(values, p.sizes)])


def solve_scipy(p: Any) -> torch.Tensor:
    """ys [T, 1, D] of the problem p (a validated _odeint._Problem) solved by scipy; records the stats."""
    import numpy as np
    from scipy.integrate import solve_ivp

    opts = p.scipy
    y0 = p.flat_y0().detach().reshape(-1)
    T = p.t64.numel()
    if T == 1:
        return y0.reshape(1, 1, -1).clone()
    reverse = bool(p.t64[1] < p.t64[0])
    sign = -1.0 if reverse else 1.0
    t = (p.t64 * sign).numpy()
    nfe = 0

    def fun(tt: float, y: Any) -> Any:
        nonlocal nfe
        nfe += 1
        with torch.no_grad():
            # torch.tensor(tt) as torchdiffeq builds it: a Python float (LSODA's callback passes one) becomes a
            # float32 tensor first, so func sees t rounded to float32 there; kept for identical results.
            ti = torch.tensor(sign * tt).to(torch.float64)
            yi = torch.tensor(y).to(p.device, p.dtype)  # a copy: scipy may reuse its buffer
            f = p.flat_field(ti, yi)
        return sign * f.detach().to("cpu", torch.float64).numpy()

    sol = solve_ivp(fun, t_span=[t.min(), t.max()], y0=y0.to("cpu", torch.float64).numpy(), t_eval=t,
                    method=opts["solver"], rtol=_tolerance(p.rtols, p), atol=_tolerance(p.atols, p), min_step=opts["min_step"], max_step=opts["max_step"])
    if sol.status != 0 or sol.y.shape[1] != T:
        from ._errors import SolverError
        stats = SolveStats(method=SCIPY_METHOD, nfe=nfe, n_accepted=0, n_rejected=0, t_final=float("nan"),
                           status="max_steps")
        raise SolverError(f"fastdiffeq.odeint: scipy's {opts['solver']} failed: {sol.message}", t=float("nan"),
                          stats=stats)
    _record(SolveStats(method=SCIPY_METHOD, nfe=nfe, n_accepted=0, n_rejected=0, t_final=float(p.t64[-1]),
                       status="success"))  # scipy does not report its step counts
    ys = torch.as_tensor(np.ascontiguousarray(sol.y.T)).to(p.device, p.dtype)
    return ys.reshape(T, 1, -1)
