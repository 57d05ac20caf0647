"""Forward + backward of an MLP neural ODE: fastdiffeq vs torchdiffeq vs diffrax, in one run (issue F2).

Every method integrates the same tanh MLP field (time ignored) from the same y0 over t in [0, 5] with
10 output times, dopri5, rtol = atol = 1e-5, float32, and differentiates

    loss = mean(ys ** 2)            (ys: all outputs, the row at t0 included)

w.r.t. the MLP's parameters. The JAX model gets copies of the torch weights, so every method solves the
same problem. Methods:

    fd-direct          fastdiffeq.odeint(..., gradient="direct")       backprop through the solver's ops
    fd-checkpoint      fastdiffeq.odeint(..., gradient="checkpoint")   replay of the accepted steps
    fd-adjoint         fastdiffeq.odeint_adjoint (default norm)
    fd-adjoint-semi    fastdiffeq.odeint_adjoint(adjoint_options=dict(norm="seminorm"))
    fd-adjoint-interp  fastdiffeq.odeint_adjoint(adjoint_options=dict(trajectory="interpolated"))
    fdn-*              fd-direct / fd-checkpoint / fd-adjoint / fd-adjoint-semi with the field as a
                       fastdiffeq.nn.MLP sharing the same parameter tensors: evaluated natively in C++ (F7)
    tdq-direct         torchdiffeq.odeint + loss.backward()
    tdq-adjoint        torchdiffeq.odeint_adjoint (default norm)          <- the reference of the ratios
    tdq-adjoint-semi   torchdiffeq.odeint_adjoint(adjoint_options=dict(norm="seminorm"))
    dfx-recursive      diffrax Dopri5 + PIDController(pcoeff=0, icoeff=1, error_order=5) +
                       SaveAt(ts) + RecursiveCheckpointAdjoint(), jax.jit(value_and_grad)
    dfx-backsolve      ... + BacksolveAdjoint() (default norm: rms over the whole augmented state)
    dfx-backsolve-semi ... + BacksolveAdjoint(stepsize_controller=PIDController(..., norm=adjoint_rms_seminorm))

error_order=5 makes diffrax's step-size update use torchdiffeq's exponent 1/5 (diffrax's default for
Dopri5 is 1/6); its initial-step guess then uses 1/5 where torchdiffeq uses 1/6, so diffrax's step count
differs slightly. diffrax's compile time (jit lower + compile) is measured once and reported separately.

One thread: torch.set_num_threads(1) / set_num_interop_threads(1); XLA_FLAGS gets
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` before jax is imported. Those flags
alone do not keep XLA:CPU on one core (its runtime still spreads a jitted call over several pool threads),
so by default the whole process is pinned to one CPU with os.sched_setaffinity (the equivalent of
``taskset -c N``; ``--cpu N`` picks the CPU, ``--cpu -1`` disables pinning). Every method runs under the
same pinning.

Timing: per repeat, every method runs once, round-robin (drift hits all alike), after a warm-up round.
Reported: median wall ms of forward + backward (torch: forward and backward are also timed separately),
median process CPU ms (robust against other processes taking the core), forward NFE, backward NFE and
the ratio of the median wall time to tdq-adjoint's.

NFE: fastdiffeq's from last_stats() / last_backward_stats(); torchdiffeq's from a counting wrapper in an
untimed run (evaluations before loss.backward() are the forward's, the rest the backward's); diffrax's
from a counting jax.debug.callback in an untimed run of a separately compiled copy (forward-only count vs
forward + backward count), next to diffrax's own sol.stats step counts. Direct backprop has no backward
solve: its backward NFE is "—".

Field floor (torch methods): the CPU time of one graph-free field call (t_f) and of one VJP as the adjoint
needs it (forward with graph + autograd.grad w.r.t. y and the parameters: t_vjp) are measured in the same
rounds; floor = forward NFE x t_f + backward NFE x t_vjp (direct: NFE x t_vjp), reported with CPU ms / floor.

Forward only: the same problem solved without a gradient, fd / fdn / tdq under torch.no_grad() and diffrax's
jitted solve (no value_and_grad), timed round-robin in their own rounds after the gradient rounds.

Gradient check: every method's parameter gradient is compared with a float64 reference (fastdiffeq,
checkpoint mode, rtol = atol = 1e-10): rel. err = max|g - g_ref| / max|g_ref| over all parameters. Also
printed: the same measure between every pair of methods.

Usage:
    python benchmarks/bench_gradients.py [--repeats 7] [--problems small,large] [--json out.json]
                                         [--methods fd-adjoint,...] [--cpu N] [--loss mean|sum]
                                         [--loop METHOD --loop-n N]
Problems small-x3 / large-x3 (parameters x3: harder fields, several times more steps) and --loss sum
(dL/dy ~ 1 instead of 1/N) are diagnostics, not run by default. ``--loop METHOD`` only runs METHOD's
forward + backward N times (for py-spy), no table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time

import numpy as np
from typing import Any, Callable, Dict, List, Optional, Tuple


def _pin(cpu: int) -> Optional[int]:
    if cpu < 0 or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if cpu not in allowed:
        cpu = allowed[-1]
    os.sched_setaffinity(0, {cpu})
    return cpu


def _early_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats of the small problem (large: about half)")
    ap.add_argument("--large-repeats", type=int, default=None, help="timed repeats of the large problem")
    ap.add_argument("--problems", default="small,large")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    ap.add_argument("--json", default=None, help="write the results to this path")
    ap.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU (-1: no pinning; "
                                                          "default: the last allowed CPU)")
    ap.add_argument("--no-jax", action="store_true", help="skip diffrax")
    ap.add_argument("--no-ref", action="store_true", help="skip the float64 reference gradient")
    ap.add_argument("--loss", choices=("mean", "sum"), default="mean",
                    help="mean (the issue's) or sum of the squared outputs (a diagnostic: dL/dy ~ 1 instead of 1/N)")
    ap.add_argument("--loop", default=None, help="only run this method's forward+backward --loop-n times")
    ap.add_argument("--loop-n", type=int, default=20)
    return ap.parse_args()


ARGS = _early_args()
PINNED = _pin(ARGS.cpu if ARGS.cpu is not None else sorted(os.sched_getaffinity(0))[-1]
              if hasattr(os, "sched_getaffinity") else -1)
_XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _XLA_ONE_THREAD).strip()

import torch  # noqa: E402

torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import MLPField, machine_info, markdown_table, median  # noqa: E402

import fastdiffeq  # noqa: E402
import torchdiffeq  # noqa: E402

jax = jnp = diffrax = None
if not ARGS.no_jax:
    try:
        import jax  # noqa: E402
        import jax.numpy as jnp  # noqa: E402
        import diffrax  # noqa: E402
        jax.config.update("jax_enable_x64", False)
    except ImportError:
        jax = None

# The x3 variants (not run by default) multiply every default-initialised parameter by 3 (as in
# bench_forward.py): a harder field that needs several times more steps, closer to a trained model.
PROBLEMS: Dict[str, Dict[str, Any]] = {
    "small": dict(dim=2, width=64, batch=256, gain=1.0),
    "large": dict(dim=32, width=256, batch=512, gain=1.0),
    "small-x3": dict(dim=2, width=64, batch=256, gain=3.0),
    "large-x3": dict(dim=32, width=256, batch=512, gain=3.0),
}
T_END, N_OUT, TOL, REF_TOL = 5.0, 10, 1e-5, 1e-10
FIELD_CALLS_PER_ROUND = 5
TORCH_METHODS = ["fd-direct", "fd-checkpoint", "fd-adjoint", "fd-adjoint-semi", "fd-adjoint-interp",
                 "fdn-direct", "fdn-checkpoint", "fdn-adjoint", "fdn-adjoint-semi",
                 "tdq-direct", "tdq-adjoint", "tdq-adjoint-semi"]
JAX_METHODS = ["dfx-recursive", "dfx-backsolve", "dfx-backsolve-semi"]
REFERENCE = "tdq-adjoint"


class CountingField(torch.nn.Module):
    """Wraps a field (as a submodule, so .parameters() are the same tensors) and counts its calls."""

    def __init__(self, f: torch.nn.Module):
        super().__init__()
        self.f, self.n = f, 0

    def forward(self, t, y):
        self.n += 1
        return self.f(t, y)


# ------------------------------------------------------------------------------------------ torch side

_NATIVE_TWINS: Dict[int, torch.nn.Module] = {}


def native_twin(f: torch.nn.Module) -> torch.nn.Module:
    """fastdiffeq.nn.MLP holding f's own parameter tensors (same weights, gradients land in the same .grad)."""
    base = f.f if isinstance(f, CountingField) else f
    twin = _NATIVE_TWINS.get(id(base))
    if twin is None:
        lins = (base.net[0], base.net[2], base.net[4])
        twin = fastdiffeq.nn.MLP(lins[0].in_features, (lins[0].out_features, lins[1].out_features),
                                 activation="tanh")
        for layer, lin in zip(twin.layers, lins):
            layer.weight, layer.bias = lin.weight, lin.bias
        _NATIVE_TWINS[id(base)] = twin
    return twin


