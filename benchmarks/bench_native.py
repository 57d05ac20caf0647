"""Native MLP fields (fastdiffeq.nn.MLP evaluated in C++) vs the same module through Python vs torchdiffeq.

The problems of bench_forward.py: dim -> width -> width -> dim tanh MLP, t in [0, 5], 10 outputs, dopri5,
rtol = atol = 1e-5, float32; small = 2-64-64-2 at batch 256, large = 32-256-256-32 at batch 512. One thread;
the variants interleaved round by round; medians of this thread's CPU time (robust to other processes on a
shared machine). "floor" = NFE x one native evaluation (timed alone): the cost with zero solver overhead.

    python benchmarks/bench_native.py [--reps 9]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, markdown_table, median, time_call2  # noqa: E402

import fastdiffeq  # noqa: E402
from fastdiffeq.nn import MLP  # noqa: E402

try:
    import torchdiffeq
except ImportError:  # pragma: no cover
    torchdiffeq = None

PROBLEMS = {"small": (2, 64, 256), "large": (32, 256, 512)}
TOL = dict(rtol=1e-5, atol=1e-5)


def variants(m: MLP, y0: torch.Tensor, t: torch.Tensor):
    params = list(m.parameters())
    py = lambda tt, y: m(y)  # noqa: E731  the same module, called from Python each evaluation

    def fb(solve):
        def run():
            m.zero_grad(set_to_none=True)
            solve().square().mean().backward()
        return run

    def nograd(solve):
        def run():
            with torch.no_grad():
                solve()
        return run

    out = {
        ("forward", "fastdiffeq native"): nograd(lambda: fastdiffeq.odeint(m, y0, t, **TOL)),
        ("forward", "fastdiffeq nn.Module"): nograd(lambda: fastdiffeq.odeint(py, y0, t, **TOL)),
    }
    for mode in ("direct", "checkpoint"):
        out[(f"fwd+bwd {mode}", "fastdiffeq native")] = fb(lambda mode=mode: fastdiffeq.odeint(
            m, y0, t, gradient=mode, **TOL))
        out[(f"fwd+bwd {mode}", "fastdiffeq nn.Module")] = fb(lambda mode=mode: fastdiffeq.odeint(
            py, y0, t, gradient=mode, gradient_params=params, **TOL))
    out[("fwd+bwd adjoint", "fastdiffeq native")] = fb(lambda: fastdiffeq.odeint_adjoint(m, y0, t, **TOL))
    out[("fwd+bwd adjoint", "fastdiffeq nn.Module")] = fb(lambda: fastdiffeq.odeint_adjoint(
        py, y0, t, adjoint_params=params, **TOL))
    if torchdiffeq is not None:
        out[("forward", "torchdiffeq")] = nograd(lambda: torchdiffeq.odeint(py, y0, t, **TOL))
        out[("fwd+bwd direct", "torchdiffeq")] = fb(lambda: torchdiffeq.odeint(py, y0, t, **TOL))
        out[("fwd+bwd adjoint", "torchdiffeq")] = fb(lambda: torchdiffeq.odeint_adjoint(
            py, y0, t, adjoint_params=params, **TOL))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=9)
    args = p.parse_args()
    torch.set_num_threads(1)
    info = machine_info()
    rows = []
    for name, (dim, width, batch) in PROBLEMS.items():
        torch.manual_seed(0)
        m = MLP(dim, (width, width))
        y0 = torch.randn(batch, dim)
        t = torch.linspace(0, 5, 10)
        with torch.no_grad():
            fastdiffeq.odeint(m, y0, t, **TOL)
        nfe = fastdiffeq.last_stats().nfe
        handle = m.fastdiffeq_native_field(y0)
        t0 = torch.tensor(0.0)
        with torch.no_grad():
            eval_cpu = median([time_call2(lambda: handle(t0, y0))[1] for _ in range(200)])
        cases = variants(m, y0, t)
        times = {k: [] for k in cases}
        for rep in range(args.reps + 1):
            for k, fn in cases.items():
                cpu = time_call2(fn)[1]
                if rep:
                    times[k].append(cpu)
        for k in cases:
            mode, who = k
            ms = 1e3 * median(times[k])
            ref = 1e3 * median(times[(mode, "fastdiffeq native")])
            rows.append([name, mode, who, f"{ms:.2f}", f"{ms / ref:.2f}"])
        rows.append([name, "forward", "floor: NFE × one native eval", f"{1e3 * nfe * eval_cpu:.2f}",
                     f"{nfe * eval_cpu * 1e3 / (1e3 * median(times[('forward', 'fastdiffeq native')])):.2f}"])
        print(f"done {name} (forward NFE {nfe}, one native eval {1e6 * eval_cpu:.0f} µs)", file=sys.stderr, flush=True)
    print(f"machine: {info}; median of {args.reps} rounds, this thread's CPU time")
    print(markdown_table(["problem", "mode", "solver / field", "ms", "× native"], rows))


if __name__ == "__main__":
    main()
