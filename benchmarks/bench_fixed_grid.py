"""Fixed-grid methods: fastdiffeq vs torchdiffeq, forward and forward+backward (direct), one thread.

Problems of bench_forward.py (small: 2-64-64-2 MLP, batch 256; large: 32-256-256-32, batch 512; float32,
t in [0, 5], 10 outputs), method rk4 with step_size 0.05 (100 steps, NFE 400). Reports medians of the
calling thread's CPU time (robust on a shared machine), NFE, and forward / (NFE x one field call).

    python benchmarks/bench_fixed_grid.py [--repeats 15] [--problems small,large] [--method rk4]
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


class Counter:
    def __init__(self, f):
        self.f, self.n = f, 0

    def __call__(self, t, y):
        self.n += 1
        return self.f(t, y)


def _cpu_ms(fn, repeats):
    fn()  # warm-up
    return 1e3 * median([time_call2(fn)[1] for _ in range(repeats)])


def bench(name, spec, method, repeats):
    torch.manual_seed(0)
    field = MLPField(spec["dim"], spec["width"])
    y0 = torch.randn(spec["batch"], spec["dim"])
    t = torch.linspace(0, T_END, N_OUT)
    opts = dict(step_size=STEP)
    row = {}
    with torch.no_grad():
        field_ms = _cpu_ms(lambda: field(t[0], y0), repeats * 10)
        for lib in (fastdiffeq, torchdiffeq):
            c = Counter(field)
            lib.odeint(c, y0, t, method=method, options=opts)
            row[f"{lib.__name__}_nfe"] = c.n
            row[f"{lib.__name__}_fwd"] = _cpu_ms(lambda: lib.odeint(field, y0, t, method=method, options=opts), repeats)
    for lib in (fastdiffeq, torchdiffeq):
        def fwd_bwd():
            y = y0.clone().requires_grad_(True)
            lib.odeint(field, y, t, method=method, options=opts).square().mean().backward()
        row[f"{lib.__name__}_fwdbwd"] = _cpu_ms(fwd_bwd, repeats)
    row["field_ms"] = field_ms
    return row


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--problems", default="small,large")
    p.add_argument("--method", default="rk4")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    m = machine_info()
    print(f"{m['cpu_model']}, torch {torch.__version__}, 1 thread; {a.method}, step_size {STEP} "
          f"({round(T_END / STEP)} steps), float32, medians of thread CPU time")
    rows = []
    for name in a.problems.split(","):
        r = bench(name, PROBLEMS[name], a.method, a.repeats)
        f, t = r["fastdiffeq_fwd"], r["torchdiffeq_fwd"]
        rows.append([name, f"{f:.2f} / {t:.2f} ({t / f:.2f}x)",
                     f"{r['fastdiffeq_fwdbwd']:.2f} / {r['torchdiffeq_fwdbwd']:.2f} "
                     f"({r['torchdiffeq_fwdbwd'] / r['fastdiffeq_fwdbwd']:.2f}x)",
                     f"{r['fastdiffeq_nfe']} / {r['torchdiffeq_nfe']}",
                     f"{f / (r['fastdiffeq_nfe'] * r['field_ms']):.2f} / {t / (r['torchdiffeq_nfe'] * r['field_ms']):.2f}"])
    print(markdown_table(["problem", "forward ms, fastdiffeq / torchdiffeq", "fwd+bwd (direct) ms",
                          "NFE", "forward ÷ (NFE × field call)"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