def reduce_loss(sq: torch.Tensor) -> torch.Tensor:
    return sq.mean() if ARGS.loss == "mean" else sq.sum()


def torch_solve(method: str, f: torch.nn.Module, y0: torch.Tensor, t: torch.Tensor,
                tol: float = TOL) -> torch.Tensor:
    kw = dict(rtol=tol, atol=tol, method="dopri5")
    if method.startswith("fdn-"):
        f, method = native_twin(f), "fd-" + method[4:]
    params = tuple(f.parameters())
    if method == "fd-direct":
        return fastdiffeq.odeint(f, y0, t, gradient="direct", **kw)
    if method == "fd-checkpoint":
        return fastdiffeq.odeint(f, y0, t, gradient="checkpoint", **kw)
    if method == "fd-adjoint":
        return fastdiffeq.odeint_adjoint(f, y0, t, adjoint_params=params, **kw)
    if method == "fd-adjoint-semi":
        return fastdiffeq.odeint_adjoint(f, y0, t, adjoint_params=params,
                                         adjoint_options=dict(norm="seminorm"), **kw)
    if method == "fd-adjoint-interp":
        return fastdiffeq.odeint_adjoint(f, y0, t, adjoint_params=params,
                                         adjoint_options=dict(trajectory="interpolated"), **kw)
    if method == "tdq-direct":
        return torchdiffeq.odeint(f, y0, t, **kw)
    if method == "tdq-adjoint":
        return torchdiffeq.odeint_adjoint(f, y0, t, adjoint_params=params, **kw)
    if method == "tdq-adjoint-semi":
        return torchdiffeq.odeint_adjoint(f, y0, t, adjoint_params=params,
                                          adjoint_options=dict(norm="seminorm"), **kw)
    raise ValueError(method)


