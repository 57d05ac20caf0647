"""Native MLP fields (fastdiffeq.nn.MLP evaluated in C++) vs the same module through Python vs torchdiffeq.

The problems of bench_forward.py: dim -> width -> width -> dim tanh MLP, t in [0, 5], 10 outputs, dopri5,
rtol = atol = 1e-5, float32; small = 2-64-64-2 at batch 256, large = 32-256-256-32 at batch 512. One thread;
the variants interleaved round by round; medians of this thread's CPU time (robust to other processes on a
shared machine). Floors: "NFE x one native eval" (timed alone: the cost with zero solver overhead) and the GEMM-rate
floor = NFE x FLOPs of one evaluation (2 B sum_k in_k out_k) / the GEMM rate measured in the same run (torch.mm at
the problem's hidden x hidden shape): the cost if the evaluation were nothing but GEMMs at that rate. For the
adjoint: (forward NFE + 3 x backward NFE) x FLOPs / rate (a VJP is one forward and two GEMMs per layer back).
Also prints at::linear vs addmm vs mm at 512x256x256 float32 (which GEMM entry point is fastest in this build).

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


def adjoint_once(m: MLP, y0: torch.Tensor, t: torch.Tensor) -> None:
    """One native adjoint solve + backward (so last_backward_stats() has the backward NFE)."""
    fastdiffeq.odeint_adjoint(m, y0.clone().requires_grad_(True), t, **TOL).square().mean().backward()
    m.zero_grad(set_to_none=True)


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


def per_call_cpu(fn, calls: int = 50, samples: int = 15) -> float:
    """Median over samples of this thread's CPU seconds per call, `calls` calls per sample (short calls)."""
    for _ in range(5):
        fn()
    return median([time_call2(lambda: [fn() for _ in range(calls)])[1] / calls for _ in range(samples)])


def gemm_rate(batch: int, k: int, n: int) -> float:
    """FLOP/s of torch.mm(x [batch, k], w.t() [k, n]) into a preallocated output (the native path's GEMM)."""
    x, w, out = torch.randn(batch, k), torch.randn(n, k), torch.empty(batch, n)
    return 2 * batch * k * n / per_call_cpu(lambda: torch.mm(x, w.t(), out=out))


def gemm_entry_points() -> str:
    """F.linear vs addmm vs mm (+ bias) at 512x256x256 float32: the issue's "oneDNN linear 2.4x MKL sgemm" claim."""
    x, w, b = torch.randn(512, 256), torch.randn(256, 256), torch.randn(256)
    out = torch.empty(512, 256)
    cases = {
        "F.linear": lambda: torch.nn.functional.linear(x, w, b),
        "addmm": lambda: torch.addmm(b, x, w.t()),
        "addmm(out=)": lambda: torch.addmm(b, x, w.t(), out=out),
        "mm(out=)": lambda: torch.mm(x, w.t(), out=out),
    }
    flops = 2 * 512 * 256 * 256
    return ", ".join(f"{k} {1e6 * per_call_cpu(f, 20):.0f} µs ({flops / per_call_cpu(f, 20) / 1e9:.0f} GFLOP/s)"
                     for k, f in cases.items())


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
        adjoint_once(m, y0, t)
        bwd_nfe = fastdiffeq.last_backward_stats().nfe
        flops = 2 * batch * (dim * width + width * width + width * dim)
        rate = gemm_rate(batch, width, width)
        handle = m.fastdiffeq_native_field(y0)
        t0 = torch.tensor(0.0)
        with torch.no_grad():
            eval_cpu = per_call_cpu(lambda: handle(t0, y0))
        v0 = torch.randn_like(y0)
        vjp_cpu = per_call_cpu(lambda: handle.vjp(y0, v0))
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
        fwd = median(times[("forward", "fastdiffeq native")])
        adj = median(times[("fwd+bwd adjoint", "fastdiffeq native")])
        floors = [("forward", "floor: NFE × one native eval", nfe * eval_cpu, fwd),
                  ("forward", "floor: NFE × FLOPs ÷ GEMM rate", nfe * flops / rate, fwd),
                  ("fwd+bwd adjoint", "floor: (NFE_f + 3 NFE_b) × FLOPs ÷ GEMM rate",
                   (nfe + 3 * bwd_nfe) * flops / rate, adj)]
        for mode, who, sec, ref in floors:
            rows.append([name, mode, who, f"{1e3 * sec:.2f}", f"{sec / ref:.2f}"])
        print(f"done {name}: forward NFE {nfe}, backward NFE {bwd_nfe} (adjoint); one native eval "
              f"{1e6 * eval_cpu:.0f} µs, one VJP {1e6 * vjp_cpu:.0f} µs, {flops / 1e6:.2f} MFLOP per eval; GEMM "
              f"rate {rate / 1e9:.1f} GFLOP/s ({batch}x{width}x{width}); native forward ÷ GEMM floor "
              f"{fwd / (nfe * flops / rate):.2f}", file=sys.stderr, flush=True)
    print(f"machine: {info}; median of {args.reps} rounds, this thread's CPU time")
    print(f"GEMM entry points, 512x256x256 float32, one thread: {gemm_entry_points()}")
    print(markdown_table(["problem", "mode", "solver / field", "ms", "× native"], rows))


if __name__ == "__main__":
    main()
