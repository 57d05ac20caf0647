"""Per-sample batched solves on Van der Pol (issue F3): fastdiffeq.solve_ivp vs torchode vs joint-mode odeint.

Problem: B = 256 Van der Pol oscillators y = [x, v], dx/dt = v, dv/dt = mu (1 - x^2) v - x, all from
y0 = [2, 0], t in [0, T_end] with T_end = 10 and 200 equally spaced outputs (t = 0 included), dopri5,
rtol = atol = 1e-5, **float64** (everything: state, time, mu; torchode and scipy run in float64 too, so the
accuracy comparisons are not limited by float32). Two batches:

    mu2     mu = 2 for every sample: all samples are the same problem (per-sample = joint, a sanity check)
    spread  mu = torch.linspace(1, 25, B): stiffness grows with mu

Why T_end = 10: from [2, 0] a large-mu sample first creeps along the slow manifold, where an explicit
method is held to |h lambda| <~ 3.3 with lambda ~ -mu (x^2 - 1) (-75 at x = 2 for mu = 25), while a mu = 1
sample is a smooth oscillation. Over [0, 10] per-sample dopri5 then needs ~57 steps for mu = 1 and ~230 for
mu = 25 (4x: the stiff samples are genuinely harder), and the moderate-mu samples go through their fast
relaxation jumps at different times. One step size for the whole batch (joint mode) has to follow the hardest
sample at every moment: 276 steps for every sample, ~2.2x the per-sample total.
(``--t-end 20`` makes the gap larger: ~1000 joint steps vs <= 315 per sample; it doubles the run time.)

The vector field is a small nn.Module with ``mu`` an nn.Parameter of shape [B] (what the adjoints
differentiate); it ignores t. Methods:

    forward (no grad)
      fd-ivp          fastdiffeq.solve_ivp(f, y0, t, method='dopri5')     per-sample steps   (F3, new)
      tode            torchode 1.0.1, eager: Dopri5 + IntegralController + AutoDiffAdjoint,
                      ODETerm(with_stats=False)                          per-sample steps
      tode-compiled   the same, torch.compile(adjoint.solve) (torchode's README compiles the *module*,
                      torch.compile(adjoint).solve, which runs .solve eagerly; we compile the method)
      tdq-joint       torchdiffeq.odeint                                   one step size for the batch
      fd-joint        fastdiffeq.odeint                                    one step size (torchdiffeq's steps)
    forward + backward, loss = sum(ys ** 2) over all outputs, gradient w.r.t. mu
      fd-ivp-adjoint  fastdiffeq.solve_ivp(..., gradient='adjoint')        per-sample adjoint (y re-solved)
      fd-ivp-interp   the same with adjoint_options=dict(trajectory='interpolated') (y from the forward)
      fd-ivp-ckpt     fastdiffeq.solve_ivp(..., gradient='checkpoint')     exact discrete gradient, replay
      fd-ivp-direct   fastdiffeq.solve_ivp(..., gradient='direct')         backprop through the loop
      tode-backsolve  torchode.BacksolveAdjoint: torchode's adjoint (per-sample; one reverse solve per
                      output interval, the VJP per sample via torch.func.vmap(vjp)). Per-sample vmap calls
                      f on one sample, so this method calls f(t, y, idx) with idx = arange(B) passed as the
                      term's args (vmap_args_dims=0) and uses mu[idx]; its augmented state carries a
                      per-sample copy of dL/dmu ([B] per sample: B x B in all).
      tode-autodiff   torchode.AutoDiffAdjoint + loss.backward(): backprop through the solver (not an
                      adjoint; for reference)
      tdq-adjoint     torchdiffeq.odeint_adjoint(adjoint_params=(mu,))     joint
      fd-adjoint      fastdiffeq.odeint_adjoint(adjoint_params=(mu,))      joint
    torchode 1.0.1 also has JointBacksolveAdjoint (one step size for the flattened batch); not run.

Reported per batch and method: steps per sample (mean / max; a joint solver's every sample takes the
batch's steps), total steps summed over samples (sum_b n_steps_b, rejected attempts included; joint: B x
n_steps), rejected attempts (total), loop iterations, NFE (batched field calls), median wall ms (and median
thread CPU ms), and two per-step times:
    us/iter         wall / loop iterations, where a joint solver's loop iterations are its step attempts and
                    a per-sample solver's are max_b n_steps_b (the slowest sample's attempts: the batched
                    loop runs at least that many times, stepping every still-running sample each time)
    us/sample-step  wall / total steps (sum over samples)
Step counts: solve_ivp's Solution.n_steps etc.; torchode's sol.stats (n_steps = attempts, n_accepted, from an
untimed run with ODETerm(with_stats=True), which also gives n_f_evals); fastdiffeq.odeint from last_stats();
torchdiffeq from a counting wrapper (untimed run): dopri5 takes (NFE - 2) / 6 attempts (FSAL: 6 new calls per
attempt plus f(t0) and the initial-step probe), the same as fastdiffeq.odeint's.
Adjoint NFE: a counting wrapper (untimed run): calls during the forward / during loss.backward().

Timing: one torch thread (intra- and inter-op). Every timed call is preceded by warm-up (the untimed stats runs
plus one more call; torch.compile's first call is timed separately as compile time). Round r runs every
(batch, forward method) once and, for r < adjoint repeats, every (batch, adjoint method) once, each list in
an order rotated by r; medians over rounds. A method that raises is reported with its error and dropped
from the later rounds; the others continue.

Correctness: for 8 samples (spread over the batch) scipy.integrate.solve_ivp(DOP853, rtol = atol = 1e-10)
gives y at every output time; per method: max |y - y_ref| at T_end and over all outputs. Gradients: every
adjoint method's dL/dmu against fastdiffeq.odeint(gradient='checkpoint', rtol = atol = 1e-10) (joint, float64;
torchdiffeq.odeint with backprop as a fallback): max |g - g_ref| / max |g_ref|.

Targets (F3), printed next to the results:
  - fd-ivp takes fewer total steps than joint mode (fd-joint / tdq-joint) on the spread batch;
  - fd-ivp's us/iter <= 1/3 of torchode's (eager; the compiled one is shown too);
  - the per-sample adjoint's backward <= 2.5 x its forward (bwd/fwd; printed for every gradient method).

Usage:
    python benchmarks/bench_vdp.py [--repeats 7] [--adjoint-repeats 3] [--quick] [--markdown] [--json out.json]
                                   [--batch 256] [--t-end 10] [--no-compile] [--no-adjoint] [--methods a,b]
A full run (default repeats) takes about 2.5 minutes on the 2-vCPU dev machine (torch.compile ~17 s of it,
torchode's BacksolveAdjoint ~70 s); ``--quick`` (B = 64, 2 forward rounds, 1 adjoint round) about 1 minute.

Controllers: fd-ivp follows torchdiffeq's controller per sample (no step shrink after an accepted step), so
each sample takes the steps fastdiffeq.odeint / torchdiffeq take on that sample alone. torchode's
IntegralController applies the factor after accepted steps too (it shrinks), which on the stiff samples avoids
most rejections: it takes fewer steps there (mu = 25: 195 vs 234), so its step counts are not the same
algorithm's; compare time per loop iteration / per sample-step, not only wall time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, median, time_call2  # noqa: E402


def _import_retry(name: str, tries: int = 6, wait_s: float = 10.0):
    """Import `name`, retrying a few times: the package may be mid-reinstall by another session."""
    import importlib
    last: Optional[BaseException] = None
    for i in range(tries):
        try:
            return importlib.import_module(name)
        except Exception as e:  # ImportError, OSError (a half-written .so), ...
            last = e
            if i + 1 < tries:
                print(f"# import {name} failed ({type(e).__name__}: {e}); retrying in {wait_s:.0f} s", file=sys.stderr)
                time.sleep(wait_s)
    print(f"# import {name} failed for good: {type(last).__name__}: {last}", file=sys.stderr)
    return None


fastdiffeq = _import_retry("fastdiffeq")
try:
    import torchdiffeq
except ImportError:
    torchdiffeq = None
try:
    import torchode
except ImportError:
    torchode = None
try:
    from scipy.integrate import solve_ivp as scipy_solve_ivp
except ImportError:
    scipy_solve_ivp = None

DTYPE = torch.float64
TOL, REF_TOL, N_OUT = 1e-5, 1e-10, 200
FORWARD_METHODS = ["fd-ivp", "tode", "tode-compiled", "tdq-joint", "fd-joint"]
# fastdiffeq.solve_ivp's gradient modes (per sample): name -> solve_ivp keyword arguments.
FD_IVP_GRADIENTS = {
    "fd-ivp-adjoint": dict(gradient="adjoint"),
    "fd-ivp-interp": dict(gradient="adjoint", adjoint_options=dict(trajectory="interpolated")),
    "fd-ivp-ckpt": dict(gradient="checkpoint"),
    "fd-ivp-direct": dict(gradient="direct"),
}
ADJOINT_METHODS = [*FD_IVP_GRADIENTS, "tode-backsolve", "tode-autodiff", "tdq-adjoint", "fd-adjoint"]
PER_SAMPLE = {"fd-ivp", "tode", "tode-compiled", *FD_IVP_GRADIENTS, "tode-backsolve", "tode-autodiff"}
N_CHECK = 8  # samples checked against scipy


class Skip(Exception):
    """A method that cannot run here (library missing, feature not implemented): reported, not an error."""


# --------------------------------------------------------------------------------------------- problem

class VdP(torch.nn.Module):
    """Van der Pol field on a batch: y [B, 2] -> [B, 2], mu an nn.Parameter [B]. With `idx` (torchode's
    per-sample vmap: y [2], idx a 0-dim index) it uses mu[idx]."""

    def __init__(self, mu: torch.Tensor):
        super().__init__()
        self.mu = torch.nn.Parameter(mu.clone())

    def forward(self, t: torch.Tensor, y: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        mu = self.mu if idx is None else self.mu[idx]
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], dim=-1)


class Counting(torch.nn.Module):
    """Counts the calls of a field (a submodule, so .parameters() are the field's tensors)."""

    def __init__(self, f: torch.nn.Module):
        super().__init__()
        self.f, self.n = f, 0

    def forward(self, t, y, *args):
        self.n += 1
        return self.f(t, y, *args)


def make_batches(B: int) -> Dict[str, torch.Tensor]:
    return {"mu2": torch.full((B,), 2.0, dtype=DTYPE), "spread": torch.linspace(1.0, 25.0, B, dtype=DTYPE)}


def check_indices(B: int) -> List[int]:
    return sorted(set(torch.linspace(0, B - 1, min(N_CHECK, B)).round().long().tolist()))


def scipy_reference(mu: torch.Tensor, y0: torch.Tensor, t: torch.Tensor, idx: List[int]) -> Optional[torch.Tensor]:
    """y at every output time for the samples `idx`: [len(idx), T, 2], DOP853 at rtol = atol = 1e-10."""
    if scipy_solve_ivp is None:
        return None
    import numpy as np
    ts = t.numpy()
    out = []
    for i in idx:
        m = float(mu[i])

        def rhs(_t, y, m=m):
            return np.array([y[1], m * (1 - y[0] ** 2) * y[1] - y[0]])

        sol = scipy_solve_ivp(rhs, (ts[0], ts[-1]), y0[i].numpy(), method="DOP853", rtol=REF_TOL, atol=REF_TOL,
                              t_eval=ts)
        if sol.status != 0:
            raise RuntimeError(f"scipy reference failed for mu={m}: {sol.message}")
        out.append(torch.from_numpy(sol.y.T.copy()))
    return torch.stack(out)


# ------------------------------------------------------------------------------------------- forward

class Method:
    """One (batch, method): `run()` is the timed call; `stats()` an untimed run returning (ys [B, T, 2], info)."""

    def __init__(self, name: str, batch: str, run: Callable[[], Any], stats: Callable[[], Tuple[torch.Tensor, Dict]]):
        self.name, self.batch, self.run, self.stats = name, batch, run, stats


def _per_sample_info(n_steps: torch.Tensor, n_accepted: Optional[torch.Tensor], nfe: Optional[int]) -> Dict[str, Any]:
    s = n_steps.to(torch.float64)
    info = dict(steps_mean=float(s.mean()), steps_min=int(s.min()), steps_max=int(s.max()),
                steps_total=int(s.sum()), iterations=int(s.max()), nfe=nfe)
    if n_accepted is not None:
        info["rejected_total"] = int((n_steps - n_accepted).sum())
    return info


def _joint_info(n_steps: int, n_rejected: Optional[int], nfe: int, B: int) -> Dict[str, Any]:
    return dict(steps_mean=float(n_steps), steps_min=n_steps, steps_max=n_steps, steps_total=n_steps * B,
                iterations=n_steps, nfe=nfe, rejected_total=None if n_rejected is None else n_rejected * B)


def forward_method(name: str, batch: str, mu: torch.Tensor, y0: torch.Tensor, t: torch.Tensor,
                   compile_info: Dict[str, Any]) -> Method:
    """Builds the method's callables (raises Skip where it cannot run)."""
    B = y0.shape[0]
    f = VdP(mu)
    kw = dict(rtol=TOL, atol=TOL, method="dopri5")

    if name == "fd-ivp":
        if fastdiffeq is None:
            raise Skip("fastdiffeq does not import")
        if not hasattr(fastdiffeq, "solve_ivp"):
            raise Skip("fastdiffeq.solve_ivp is not available yet in the installed fastdiffeq")

        def stats():
            sol = fastdiffeq.solve_ivp(f, y0, t, **kw)
            info = _per_sample_info(sol.n_steps, sol.n_accepted, int(sol.nfe))
            ok = int((sol.status == int(fastdiffeq.Status.SUCCESS)).sum())
            info["failed"] = B - ok
            return sol.ys, info
        return Method(name, batch, lambda: fastdiffeq.solve_ivp(f, y0, t, **kw), stats)

    if name in ("tode", "tode-compiled"):
        if torchode is None:
            raise Skip("torchode is not installed")
        t_eval = t.unsqueeze(0).expand(B, -1)
        problem = torchode.InitialValueProblem(y0=y0, t_eval=t_eval)

        def build(with_stats: bool):
            term = torchode.ODETerm(f, with_stats=with_stats)
            step = torchode.Dopri5(term=term)
            ctrl = torchode.IntegralController(atol=TOL, rtol=TOL, term=term)
            return torchode.AutoDiffAdjoint(step, ctrl)

        def stats_eager():
            sol = build(True).solve(problem)
            s = sol.stats
            info = _per_sample_info(s["n_steps"], s["n_accepted"], int(s["n_f_evals"].max()))
            info["failed"] = int((sol.status != 0).sum())
            return sol.ys, info

        if name == "tode":
            adj = build(False)
            return Method(name, batch, lambda: adj.solve(problem), stats_eager)

        solve = torch.compile(build(False).solve)
        t0 = time.perf_counter()
        try:
            solve(problem)  # compiles
        except Exception as e:
            compile_info[batch] = dict(error=f"{type(e).__name__}: {e}".splitlines()[0][:300])
            raise
        compile_info[batch] = dict(first_call_s=time.perf_counter() - t0)

        def stats_compiled():
            sol = solve(problem)
            s = sol.stats
            info = _per_sample_info(s["n_steps"], s["n_accepted"], None)
            info["failed"] = int((sol.status != 0).sum())
            info["nfe_from"] = "tode"  # same algorithm; filled in from the eager run
            return sol.ys, info
        return Method(name, batch, lambda: solve(problem), stats_compiled)

    if name == "tdq-joint":
        if torchdiffeq is None:
            raise Skip("torchdiffeq is not installed")

        def stats():
            cnt = Counting(f)
            ys = torchdiffeq.odeint(cnt, y0, t, **kw)
            steps = (cnt.n - 2) // 6
            return ys.transpose(0, 1), _joint_info(steps, None, cnt.n, B)
        return Method(name, batch, lambda: torchdiffeq.odeint(f, y0, t, **kw), stats)

    if name == "fd-joint":
        if fastdiffeq is None:
            raise Skip("fastdiffeq does not import")

        def stats():
            ys = fastdiffeq.odeint(f, y0, t, **kw)
            st = fastdiffeq.last_stats()
            info = _joint_info(st.n_steps, st.n_rejected, st.nfe, B)
            info["failed"] = 0 if st.status == "success" else B
            return ys.transpose(0, 1), info
        return Method(name, batch, lambda: fastdiffeq.odeint(f, y0, t, **kw), stats)

    raise ValueError(name)


# ------------------------------------------------------------------------------------------- adjoint

class AdjointMethod:
    """fwd() -> loss (graph attached), then loss.backward(); grads land in field.mu.grad."""

    def __init__(self, name: str, batch: str, field: VdP,
                 make_fwd: Callable[[torch.nn.Module], Callable[[], torch.Tensor]]):
        self.name, self.batch, self.field = name, batch, field
        self.make_fwd = make_fwd
        self.fwd = make_fwd(field)

    def fwd_bwd(self) -> Tuple[float, float, float]:
        """(forward wall s, backward wall s, thread CPU s of both)."""
        self.field.mu.grad = None
        c0, t0 = time.thread_time(), time.perf_counter()
        loss = self.fwd()
        t1 = time.perf_counter()
        loss.backward()
        t2, c1 = time.perf_counter(), time.thread_time()
        return t1 - t0, t2 - t1, c1 - c0

    def stats(self) -> Dict[str, Any]:
        """Untimed run with a counting field: NFE forward / backward, the gradient, and per-sample steps."""
        cnt = Counting(self.field)
        fwd = self.make_fwd(cnt)
        self.field.mu.grad = None
        loss = fwd()
        n_fwd = cnt.n
        loss.backward()
        info = dict(nfe_fwd=n_fwd, nfe_bwd=cnt.n - n_fwd, grad=self.field.mu.grad.detach().clone())
        if self.name in FD_IVP_GRADIENTS and fastdiffeq is not None and hasattr(fastdiffeq, "last_backward_stats"):
            bst = fastdiffeq.last_backward_stats()
            if bst is not None:
                info["bwd_stats"] = repr(bst)
        return info


def adjoint_method(name: str, batch: str, mu: torch.Tensor, y0: torch.Tensor, t: torch.Tensor) -> AdjointMethod:
    B = y0.shape[0]
    f = VdP(mu)
    kw = dict(rtol=TOL, atol=TOL, method="dopri5")

    if name in FD_IVP_GRADIENTS:
        if fastdiffeq is None:
            raise Skip("fastdiffeq does not import")
        if not hasattr(fastdiffeq, "solve_ivp"):
            raise Skip("fastdiffeq.solve_ivp is not available yet in the installed fastdiffeq")

        def make(g):
            return lambda: fastdiffeq.solve_ivp(g, y0, t, **FD_IVP_GRADIENTS[name], **kw).ys.square().sum()
        m = AdjointMethod(name, batch, f, make)
        try:  # a clean skip if the per-sample adjoint is not implemented yet
            m.fwd_bwd()
        except NotImplementedError as e:
            raise Skip(f"solve_ivp(gradient='adjoint') raises NotImplementedError: {e}")
        except (ValueError, TypeError) as e:
            if "adjoint" in str(e).lower():
                raise Skip(f"solve_ivp(gradient='adjoint') is not supported yet: {type(e).__name__}: {e}")
            raise
        return m

    if name in ("tode-backsolve", "tode-autodiff"):
        if torchode is None:
            raise Skip("torchode is not installed")
        problem = torchode.InitialValueProblem(y0=y0, t_eval=t.unsqueeze(0).expand(B, -1))
        idx = torch.arange(B)

        def make(g):
            if name == "tode-backsolve":
                term = torchode.ODETerm(g, with_stats=False, with_args=True)
                step = torchode.Dopri5(term=term)
                ctrl = torchode.IntegralController(atol=TOL, rtol=TOL, term=term)
                adj = torchode.BacksolveAdjoint(term, step, ctrl, vmap_args_dims=0)
                return lambda: adj.solve(problem, args=idx).ys.square().sum()
            term = torchode.ODETerm(g, with_stats=False)
            step = torchode.Dopri5(term=term)
            ctrl = torchode.IntegralController(atol=TOL, rtol=TOL, term=term)
            adj = torchode.AutoDiffAdjoint(step, ctrl)
            return lambda: adj.solve(problem).ys.square().sum()
        return AdjointMethod(name, batch, f, make)

    if name == "tdq-adjoint":
        if torchdiffeq is None:
            raise Skip("torchdiffeq is not installed")

        def make(g):
            return lambda: torchdiffeq.odeint_adjoint(g, y0, t, adjoint_params=(f.mu,), **kw).square().sum()
        return AdjointMethod(name, batch, f, make)

    if name == "fd-adjoint":
        if fastdiffeq is None:
            raise Skip("fastdiffeq does not import")

        def make(g):
            return lambda: fastdiffeq.odeint_adjoint(g, y0, t, adjoint_params=(f.mu,), **kw).square().sum()
        return AdjointMethod(name, batch, f, make)

    raise ValueError(name)


def reference_grad(mu: torch.Tensor, y0: torch.Tensor, t: torch.Tensor) -> Tuple[Optional[torch.Tensor], str]:
    f = VdP(mu)
    kw = dict(rtol=REF_TOL, atol=REF_TOL, method="dopri5")
    errors = []
    if fastdiffeq is not None:
        try:
            fastdiffeq.odeint(f, y0, t, gradient="checkpoint", **kw).square().sum().backward()
            return f.mu.grad.detach().clone(), "fastdiffeq.odeint checkpoint, rtol=atol=1e-10"
        except Exception as e:
            errors.append(f"fastdiffeq: {type(e).__name__}: {e}")
            f.mu.grad = None
    if torchdiffeq is not None:
        try:
            torchdiffeq.odeint(f, y0, t, **kw).square().sum().backward()
            return f.mu.grad.detach().clone(), "torchdiffeq.odeint backprop, rtol=atol=1e-10"
        except Exception as e:
            errors.append(f"torchdiffeq: {type(e).__name__}: {e}")
    return None, "; ".join(errors) or "no library"


# ------------------------------------------------------------------------------------------ benchmark

def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def run_benchmark(args: argparse.Namespace) -> Dict[str, Any]:
    B = args.batch
    t = torch.linspace(0.0, args.t_end, N_OUT, dtype=DTYPE)
    y0 = torch.tensor([2.0, 0.0], dtype=DTYPE).expand(B, 2).clone()
    batches = make_batches(B)
    fwd_names = [m for m in FORWARD_METHODS if m in args.methods]
    if args.no_compile and "tode-compiled" in fwd_names:
        fwd_names.remove("tode-compiled")
    adj_names = [] if args.no_adjoint else [m for m in ADJOINT_METHODS if m in args.methods]
    idx = check_indices(B)
    res: Dict[str, Any] = dict(B=B, t_end=args.t_end, n_out=N_OUT, rtol=TOL, atol=TOL, dtype=str(DTYPE),
                               check_samples=idx, forward={}, adjoint={}, compile={}, notes=[])

    # Build, warm up and collect stats (untimed).
    fwd: List[Method] = []
    refs: Dict[str, Optional[torch.Tensor]] = {}
    with torch.no_grad():
        for bname, mu in batches.items():
            try:
                refs[bname] = scipy_reference(mu, y0, t, idx)
            except Exception as e:
                refs[bname] = None
                res["notes"].append(f"scipy reference ({bname}): {_err(e)}")
            for name in fwd_names:
                key = f"{bname}/{name}"
                t0 = time.perf_counter()
                try:
                    m = forward_method(name, bname, mu, y0, t, res["compile"])
                    ys, info = m.stats()
                    m.run()  # one more warm-up call
                except Skip as e:
                    res["forward"][key] = dict(batch=bname, method=name, skipped=str(e))
                    print(f"# {key}: skipped: {e}", file=sys.stderr)
                    continue
                except Exception as e:
                    res["forward"][key] = dict(batch=bname, method=name, error=_err(e))
                    print(f"# {key}: FAILED: {_err(e)}", file=sys.stderr)
                    traceback.print_exc(limit=3)
                    continue
                ref = refs[bname]
                if ref is not None:
                    d = (ys[idx].to(DTYPE) - ref).abs()
                    info["err_final"] = float(d[:, -1].max())
                    info["err_all"] = float(d.max())
                info.update(batch=bname, method=name, wall=[], cpu=[])
                res["forward"][key] = info
                fwd.append(m)
                print(f"# {key}: ready ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            # torchode compiled takes torchode eager's NFE (same algorithm), and the check that the steps agree
            c, e = res["forward"].get(f"{bname}/tode-compiled"), res["forward"].get(f"{bname}/tode")
            if c and e and "steps_total" in c and "steps_total" in e:
                c["nfe"] = e["nfe"]
                if c["steps_total"] != e["steps_total"]:
                    res["notes"].append(f"{bname}: torchode compiled took {c['steps_total']} steps, eager "
                                        f"{e['steps_total']}")

    adj: List[AdjointMethod] = []
    grad_refs: Dict[str, Optional[torch.Tensor]] = {}
    for bname, mu in batches.items():
        if not adj_names:
            break
        g, how = reference_grad(mu, y0, t)
        grad_refs[bname] = g
        res.setdefault("grad_reference", {})[bname] = how
        for name in adj_names:
            key = f"{bname}/{name}"
            t0 = time.perf_counter()
            try:
                m = adjoint_method(name, bname, mu, y0, t)
                t1 = time.perf_counter()
                info = m.stats()
                if time.perf_counter() - t1 < 3.0:  # the stats run warms up the slow ones well enough
                    m.fwd_bwd()  # warm-up
            except Skip as e:
                res["adjoint"][key] = dict(batch=bname, method=name, skipped=str(e))
                print(f"# {key}: skipped: {e}", file=sys.stderr)
                continue
            except Exception as e:
                res["adjoint"][key] = dict(batch=bname, method=name, error=_err(e))
                print(f"# {key}: FAILED: {_err(e)}", file=sys.stderr)
                traceback.print_exc(limit=3)
                continue
            grad = info.pop("grad")
            if g is not None:
                info["grad_rel_err"] = float((grad - g).abs().max() / g.abs().max())
            info.update(batch=bname, method=name, fwd=[], bwd=[], cpu=[])
            res["adjoint"][key] = info
            adj.append(m)
            print(f"# {key}: ready ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)

    # Timed rounds, round-robin.
    n_adj_rounds = min(args.adjoint_repeats, args.repeats) if adj else 0
    for r in range(max(args.repeats, n_adj_rounds)):
        t_round = time.perf_counter()
        with torch.no_grad():
            live = [m for m in fwd if "error" not in res["forward"][f"{m.batch}/{m.name}"]]
            k = r % max(1, len(live))
            for m in live[k:] + live[:k]:
                rec = res["forward"][f"{m.batch}/{m.name}"]
                try:
                    w, c = time_call2(m.run)
                except Exception as e:
                    rec["error"] = f"in round {r}: {_err(e)}"
                    continue
                rec["wall"].append(w)
                rec["cpu"].append(c)
        if r < n_adj_rounds:
            live_a = [m for m in adj if "error" not in res["adjoint"][f"{m.batch}/{m.name}"]]
            k = r % max(1, len(live_a))
            for m in live_a[k:] + live_a[:k]:
                rec = res["adjoint"][f"{m.batch}/{m.name}"]
                try:
                    a, b, c = m.fwd_bwd()
                except Exception as e:
                    rec["error"] = f"in round {r}: {_err(e)}"
                    continue
                rec["fwd"].append(a)
                rec["bwd"].append(b)
                rec["cpu"].append(c)
        print(f"# round {r + 1}: {time.perf_counter() - t_round:.1f} s", file=sys.stderr)

    for rec in res["forward"].values():
        if rec.get("wall"):
            rec["wall_ms"] = median(rec["wall"]) * 1e3
            rec["cpu_ms"] = median(rec["cpu"]) * 1e3
            rec["us_per_iter"] = rec["wall_ms"] * 1e3 / rec["iterations"]
            rec["us_per_sample_step"] = rec["wall_ms"] * 1e3 / rec["steps_total"]
    for rec in res["adjoint"].values():
        if rec.get("fwd"):
            tot = [a + b for a, b in zip(rec["fwd"], rec["bwd"])]
            rec["fwd_ms"] = median(rec["fwd"]) * 1e3
            rec["bwd_ms"] = median(rec["bwd"]) * 1e3
            rec["total_ms"] = median(tot) * 1e3
            rec["cpu_ms"] = median(rec["cpu"]) * 1e3
            rec["bwd_over_fwd"] = median([b / a for a, b in zip(rec["fwd"], rec["bwd"])])
            rec["total_over_fwd"] = median([(a + b) / a for a, b in zip(rec["fwd"], rec["bwd"])])
    res["rounds"] = dict(forward=max(args.repeats, n_adj_rounds), adjoint=n_adj_rounds)
    return res


# -------------------------------------------------------------------------------------------- report

def _f(x: Optional[float], fmt: str = "{:.1f}") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _table(header: List[str], rows: List[List[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _status(rec: Dict[str, Any]) -> Optional[str]:
    if "skipped" in rec:
        return "skipped: " + rec["skipped"]
    if "error" in rec and not rec.get("wall") and not rec.get("fwd"):
        return "FAILED: " + rec["error"]
    return None


def report(res: Dict[str, Any], machine: Dict[str, Any], markdown: bool) -> str:
    out: List[str] = []
    B = res["B"]
    out.append(f"Van der Pol, B = {B}, y0 = [2, 0], t in [0, {res['t_end']:g}], {res['n_out']} outputs, dopri5, "
               f"rtol = atol = {res['rtol']:g}, {res['dtype'].replace('torch.', '')}; batches mu2 (mu = 2) and "
               f"spread (mu = linspace(1, 25, B)). Medians of {res['rounds']['forward']} forward rounds / "
               f"{res['rounds']['adjoint']} adjoint rounds.")
    out.append(f"{machine['cpu_model']} ({machine['cpus']} CPUs), torch {machine['torch']}, {machine['threads']} "
               f"thread(s), load {machine['loadavg_1min_at_start']}→{machine.get('loadavg_1min_at_end', '?')}; "
               f"fastdiffeq {machine.get('fastdiffeq')}, torchdiffeq {machine.get('torchdiffeq')}, torchode "
               f"{machine.get('torchode')}")
    for b, c in res["compile"].items():
        if "error" in c:
            out.append(f"torch.compile(torchode solve), {b}: FAILED: {c['error']}")
        else:
            out.append(f"torch.compile(torchode solve), {b}: first call (compile + solve) {c['first_call_s']:.1f} s")

    rows, notes = [], []
    for key, r in res["forward"].items():
        st = _status(r)
        if st:
            notes.append(f"{key}: {st}")
            continue
        if "error" in r:
            notes.append(f"{key}: {r['error']}")
        per = r["method"] in PER_SAMPLE
        rows.append([r["batch"], r["method"], "per-sample" if per else "joint",
                     f"{r['steps_mean']:.1f} / {r['steps_max']}", str(r["steps_total"]),
                     _f(r.get("rejected_total"), "{:d}"), str(r["iterations"]), _f(r.get("nfe"), "{:d}"),
                     _f(r.get("wall_ms"), "{:.1f}"), _f(r.get("cpu_ms"), "{:.1f}"),
                     _f(r.get("us_per_iter"), "{:.0f}"), _f(r.get("us_per_sample_step"), "{:.2f}"),
                     _f(r.get("err_final"), "{:.1e}"), _f(r.get("err_all"), "{:.1e}"),
                     _f(r.get("failed"), "{:d}")])
    out.append("\nForward (no grad):\n")
    out.append(_table(["batch", "method", "steps", "steps/sample mean / max", "Σ steps", "Σ rejected", "loop iters",
                       "NFE", "wall ms", "CPU ms", "µs/iter", "µs/sample-step", "err y(T)", "err all t",
                       "failed"], rows, markdown))
    out.append("\nΣ steps: step attempts summed over samples (joint: B × steps); loop iters: joint = its attempts, "
               "per-sample = max over samples; µs/iter = wall / loop iters; µs/sample-step = wall / Σ steps; "
               f"err: max |y - y_scipy| over samples {res['check_samples']} (DOP853, rtol = atol = 1e-10), at "
               "T_end / over all output times; failed: samples without success status.")

    if res["adjoint"]:
        rows = []
        for key, r in res["adjoint"].items():
            st = _status(r)
            if st:
                notes.append(f"{key}: {st}")
                continue
            if "error" in r:
                notes.append(f"{key}: {r['error']}")
            rows.append([r["batch"], r["method"], _f(r.get("total_ms"), "{:.1f}"), _f(r.get("cpu_ms"), "{:.1f}"),
                         f"{_f(r.get('fwd_ms'), '{:.1f}')} / {_f(r.get('bwd_ms'), '{:.1f}')}",
                         _f(r.get("bwd_over_fwd"), "{:.2f}"), _f(r.get("total_over_fwd"), "{:.2f}"),
                         f"{r['nfe_fwd']} / {r['nfe_bwd'] if r['method'] != 'tode-autodiff' else '— (backprop)'}",
                         _f(r.get("grad_rel_err"), "{:.1e}")])
        out.append("\nForward + backward, loss = sum(ys²), d/dmu:\n")
        out.append(_table(["batch", "method", "fwd+bwd ms", "CPU ms", "fwd / bwd ms", "bwd/fwd", "(fwd+bwd)/fwd",
                           "NFE fwd / bwd", "grad rel. err"], rows, markdown))
        refs = res.get("grad_reference", {})
        ref_text = "; ".join(f"{k}: {v}" for k, v in refs.items())
        out.append(f"\ngrad rel. err = max|g - g_ref| / max|g_ref|, g_ref: {ref_text}. "
                   "Ratios: medians of the per-round ratios. tode-backsolve = torchode.BacksolveAdjoint (per-sample, "
                   "one reverse solve per output interval, f via vmap with mu[idx]); tode-autodiff = backprop through "
                   "torchode's solver (not an adjoint).")

    out.append("\nTargets (F3):")
    out.extend("  " + line for line in targets(res))
    if notes or res["notes"]:
        out.append("\nNotes:")
        out.extend("  " + n for n in notes + res["notes"])
    return "\n".join(out)


def targets(res: Dict[str, Any]) -> List[str]:
    F, A = res["forward"], res["adjoint"]
    lines = []
    ivp = F.get("spread/fd-ivp", {})
    for joint in ("fd-joint", "tdq-joint"):
        j = F.get(f"spread/{joint}", {})
        if "steps_total" in ivp and "steps_total" in j:
            ok = ivp["steps_total"] < j["steps_total"]
            lines.append(f"Σ steps, spread, fd-ivp {ivp['steps_total']} < {joint} {j['steps_total']}: "
                         f"{'met' if ok else 'NOT met'} ({ivp['steps_total'] / j['steps_total']:.2f}×)")
        elif "steps_total" in j:
            tode = F.get("spread/tode", {})
            extra = (f"; torchode per-sample takes {tode['steps_total']} "
                     f"({tode['steps_total'] / j['steps_total']:.2f}×)"
                     if "steps_total" in tode else "")
            lines.append(f"Σ steps, spread, fd-ivp < {joint} ({j['steps_total']}): fd-ivp not run{extra}")
    adj_lines = []
    for b in ("mu2", "spread"):
        i = F.get(f"{b}/fd-ivp", {})
        for peer in ("tode", "tode-compiled"):
            p = F.get(f"{b}/{peer}", {})
            if "us_per_iter" in i and "us_per_iter" in p:
                q = i["us_per_iter"] / p["us_per_iter"]
                tgt = f"{'met' if q <= 1 / 3 else 'NOT met'}" if peer == "tode" else "for reference"
                lines.append(f"µs/iter, {b}, fd-ivp / {peer}: {i['us_per_iter']:.0f} / {p['us_per_iter']:.0f} = "
                             f"{q:.2f} (target ≤ 0.33: {tgt})")
            elif peer == "tode" and "us_per_iter" in p:
                lines.append(f"µs/iter, {b}: fd-ivp not run; torchode {p['us_per_iter']:.0f} → target ≤ "
                             f"{p['us_per_iter'] / 3:.0f}")
        for name in ("fd-ivp-adjoint", "fd-ivp-interp"):
            a = A.get(f"{b}/{name}", {})
            if "bwd_over_fwd" in a:
                q = a["bwd_over_fwd"]
                adj_lines.append(f"{name}, {b}: bwd/fwd = {q:.2f}, (fwd+bwd)/fwd = {a['total_over_fwd']:.2f} "
                                 f"(target bwd ≤ 2.5 × fwd: {'met' if q <= 2.5 else 'NOT met'})")
            elif A:
                adj_lines.append(f"{name}, {b}: not run ({a.get('skipped') or a.get('error') or 'not selected'})")
    return lines + adj_lines


def cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=None, help="timed forward rounds (default 7; --quick: 2)")
    p.add_argument("--adjoint-repeats", type=int, default=None,
                   help="how many of the rounds also time the adjoints (default 3; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: B = 64, 2 rounds, 1 adjoint round")
    p.add_argument("--batch", type=int, default=None, help="batch size B (default 256; --quick: 64)")
    p.add_argument("--t-end", type=float, default=10.0, help="end time (default 10)")
    p.add_argument("--methods", default=",".join(FORWARD_METHODS + ADJOINT_METHODS), help="comma-separated subset")
    p.add_argument("--no-compile", action="store_true", help="skip torchode + torch.compile")
    p.add_argument("--no-adjoint", action="store_true", help="skip the forward + backward runs")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables (for benchmarks/RESULTS.md)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 7)
    args.adjoint_repeats = args.adjoint_repeats if args.adjoint_repeats is not None else (1 if args.quick else 3)
    args.batch = args.batch if args.batch is not None else (64 if args.quick else 256)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in FORWARD_METHODS + ADJOINT_METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {FORWARD_METHODS + ADJOINT_METHODS}")

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    machine = machine_info()
    machine["cpu_model"] = cpu_model() or machine["cpu_model"]
    machine.update(fastdiffeq=getattr(fastdiffeq, "__version__", None) if fastdiffeq else "not importable",
                   solve_ivp=bool(fastdiffeq is not None and hasattr(fastdiffeq, "solve_ivp")),
                   torchdiffeq=getattr(torchdiffeq, "__version__", None),
                   torchode=getattr(torchode, "__version__", None))
    print(f"# {machine['cpu_model']} ({machine['cpus']} CPUs), torch {machine['torch']}, {machine['threads']} "
          f"thread(s); fastdiffeq {machine['fastdiffeq']} (solve_ivp: {'yes' if machine['solve_ivp'] else 'not yet'}), "
          f"torchdiffeq {machine['torchdiffeq']}, torchode {machine['torchode']}", file=sys.stderr)
    t0 = time.perf_counter()
    res = run_benchmark(args)
    res["elapsed_s"] = time.perf_counter() - t0
    try:
        machine["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    print(report(res, machine, args.markdown))
    print(f"\n# elapsed {res['elapsed_s']:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"date": datetime.date.today().isoformat(), "argv": sys.argv, "machine": machine,
                       "results": res}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
