"""Fixed-grid and high-order methods: fastdiffeq vs torchdiffeq, forward and forward+backward (direct), one thread.

Problems of bench_forward.py (small: 2-64-64-2 MLP, batch 256; large: 32-256-256-32, batch 512; float32,
t in [0, 5], 10 outputs). Methods (``--methods``, comma-separated):

- ``rk4``: fixed grid, step_size 0.05 (100 steps, NFE 400);
- ``dopri8``: adaptive, rtol = atol = ``--tol`` (default 1e-7); NFE is each library's own count.

Any other method name in fastdiffeq.METHODS runs adaptively at ``--tol`` as well (fixed-grid names get
step_size 0.05). The two libraries are timed interleaved (one call of each per round, the order alternating
between rounds), after one warm-up call each. Reports medians of the calling thread's CPU time (robust on a
shared machine), NFE (forward without grad; and, if different, the forward of the fwd+bwd run), forward /
(NFE x one field call), and the largest difference between the two libraries' outputs.

    python benchmarks/bench_fixed_grid.py [--repeats 15] [--problems small,large] [--methods rk4,dopri8] [--tol 1e-7]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import MLPField, machine_info, markdown_table, median, time_call2  # noqa: E402

import fastdiffeq  # noqa: E402
import torchdiffeq  # noqa: E402

PROBLEMS = {"small": dict(dim=2, width=64, batch=256), "large": dict(dim=32, width=256, batch=512)}
T_END, N_OUT, STEP = 5.0, 10, 0.05
FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")
LIBS = (fastdiffeq, torchdiffeq)


class Counter:
    def __init__(self, f):
        self.f, self.n = f, 0

    def __call__(self, t, y):
        self.n += 1
        return self.f(t, y)


def solver_kwargs(method, tol):
    """odeint keyword arguments of `method`: a fixed grid of STEP, or adaptive at rtol = atol = tol."""
    if method in FIXED:
        return dict(method=method, options=dict(step_size=STEP))
    return dict(method=method, rtol=tol, atol=tol)


def _cpu_ms(fn, repeats):
    fn()  # warm-up
    return 1e3 * median([time_call2(fn)[1] for _ in range(repeats)])


def _cpu_ms_interleaved(fns, repeats):
    """Median CPU ms of each of `fns` (a list), timed one call of each per round, order alternating."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            times[i].append(time_call2(fns[i])[1])
    return [1e3 * median(ts) for ts in times]


def bench(spec, method, tol, repeats):
    torch.manual_seed(0)
    field = MLPField(spec["dim"], spec["width"])
    y0 = torch.randn(spec["batch"], spec["dim"])
    t = torch.linspace(0, T_END, N_OUT)
    kw = solver_kwargs(method, tol)
    row = {}
    with torch.no_grad():
        field_ms = _cpu_ms(lambda: field(t[0], y0), repeats * 10)
        outs = []
        for lib in LIBS:
            c = Counter(field)
            outs.append(lib.odeint(c, y0, t, **kw))
            row[f"{lib.__name__}_nfe"] = c.n
        row["maxdiff"] = (outs[0] - outs[1]).abs().max().item()
        fwd = [lambda lib=lib: lib.odeint(field, y0, t, **kw) for lib in LIBS]
        for lib, ms in zip(LIBS, _cpu_ms_interleaved(fwd, repeats)):
            row[f"{lib.__name__}_fwd"] = ms

    def fwd_bwd(lib, f=field):
        y = y0.clone().requires_grad_(True)
        lib.odeint(f, y, t, **kw).square().mean().backward()

    for lib in LIBS:  # NFE of the differentiable forward (fastdiffeq takes another loop under grad)
        c = Counter(field)
        fwd_bwd(lib, c)
        row[f"{lib.__name__}_nfe_grad"] = c.n
    fb = [lambda lib=lib: fwd_bwd(lib) for lib in LIBS]
    for lib, ms in zip(LIBS, _cpu_ms_interleaved(fb, repeats)):
        row[f"{lib.__name__}_fwdbwd"] = ms
    row["field_ms"] = field_ms
    return row


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--problems", default="small,large")
    p.add_argument("--methods", default="rk4", help="comma-separated, e.g. rk4,dopri8")
    p.add_argument("--method", default=None, help="one method (older spelling of --methods)")
    p.add_argument("--tol", type=float, default=1e-7, help="rtol = atol of the adaptive methods")
    a = p.parse_args(argv)
    methods = [a.method] if a.method else a.methods.split(",")
    torch.set_num_threads(1)
    m = machine_info()
    print(f"{m['cpu_model']}, torch {torch.__version__}, torchdiffeq {torchdiffeq.__version__}, 1 thread, "
          f"load average (1 min) at start {m['loadavg_1min_at_start']}; float32, t in [0, {T_END}], {N_OUT} outputs; "
          f"fixed grid: step_size {STEP} ({round(T_END / STEP)} steps); adaptive: rtol = atol = {a.tol:g}; "
          f"medians of thread CPU time over {a.repeats} interleaved rounds")
    rows = []
    for method in methods:
        for name in a.problems.split(","):
            r = bench(PROBLEMS[name], method, a.tol, a.repeats)
            f, t = r["fastdiffeq_fwd"], r["torchdiffeq_fwd"]
            nfe = f"{r['fastdiffeq_nfe']} / {r['torchdiffeq_nfe']}"
            if (r["fastdiffeq_nfe_grad"], r["torchdiffeq_nfe_grad"]) != (r["fastdiffeq_nfe"], r["torchdiffeq_nfe"]):
                nfe += f" (under grad {r['fastdiffeq_nfe_grad']} / {r['torchdiffeq_nfe_grad']})"
            rows.append([method, name, f"{f:.2f} / {t:.2f} ({t / f:.2f}x)",
                         f"{r['fastdiffeq_fwdbwd']:.2f} / {r['torchdiffeq_fwdbwd']:.2f} "
                         f"({r['torchdiffeq_fwdbwd'] / r['fastdiffeq_fwdbwd']:.2f}x)",
                         nfe,
                         f"{f / (r['fastdiffeq_nfe'] * r['field_ms']):.2f} / "
                         f"{t / (r['torchdiffeq_nfe'] * r['field_ms']):.2f}",
                         f"{r['maxdiff']:.1e}"])
            print(f"  done {method} {name}", file=sys.stderr, flush=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(markdown_table(["method", "problem", "forward ms, fastdiffeq / torchdiffeq", "fwd+bwd (direct) ms",
                          "NFE fastdiffeq / torchdiffeq", "forward ÷ (NFE × field call)",
                          "max |Δy| between libraries"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
