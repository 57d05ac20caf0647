"""The backward passes of the solves that record a tape forward and replay it in C++ (checkpoint, fixed-grid
checkpoint, reversible; joint and per-sample): one place for what they share around the C++ replay.

Forward: the solve's result dict gives the tape; ``keep_tape`` stores it with the problem and the parameters.
Backward: ``replay_joint`` / ``replay_per_sample`` pick the field for the parameters (native only when it
differentiates all of them), call ``replay(field, tape, grad_ys, params, user_shape) -> (grad_y0, grad_params,
nfe)`` with the garbage collector paused, and record the backward stats. Per sample, failed samples get no
cotangent and no gradient.
"""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

import torch

from ._native import field_for
from ._stats import SolveStats, _record_backward
from ._status import Status, status_name

Replay = Callable[[Any, Any, torch.Tensor, List[torch.Tensor], List[int]], Tuple[Any, List[torch.Tensor], int]]


def keep_tape(ctx: Any, res: dict, params: Tuple[torch.Tensor, ...], **owner: Any) -> torch.Tensor:
    """Save the tape (and per sample its status) of a forward result for the backward; returns ys."""
    for name, value in owner.items():
        setattr(ctx, name, value)
    ctx.tape = res["tape"]
    if "status" in res:
        ctx.status = res["status"]
    ctx.save_for_backward(*params)
    return res["ys"]


def replay_joint(ctx: Any, grad_ys: torch.Tensor, replay: Replay) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """(grad_y0, grad_params) of a joint solve (ctx.problem) from its tape."""
    from ._odeint import gc_paused

    p = ctx.problem
    params = list(ctx.saved_tensors)
    field, path = field_for(p.field, p.func, p.native, params)
    with gc_paused():
        grad_y0, grad_params, nfe = replay(field, ctx.tape, grad_ys.contiguous(), params, p.user_shape)
    _record_backward(SolveStats(method=p.method, nfe=int(nfe), n_accepted=ctx.tape.n_steps, n_rejected=0,
                                t_final=float(p.t64[0]), status=status_name(Status.SUCCESS), field=path))
    return grad_y0, grad_params


def replay_per_sample(ctx: Any, grad_ys: torch.Tensor, replay: Replay,
                      n_steps: int) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """(grad_y0, grad_params) of a per-sample solve (ctx.batch, ctx.status) from its tape."""
    from ._odeint import gc_paused

    b = ctx.batch
    params = list(ctx.saved_tensors)
    active = (ctx.status == int(Status.SUCCESS)).to(grad_ys.device).view(1, -1, 1)
    grad_ys = torch.where(active, grad_ys, 0.0).contiguous()
    field, path = field_for(b.field, b.func, b.native, params)
    with gc_paused():
        grad_y0, grad_params, nfe = replay(field, ctx.tape, grad_ys, params, b.user_shape())
    grad_y0 = torch.where(active[0], grad_y0, 0.0)
    _record_backward(SolveStats(method=b.method, nfe=int(nfe), n_accepted=n_steps, n_rejected=0,
                                t_final=float(b.t_eval[0, 0]), status=status_name(Status.SUCCESS), field=path))
    return grad_y0, grad_params