def torch_fwd_bwd(method: str, f: torch.nn.Module, y0: torch.Tensor, t: torch.Tensor,
                  tol: float = TOL) -> Tuple[float, float]:
    """One forward + backward; returns (forward wall s, backward wall s). Gradients land in p.grad."""
    for p in f.parameters():
        p.grad = None
    t0 = time.perf_counter()
    ys = torch_solve(method, f, y0, t, tol)
    loss = reduce_loss(ys.square())
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def torch_grad(f: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).double() for p in f.parameters()])


def torch_counts(method: str, f: torch.nn.Module, y0: torch.Tensor, t: torch.Tensor) -> Dict[str, Any]:
    """Untimed run: forward / backward NFE, step counts, the gradient."""
    for p in f.parameters():
        p.grad = None
    cf = CountingField(f)
    ys = torch_solve(method, cf, y0, t)
    n_fwd = cf.n
    fst = fastdiffeq.last_stats() if method.startswith("fd") else None
    reduce_loss(ys.square()).backward()
    n_bwd = cf.n - n_fwd
    if method.startswith("fdn-"):  # evaluated in C++: the solver's own counts
        assert fst.field == "native", fst
        n_fwd = fst.nfe
        n_bwd = fastdiffeq.last_backward_stats().nfe if "direct" not in method else 0
    out: Dict[str, Any] = dict(nfe_fwd=n_fwd, nfe_bwd=n_bwd if "direct" not in method else None,
                               grad=torch_grad(f))
    if fst is not None:
        assert fst.nfe == n_fwd, (method, fst.nfe, n_fwd)
        out.update(n_accepted=fst.n_accepted, n_rejected=fst.n_rejected)
        if "direct" not in method:
            bst = fastdiffeq.last_backward_stats()
            out.update(nfe_bwd_reported=bst.nfe, bwd_n_accepted=bst.n_accepted, bwd_n_rejected=bst.n_rejected)
    return out


