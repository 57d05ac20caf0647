"""A torch.compile'd vector field vs the same field eager, inside fastdiffeq.odeint (README: "torch.compile").

The small MLP problem: 2 -> 64 -> 64 -> 2 tanh MLP, batch 256, t in [0, 5], 10 outputs, dopri5,
rtol = atol = 1e-5, float32, one thread. Reports the median time of a forward solve under no_grad and of a
forward + backward (direct) solve, best of three rounds, for each field.

    python benchmarks/compile_field.py [--backend inductor] [--batch 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastdiffeq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                              torch.nn.Linear(64, 2))
    y0, t = torch.randn(args.batch, 2), torch.linspace(0, 5, 10)
    compiled_net = torch.compile(net, backend=args.backend)
    fields = {"eager": lambda t, y: net(y), f"compiled ({args.backend})": lambda t, y: compiled_net(y)}
    kw = dict(rtol=1e-5, atol=1e-5, method="dopri5")

    def forward(f):
        with torch.no_grad():
            fastdiffeq.odeint(f, y0, t, **kw)

    def forward_backward(f):
        net.zero_grad()
        fastdiffeq.odeint(f, y0, t, **kw).square().mean().backward()

    def median_ms(fn, f, n):
        for _ in range(3):
            fn(f)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn(f)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    start = time.perf_counter()
    forward(fields[f"compiled ({args.backend})"])
    forward_backward(fields[f"compiled ({args.backend})"])
    print(f"compilation (first calls): {time.perf_counter() - start:.1f} s")
    for name, fn, n in [("forward, no_grad", forward, 200), ("forward + backward (direct)", forward_backward, 100)]:
        best = {label: min(median_ms(fn, f, n) for _ in range(3)) for label, f in fields.items()}
        cells = ", ".join(f"{label} {ms:.2f} ms" for label, ms in best.items())
        print(f"{name}: {cells} (NFE {fastdiffeq.last_stats().nfe})")


if __name__ == "__main__":
    main()
