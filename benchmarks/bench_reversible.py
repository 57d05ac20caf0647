"""gradient='reversible' (F10) vs direct, checkpoint and adjoint: forward + backward time, peak memory and
gradient error on the MLP neural-ODE problems of bench_gradients.py.

Problems (benchmarks/common.py MLPField, torch default init): small = 2->64->64->2 tanh, batch 256; large =
32->256->256->32, batch 512. t in [0, 5], 10 output times, dopri5, rtol = atol = 1e-5, float32,
loss = mean(ys ** 2), gradients w.r.t. the MLP's parameters. One thread.

Methods: direct (backprop through the solver's ops), checkpoint (replay of the accepted steps), adjoint
(odeint_adjoint, default norm), adjoint-semi (seminorm), reversible (odeint(gradient='reversible'),
coupling 0.999).

Time: every method once per round, round-robin, after a warm-up round; median CPU ms (thread time) of
forward + backward over the rounds, and the forward / backward NFE.

Gradient error: max |g - g_ref| / max |g_ref| over all parameters, g_ref the float64 gradient of the exact
flow (checkpoint, rtol = atol = 1e-10). Each method's error is its solver's discretisation error.

Memory: peak RSS growth (ru_maxrss, each case in its own process started through a shell, as
tests/test_memory.py) of one forward + backward with N forced steps of dopri5 (first_step = min_step =
max_step = 5/N), after a 10-step warm-up (MEMORY_STEPS: direct and checkpoint at 10 000 steps would need
~15 GB (small) / ~120 GB (large), so they run shorter and their growth per step tells the rest).

Usage: python benchmarks/bench_reversible.py [--repeats 7] [--problems small,large] [--no-memory] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import MLPField, machine_info, markdown_table, median  # noqa: E402

import fastdiffeq  # noqa: E402

PROBLEMS = {
    "small": dict(dim=2, width=64, batch=256),
    "large": dict(dim=32, width=256, batch=512),
}
METHODS = ["direct", "checkpoint", "adjoint", "adjoint-semi", "reversible"]
# Forced step counts of the memory probes: the graph-keeping modes need ~1.5 MB (small) / ~12 MB (large) per
# step, so they run shorter; the large problem's 10 000-step run of the flat modes would take ~10 minutes.
MEMORY_STEPS = {
    "small": dict(graph=(100, 1000), flat=(100, 1000, 10_000)),
    "large": dict(graph=(50, 200), flat=(100, 1000)),
}
T_END, N_OUT, TOL, REF_TOL = 5.0, 10, 1e-5, 1e-10


def solve(method: str, f, y0, t, tol=TOL, options=None):
    kw = dict(rtol=tol, atol=tol, method="dopri5", options=options)
    if method == "adjoint":
        return fastdiffeq.odeint_adjoint(f, y0, t, **kw)
    if method == "adjoint-semi":
        return fastdiffeq.odeint_adjoint(f, y0, t, adjoint_options=dict(norm="seminorm"), **kw)
    return fastdiffeq.odeint(f, y0, t, gradient=method, **kw)


def fwd_bwd(method, f, y0, t):
    f.zero_grad(set_to_none=True)
    ys = solve(method, f, y0, t)
    nfe_f = fastdiffeq.last_stats().nfe
    ys.square().mean().backward()
    nfe_b = fastdiffeq.last_backward_stats().nfe if method != "direct" else 0
    return [p.grad.detach().clone() for p in f.parameters()], nfe_f, nfe_b


def problem(spec, dtype=torch.float32):
    f = MLPField(spec["dim"], spec["width"]).to(dtype)
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn(spec["batch"], spec["dim"], generator=g).to(dtype)
    t = torch.linspace(0.0, T_END, N_OUT, dtype=dtype)
    return f, y0, t


def bench_time(name, spec, repeats):
    f, y0, t = problem(spec)
    f64, y64, t64 = problem(spec, torch.float64)
    g_ref, _, _ = fwd_bwd_ref(f64, y64, t64)
    cpu = {m: [] for m in METHODS}
    info = {}
    for r in range(repeats + 1):
        for m in METHODS:
            c0 = time.thread_time()
            grads, nf, nb = fwd_bwd(m, f, y0, t)
            c1 = time.thread_time()
            if r > 0:
                cpu[m].append(1e3 * (c1 - c0))
            else:
                scale = max(g.abs().max().item() for g in g_ref)
                err = max((g.double() - gr).abs().max().item() for g, gr in zip(grads, g_ref)) / scale
                info[m] = dict(nfe_forward=nf, nfe_backward=nb, grad_error=err,
                               steps=fastdiffeq.last_stats().n_accepted)
    for m in METHODS:
        info[m]["cpu_ms"] = median(cpu[m])
    return info


def fwd_bwd_ref(f, y0, t):
    f.zero_grad(set_to_none=True)
    ys = fastdiffeq.odeint(f, y0, t, gradient="checkpoint", rtol=REF_TOL, atol=REF_TOL, method="dopri5")
    ys.square().mean().backward()
    return [p.grad.detach().clone() for p in f.parameters()], 0, 0


PROBE = r"""
import json, resource, sys, os
sys.path.insert(0, sys.argv[5])
import torch
torch.set_num_threads(1)
from bench_reversible import PROBLEMS, problem, solve
method, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
f, y0, t = problem(PROBLEMS[name])
def run(n):
    h = 5.0 / n
    ys = solve(method, f, y0, t, options=dict(first_step=h, min_step=h, max_step=h))
    ys.square().mean().backward()
    f.zero_grad(set_to_none=True)
run(10)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run(n)
print(json.dumps(dict(growth_mib=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)))
"""


def probe_memory(method, name, n):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = ["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, "-c", PROBE, method, name, str(n), "x", here]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])["growth_mib"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--problems", default="small,large")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    out = dict(machine=machine_info(), problems={})
    print(out["machine"])
    for name in args.problems.split(","):
        spec = PROBLEMS[name]
        reps = args.repeats if name == "small" else max(3, (args.repeats + 1) // 2)
        info = bench_time(name, spec, reps)
        if not args.no_memory:
            for m in METHODS:
                steps = MEMORY_STEPS[name]["flat" if m in ("adjoint", "adjoint-semi", "reversible") else "graph"]
                info[m]["memory_mib"] = {n: probe_memory(m, name, n) for n in steps}
        out["problems"][name] = info
        d = info["direct"]["cpu_ms"]
        rows = []
        for m in METHODS:
            r = info[m]
            mem = r.get("memory_mib", {})
            rows.append([m, f"{r['cpu_ms']:.1f}", f"{r['cpu_ms'] / d:.2f}", f"{r['nfe_forward']}/{r['nfe_backward']}",
                         str(r["steps"]), f"{r['grad_error']:.2e}"]
                        + ["; ".join(f"N={n}: {v:.1f}" for n, v in mem.items()) or "—"])
        print(f"\n{name}: dopri5 rtol=atol={TOL}, float32, {reps} rounds, CPU ms (one thread)")
        print(markdown_table(["method", "fwd+bwd ms", "÷ direct", "NFE f/b", "steps", "grad err",
                              "peak RSS growth, MiB (N forced steps)"], rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
