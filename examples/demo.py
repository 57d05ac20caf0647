"""Solve batches of MLP neural ODEs with fastdiffeq and torchdiffeq; compare NFE, time and answers.

Run with `make demo` (or `python examples/demo.py --help`). Writes a plot of a few trajectories to
examples/out/demo.png when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from tqdm import tqdm

import fastdiffeq

try:
    import torchdiffeq
except ImportError:  # the comparison is optional; fastdiffeq runs without it
    torchdiffeq = None


def make_field(dim: int, hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(dim, hidden), torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
        torch.nn.Linear(hidden, dim),
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=8, help="how many random MLP fields to solve")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--t1", type=float, default=5.0)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "demo.png"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0: torch's default); these small fields are fastest on one, and "
                             "extra threads spin against each other on a busy machine")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    t = torch.linspace(0.0, args.t1, 50)
    rows = []
    first = None
    with torch.no_grad():
        # Warm-up: the first call of each library pays one-off costs (allocator, thread pool).
        warm = make_field(2, args.hidden, 0)
        fastdiffeq.odeint(lambda tt, y: warm(y), torch.zeros(args.batch, 2), t[:2])
        if torchdiffeq is not None:
            torchdiffeq.odeint(lambda tt, y: warm(y), torch.zeros(args.batch, 2), t[:2])
        for seed in tqdm(range(args.models), desc="neural ODEs", unit="model"):
            field = make_field(2, args.hidden, seed)
            y0 = torch.randn(args.batch, 2, generator=torch.Generator().manual_seed(1000 + seed))
            ys, t_fast = timed(lambda: fastdiffeq.odeint(lambda tt, y: field(y), y0, t, rtol=args.tol, atol=args.tol))
            nfe_fast = fastdiffeq.last_stats().nfe
            row = {"seed": seed, "nfe_fast": nfe_fast, "ms_fast": 1e3 * t_fast}
            if torchdiffeq is not None:
                calls = [0]

                def counted(tt, y):
                    calls[0] += 1
                    return field(y)

                ref, t_ref = timed(lambda: torchdiffeq.odeint(counted, y0, t, rtol=args.tol, atol=args.tol))
                row.update(nfe_ref=calls[0], ms_ref=1e3 * t_ref, max_diff=(ys - ref).abs().max().item())
            rows.append(row)
            if first is None:
                first = ys

    print(f"\n{args.models} MLP fields 2->{args.hidden}->{args.hidden}->2 (tanh), batch {args.batch}, "
          f"t in [0, {args.t1}], rtol=atol={args.tol}, dopri5, float32, {torch.get_num_threads()} threads")
    header = f"{'seed':>4} {'NFE fast':>9} {'ms fast':>9}"
    if torchdiffeq is not None:
        header += f" {'NFE tdq':>8} {'ms tdq':>9} {'speed-up':>9} {'max |diff|':>11}"
    print(header)
    for r in rows:
        line = f"{r['seed']:>4} {r['nfe_fast']:>9} {r['ms_fast']:>9.1f}"
        if torchdiffeq is not None:
            line += (f" {r['nfe_ref']:>8} {r['ms_ref']:>9.1f} {r['ms_ref'] / r['ms_fast']:>8.2f}x"
                     f" {r['max_diff']:>11.2e}")
        print(line)
    if torchdiffeq is not None:
        speedup = statistics.median(r["ms_ref"] / r["ms_fast"] for r in rows)
        same = sum(abs(r["nfe_fast"] - r["nfe_ref"]) <= 2 for r in rows)
        print(f"median speed-up over torchdiffeq: {speedup:.2f}x; same NFE (within 2) on {same}/{len(rows)} fields; "
              f"largest difference {max(r['max_diff'] for r in rows):.2e} (tolerance {args.tol})")
    else:
        print("torchdiffeq is not installed: install it to compare (pip install torchdiffeq)")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5))
    for i in range(min(32, args.batch)):
        ax.plot(first[:, i, 0], first[:, i, 1], lw=0.8)
    ax.scatter(first[0, :32, 0], first[0, :32, 1], s=8, c="k", label="y0")
    ax.set_title("fastdiffeq: trajectories of one MLP neural ODE")
    ax.legend()
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