def reference_grad(f: torch.nn.Module, y0: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, int]:
    f64 = MLPField(f.net[0].in_features, f.net[0].out_features).double()
    f64.load_state_dict({k: v.double() for k, v in f.state_dict().items()})
    torch_fwd_bwd("fd-checkpoint", f64, y0.double(), t.double(), tol=REF_TOL)
    return torch_grad(f64), fastdiffeq.last_stats().nfe


# -------------------------------------------------------------------------------------------- jax side

def jax_setup(f: torch.nn.Module, y0: torch.Tensor, t: torch.Tensor) -> Dict[str, Any]:
    """Copies of the weights, y0 and t as JAX arrays and the loss builders of the diffrax methods."""
    layers = [m for m in f.net if isinstance(m, torch.nn.Linear)]
    params = [(jnp.asarray(m.weight.detach().numpy()), jnp.asarray(m.bias.detach().numpy())) for m in layers]
    jy0 = jnp.asarray(y0.numpy())
    jts = jnp.asarray(t.numpy())

    def mlp(args, y):
        n = len(args)
        for i, (w, b) in enumerate(args):
            y = y @ w.T + b
            if i < n - 1:
                y = jnp.tanh(y)
        return y

    def controller(norm=None):
        kw = dict(norm=norm) if norm is not None else {}
        return diffrax.PIDController(rtol=TOL, atol=TOL, pcoeff=0.0, icoeff=1.0, error_order=5, **kw)

    adjoints = {
        "dfx-recursive": lambda: diffrax.RecursiveCheckpointAdjoint(),
        "dfx-backsolve": lambda: diffrax.BacksolveAdjoint(),
        "dfx-backsolve-semi": lambda: diffrax.BacksolveAdjoint(
            stepsize_controller=controller(diffrax.adjoint_rms_seminorm)),
    }

    def make_loss(method: str, counter: Optional[Callable[[], None]] = None):
        def vf(tt, y, args):
            if counter is not None:
                jax.debug.callback(counter)
            return mlp(args, y)

        term = diffrax.ODETerm(vf)

        def loss(args):
            sol = diffrax.diffeqsolve(term, diffrax.Dopri5(), t0=jts[0], t1=jts[-1], dt0=None, y0=jy0, args=args,
                                      saveat=diffrax.SaveAt(ts=jts), stepsize_controller=controller(),
                                      adjoint=adjoints[method](), max_steps=4096)
            stats = {k: sol.stats[k] for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")}
            sq = sol.ys ** 2
            return (jnp.mean(sq) if ARGS.loss == "mean" else jnp.sum(sq)), stats

        return loss

    return dict(params=params, make_loss=make_loss)


def jax_compile(js: Dict[str, Any], method: str, counter=None):
    fn = jax.jit(jax.value_and_grad(js["make_loss"](method, counter), has_aux=True))
    t0 = time.perf_counter()
    compiled = fn.lower(js["params"]).compile()
    return compiled, time.perf_counter() - t0


def jax_flat_grad(grads) -> torch.Tensor:
    return torch.cat([torch.from_numpy(np.array(x)).reshape(-1).double()
                      for wb in grads for x in wb])


def jax_counts(js: Dict[str, Any], method: str) -> Dict[str, Any]:
    """Untimed: diffrax's step stats, and NFE from a counting callback (forward-only vs forward + backward)."""
    count = [0]

    def counter():
        count[0] += 1

    loss_c = js["make_loss"](method, counter)
    fwd = jax.jit(loss_c)
    (_, stats) = fwd(js["params"])
    jax.block_until_ready(stats)
    jax.effects_barrier()
    n_fwd = count[0]
    count[0] = 0
    vg = jax.jit(jax.value_and_grad(loss_c, has_aux=True))
    (_, stats2), grads = vg(js["params"])
    jax.block_until_ready(grads)
    jax.effects_barrier()
    n_total = count[0]
    return dict(nfe_fwd=n_fwd, nfe_bwd=n_total - n_fwd, n_steps=int(stats["num_steps"]),
                n_accepted=int(stats["num_accepted_steps"]), n_rejected=int(stats["num_rejected_steps"]),
                grad=jax_flat_grad(grads))


# ------------------------------------------------------------------------------------------- benchmark

def rel_err(g: torch.Tensor, ref: torch.Tensor) -> float:
    return float((g - ref).abs().max() / ref.abs().max())


def forward_only(f: torch.nn.Module, y0: torch.Tensor, t: torch.Tensor, repeats: int, jm: List[str],
                 js: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Forward solves alone (no gradient): fd (Python field) / fdn (native) / tdq under torch.no_grad(), diffrax's
    jitted solve without value_and_grad; round-robin after a warm-up, median wall and process CPU ms."""
    kw = dict(rtol=TOL, atol=TOL, method="dopri5")
    twin = native_twin(f)

    def nograd(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    runners: Dict[str, Callable[[], object]] = {
        "fd-forward": nograd(lambda: fastdiffeq.odeint(f, y0, t, **kw)),
        "fdn-forward": nograd(lambda: fastdiffeq.odeint(twin, y0, t, **kw)),
        "tdq-forward": nograd(lambda: torchdiffeq.odeint(f, y0, t, **kw)),
    }
    if js is not None and jm:
        fwd = jax.jit(js["make_loss"]("dfx-recursive")).lower(js["params"]).compile()
        runners["dfx-forward"] = lambda: jax.block_until_ready(fwd(js["params"]))
    for fn in runners.values():
        fn()
    walls: Dict[str, List[float]] = {m: [] for m in runners}
    cpus: Dict[str, List[float]] = {m: [] for m in runners}
    for _ in range(max(repeats, 5)):
        for m, fn in runners.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            w1, c1 = time.perf_counter(), time.process_time()
            walls[m].append(w1 - w0)
            cpus[m].append(c1 - c0)
    return {m: dict(wall_ms=1e3 * median(walls[m]), cpu_ms=1e3 * median(cpus[m])) for m in runners}


def bench_problem(name: str, spec: Dict[str, Any], repeats: int, methods: List[str], want_ref: bool) -> Dict[str, Any]:
    f = MLPField(spec["dim"], spec["width"], spec["gain"])
    y0 = torch.randn(spec["batch"], spec["dim"], generator=torch.Generator().manual_seed(1))
    t = torch.linspace(0.0, T_END, N_OUT)
    res: Dict[str, Any] = {"problem": name, **spec, "t_end": T_END, "n_out": N_OUT, "rtol": TOL, "atol": TOL,
                           "repeats": repeats, "loss": ARGS.loss, "methods": {}}
    tm = [m for m in methods if m in TORCH_METHODS]
    jm = [m for m in methods if m in JAX_METHODS and jax is not None]

    info: Dict[str, Dict[str, Any]] = {}
    grads: Dict[str, torch.Tensor] = {}
    for m in tm:
        c = torch_counts(m, f, y0, t)
        grads[m] = c.pop("grad")
        info[m] = c
    runners: Dict[str, Callable[[], Tuple[float, float]]] = {m: (lambda m=m: torch_fwd_bwd(m, f, y0, t)) for m in tm}
    if jm:
        js = jax_setup(f, y0, t)
        for m in jm:
            c = jax_counts(js, m)
            grads[m] = c.pop("grad")
            compiled, compile_s = jax_compile(js, m)
            c["compile_s"] = compile_s

            def run(compiled=compiled):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(js["params"]))
                return time.perf_counter() - t0, float("nan")

            runners[m] = run
            info[m] = c

    if want_ref:
        ref, ref_nfe = reference_grad(f, y0, t)
        res["reference"] = dict(method="fd-checkpoint float64", tol=REF_TOL, nfe_fwd=ref_nfe)
        for m in grads:
            info[m]["grad_rel_err_vs_ref"] = rel_err(grads[m], ref)
    names = list(grads)
    res["grad_pairwise_rel_diff"] = {a: {b: rel_err(grads[a], grads[b]) for b in names} for a in names}

    # Field-cost floor: CPU time of one field call without a graph (t_f) and of one vector-Jacobian
    # product as the adjoint's augmented dynamics needs it (forward with graph + autograd.grad w.r.t. y and
    # the parameters: t_vjp), timed in the same rounds as the methods.
    params = tuple(f.parameters())
    tt = torch.tensor(0.0)
    cot = torch.randn(y0.shape, generator=torch.Generator().manual_seed(2))

    def field_nograd():
        with torch.no_grad():
            f(tt, y0)

    def field_vjp():
        y = y0.detach().requires_grad_(True)
        out = f(tt, y)
        torch.autograd.grad(out, (y, *params), cot)

    def field_round(store: Dict[str, List[float]]):
        for key, fn in (("f", field_nograd), ("vjp", field_vjp)):
            for _ in range(FIELD_CALLS_PER_ROUND):
                c0 = time.thread_time()
                fn()
                store[key].append(time.thread_time() - c0)

    field_cpu: Dict[str, List[float]] = {"f": [], "vjp": []}
    field_round({"f": [], "vjp": []})

    # Warm-up round, then round-robin timed rounds.
    for m in runners:
        runners[m]()
    walls: Dict[str, List[float]] = {m: [] for m in runners}
    cpus: Dict[str, List[float]] = {m: [] for m in runners}
    fwds: Dict[str, List[float]] = {m: [] for m in runners}
    bwds: Dict[str, List[float]] = {m: [] for m in runners}
    for r in range(repeats):
        for m, fn in runners.items():
            c0, w0 = time.process_time(), time.perf_counter()
            tf, tb = fn()
            w1, c1 = time.perf_counter(), time.process_time()
            walls[m].append(w1 - w0)
            cpus[m].append(c1 - c0)
            fwds[m].append(tf)
            bwds[m].append(tb)
        field_round(field_cpu)
        print(f"  [{name}] round {r + 1}/{repeats} done (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)

    res["forward"] = forward_only(f, y0, t, repeats, jm, js if jm else None)

    t_f, t_vjp = 1e3 * median(field_cpu["f"]), 1e3 * median(field_cpu["vjp"])
    res["field_cpu_ms"] = dict(f=t_f, vjp=t_vjp)
    for m in runners:
        d = dict(info[m])
        if m in TORCH_METHODS:
            # Lower bound from the field alone: direct = one graph-recording forward + its backward per
            # evaluation (~ one VJP); checkpoint / adjoint = graph-free forward + one VJP per backward NFE.
            d["floor_ms"] = (info[m]["nfe_fwd"] * t_vjp if info[m]["nfe_bwd"] is None
                             else info[m]["nfe_fwd"] * t_f + info[m]["nfe_bwd"] * t_vjp)
        d.update(wall_ms=1e3 * median(walls[m]), cpu_ms=1e3 * median(cpus[m]),
                 wall_ms_min=1e3 * min(walls[m]), wall_ms_all=[1e3 * x for x in walls[m]])
        if m in TORCH_METHODS:
            d.update(fwd_ms=1e3 * median(fwds[m]), bwd_ms=1e3 * median(bwds[m]))
            d["cpu_over_floor"] = d["cpu_ms"] / d["floor_ms"]
        res["methods"][m] = d
    if REFERENCE in res["methods"]:
        base = res["methods"][REFERENCE]["wall_ms"]
        for d in res["methods"].values():
            d["speedup_vs_tdq_adjoint"] = base / d["wall_ms"]
    return res


def fmt(x: Optional[float], spec: str = ".1f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(res: Dict[str, Any]) -> str:
    header = ["method", "fwd+bwd ms (median)", "CPU ms", "fwd / bwd ms", "forward NFE", "backward NFE",
              "steps acc/rej", "speed-up vs tdq-adjoint", "field floor ms (CPU / floor)", "grad rel. err vs f64 ref"]
    rows = []
    for m, d in res["methods"].items():
        if m.startswith("dfx"):
            steps = f"{d['n_accepted']}/{d['n_rejected']}"
            split = f"compile {d['compile_s']:.1f} s"
        else:
            steps = f"{d['n_accepted']}/{d['n_rejected']}" if "n_accepted" in d else "—"
            split = f"{d['fwd_ms']:.0f} / {d['bwd_ms']:.0f}"
        bwd = d.get("nfe_bwd")
        rows.append([m, fmt(d["wall_ms"]), fmt(d["cpu_ms"]), split, str(d["nfe_fwd"]),
                     "—" if bwd is None else str(bwd), steps, fmt(d.get("speedup_vs_tdq_adjoint"), ".2f") + "×",
                     f"{d['floor_ms']:.0f} ({d['cpu_over_floor']:.2f})" if "floor_ms" in d else "—",
                     fmt(d.get("grad_rel_err_vs_ref"), ".1e")])
    return markdown_table(header, rows)


def targets(res: Dict[str, Any]) -> List[str]:
    M = res["methods"]
    out = []

    def ratio(a, b, key="wall_ms"):
        return M[a][key] / M[b][key] if a in M and b in M else None

    # Issue F9's targets: adjoint >= 4x torchdiffeq's (small) / >= 2.5x (large); backward NFE <= 60 % of
    # torchdiffeq's; adjoint CPU time <= 1.15 x its field floor.
    need = 4.0 if res["problem"].startswith("small") else 2.5
    for ours, theirs in (("fd-adjoint", "tdq-adjoint"), ("fd-adjoint-semi", "tdq-adjoint-semi"),
                         ("fd-adjoint-interp", "tdq-adjoint")):
        r = ratio(theirs, ours)
        if r is not None:
            out.append(f"{ours} vs {theirs}: {r:.2f}x faster (target >= {need:g}x): {'MET' if r >= need else 'MISSED'}")
        if ours in M and theirs in M and M[theirs].get("nfe_bwd"):
            share = M[ours]["nfe_bwd"] / M[theirs]["nfe_bwd"]
            out.append(f"backward NFE {ours} / {theirs}: {M[ours]['nfe_bwd']} / {M[theirs]['nfe_bwd']} = "
                       f"{100 * share:.0f}% (target <= 60%): {'MET' if share <= 0.6 else 'MISSED'}")
        if ours in M and "cpu_over_floor" in M[ours]:
            q = M[ours]["cpu_over_floor"]
            out.append(f"{ours} CPU time / field floor: {q:.2f} (target <= 1.15): {'MET' if q <= 1.15 else 'MISSED'}")
    for a, b in (("fd-adjoint", "fd-adjoint-semi"), ("tdq-adjoint", "tdq-adjoint-semi"),
                 ("dfx-backsolve", "dfx-backsolve-semi")):
        if a in M and b in M and M[a].get("nfe_bwd"):
            cut = 1 - M[b]["nfe_bwd"] / M[a]["nfe_bwd"]
            out.append(f"seminorm backward NFE {b} vs {a}: {M[b]['nfe_bwd']} vs {M[a]['nfe_bwd']} = {100 * cut:.0f}% "
                       f"lower (target >= 30%): {'MET' if cut >= 0.3 else 'MISSED'}")
    # Issue F7: the native field at <= 0.7 x diffrax's time (wall, median), forward and forward + backward.
    fw = res.get("forward", {})
    pairs = [("fdn-direct", "dfx-recursive"), ("fdn-checkpoint", "dfx-recursive"),
             ("fdn-adjoint", "dfx-backsolve"), ("fdn-adjoint-semi", "dfx-backsolve-semi")]
    for ours, theirs in pairs:
        r = ratio(ours, theirs)
        if r is not None:
            out.append(f"F7 {ours} / {theirs} time: {r:.2f}x (target <= 0.7x): {'MET' if r <= 0.7 else 'MISSED'}")
    if "fdn-forward" in fw and "dfx-forward" in fw:
        r = fw["fdn-forward"]["wall_ms"] / fw["dfx-forward"]["wall_ms"]
        out.append(f"F7 fdn-forward / dfx-forward time: {r:.2f}x (target <= 0.7x): {'MET' if r <= 0.7 else 'MISSED'}")
    r = ratio("fd-checkpoint", "fd-direct")
    if r is not None:
        out.append(f"fd-checkpoint / fd-direct time: {r:.2f}x (target <= 1.3x): {'MET' if r <= 1.3 else 'MISSED'}")
    return out


def main() -> None:
    methods = ARGS.methods.split(",") if ARGS.methods else TORCH_METHODS + JAX_METHODS
    for m in methods:
        if m not in TORCH_METHODS + JAX_METHODS:
            raise SystemExit(f"unknown method {m!r}; known: {TORCH_METHODS + JAX_METHODS}")
    problems = ARGS.problems.split(",")
    for p in problems:
        if p not in PROBLEMS:
            raise SystemExit(f"unknown problem {p!r}; known: {list(PROBLEMS)}")

    if ARGS.loop:  # profiling helper
        spec = PROBLEMS[problems[0]]
        f = MLPField(spec["dim"], spec["width"], spec["gain"])
        y0 = torch.randn(spec["batch"], spec["dim"], generator=torch.Generator().manual_seed(1))
        t = torch.linspace(0.0, T_END, N_OUT)
        torch_fwd_bwd(ARGS.loop, f, y0, t)
        t0 = time.perf_counter()
        for _ in range(ARGS.loop_n):
            torch_fwd_bwd(ARGS.loop, f, y0, t)
        print(f"{ARGS.loop} x{ARGS.loop_n}: {1e3 * (time.perf_counter() - t0) / ARGS.loop_n:.1f} ms each")
        return

    mi = machine_info()
    mi.update(pinned_cpu=PINNED, xla_flags=os.environ.get("XLA_FLAGS"), torchdiffeq=torchdiffeq.__version__,
              fastdiffeq=fastdiffeq.__version__)
    if jax is not None:
        mi.update(jax=jax.__version__, diffrax=diffrax.__version__)
    out: Dict[str, Any] = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
                           "machine": mi, "results": []}
    print(f"# machine: {json.dumps(mi)}")
    t_start = time.perf_counter()
    for p in problems:
        reps = ARGS.repeats if p.startswith("small") else (ARGS.large_repeats or max(3, (ARGS.repeats + 1) // 2))
        res = bench_problem(p, PROBLEMS[p], reps, methods, not ARGS.no_ref)
        res["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
        out["results"].append(res)
        spec = PROBLEMS[p]
        print(f"\n### {p}: {spec['dim']}->{spec['width']}->{spec['width']}->{spec['dim']} tanh MLP (gain {spec['gain']:g}), batch "
              f"{spec['batch']}, loss = {ARGS.loss} of squares, {reps} repeats (load avg after: {res['loadavg_1min_after']})\n")
        print(table(res))
        fw = res["forward"]
        print("\nforward only (no gradient):\n")
        print(markdown_table(["method", "wall ms (median)", "CPU ms", "wall ÷ dfx-forward"],
                             [[m, fmt(d["wall_ms"]), fmt(d["cpu_ms"]),
                               fmt(d["wall_ms"] / fw["dfx-forward"]["wall_ms"], ".2f") if "dfx-forward" in fw else "—"]
                              for m, d in fw.items()]))
        print(f"\nfield CPU ms: f (no graph) {res['field_cpu_ms']['f']:.3f}, VJP (forward with graph + grad w.r.t. "
              f"y and params) {res['field_cpu_ms']['vjp']:.3f}")
        if "reference" in res:
            print(f"\nreference gradient: {res['reference']}")
        names = list(res["grad_pairwise_rel_diff"])
        print("\npairwise max|g_a - g_b| / max|g_b| (row a, column b):")
        print(markdown_table(["a \\ b"] + names,
                             [[a] + [f"{res['grad_pairwise_rel_diff'][a][b]:.1e}" for b in names] for a in names]))
        print()
        for line in targets(res):
            print("- " + line)
        sys.stdout.flush()
    out["total_s"] = time.perf_counter() - t_start
    print(f"\ntotal {out['total_s']:.0f} s")
    if ARGS.json:
        with open(ARGS.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
