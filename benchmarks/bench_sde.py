"""SDE solves: fastdiffeq vs torchsde 0.2.6, the same method on the same Brownian path (F5's benchmark).

Problem: batch 1024, state 32; drift an MLP 32 -> 64 -> 32 (tanh), diagonal diffusion sigmoid(Linear(32, 32));
[0, 1] with dt = 1e-2 (100 steps), outputs at 0, 0.5, 1. Itô for euler / milstein / srk, the same functions
declared Stratonovich for reversible_heun. Variants, interleaved, one thread, CPU time of the calling thread:

  shared bm   both libraries get a fresh torchsde.BrownianInterval(dt=1e-2, same entropy) each repetition:
              the solver's share alone (the Brownian queries cost the same Python in both)
  own bm      each library's default (bm=None): what a user who does not pass bm gets

Modes: forward (no grad) and forward + adjoint backward (sdeint_adjoint with each library's default
adjoint_method; loss = sum of squares of the outputs). NFE counts the calls of f and g (and their products).

The SDE-BNN example's model (examples/sde_bnn_regression.py defaults: 60 points, width 32, 2 padded channels,
20 Euler steps, STL): one training iteration (forward, loss, backward) with backend='fastdiffeq' vs the same
model with backend='torchsde' (both on a fastdiffeq BrownianInterval with the same entropy), direct and adjoint.

    python benchmarks/bench_sde.py [--reps 5] [--methods euler,milstein,srk,reversible_heun] [--sdebnn-only]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, markdown_table, median, time_call2  # noqa: E402

import fastdiffeq  # noqa: E402
import torchsde  # noqa: E402

BATCH, STATE, HIDDEN = 1024, 32, 64


class Bench(torch.nn.Module):
    noise_type = "diagonal"

    def __init__(self, sde_type: str) -> None:
        super().__init__()
        self.sde_type = sde_type
        self.drift = torch.nn.Sequential(torch.nn.Linear(STATE, HIDDEN), torch.nn.Tanh(),
                                         torch.nn.Linear(HIDDEN, STATE))
        self.diffusion = torch.nn.Sequential(torch.nn.Linear(STATE, STATE), torch.nn.Sigmoid())
        self.calls = 0

    def f(self, t, y):
        self.calls += 1
        return self.drift(y)

    def g(self, t, y):
        self.calls += 1
        return self.diffusion(y)


def run(lib, sde, y0, ts, method, mode, bm_kind):
    levy = "space-time" if method == "srk" else "none"
    bm = None
    if bm_kind == "shared":
        bm = torchsde.BrownianInterval(0.0, 1.0, (BATCH, STATE), dtype=y0.dtype, dt=1e-2, entropy=123,
                                       levy_area_approximation=levy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "forward":
            with torch.no_grad():
                return lib.sdeint(sde, y0, ts, bm=bm, method=method, dt=1e-2)
        ys = lib.sdeint_adjoint(sde, y0, ts, bm=bm, method=method, dt=1e-2)
        ys.pow(2).sum().backward()
        return ys


def bench_sdebnn(reps: int) -> list:
    """One training iteration of the SDE-BNN example's model on each backend, interleaved."""
    from fastdiffeq.nn import SDEBNN

    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 60).unsqueeze(1)
    y = torch.sin(4 * x)
    rows = []
    for gradient in ("direct", "adjoint"):
        models = {backend: SDEBNN(1, 1, width=32, augment_dim=2, drift_hidden=32, sigma=0.2, steps=20, stl=True,
                                  gradient=gradient, backend=backend) for backend in ("fastdiffeq", "torchsde")}
        models["torchsde"].load_state_dict(models["fastdiffeq"].state_dict())
        times = {name: [] for name in models}
        for rep in range(reps + 1):
            for name, model in models.items():
                def iteration():
                    model.zero_grad(set_to_none=True)
                    pred, kl = model(x, bm=model.make_bm(60, entropy=rep))
                    ((pred - y).square().mean() + kl.mean() / 60).backward()
                _, cpu = time_call2(iteration)
                if rep > 0:
                    times[name].append(cpu)
        fd, ts_ = median(times["fastdiffeq"]) * 1e3, median(times["torchsde"]) * 1e3
        rows.append([gradient, f"{fd:.1f}", f"{ts_:.1f}", f"{ts_ / fd:.2f}x"])
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--methods", default="euler,milstein,srk,reversible_heun")
    parser.add_argument("--modes", default="forward,adjoint")
    parser.add_argument("--bms", default="shared,own")
    parser.add_argument("--sdebnn-only", action="store_true", help="only the SDE-BNN training iteration")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(machine_info())
    sdebnn_rows = bench_sdebnn(args.reps)
    print(markdown_table(["gradient", "fastdiffeq ms", "torchsde ms", "speed-up"], sdebnn_rows))
    if args.sdebnn_only:
        return
    y0 = torch.randn(BATCH, STATE) * 0.5
    ts = torch.tensor([0.0, 0.5, 1.0])
    rows = []
    for mode in args.modes.split(","):
        for method in args.methods.split(","):
            if mode == "adjoint" and method == "srk":
                continue  # srk cannot solve the adjoint SDE (both libraries); the forward pass uses it
            sde_type = "stratonovich" if method == "reversible_heun" else "ito"
            for bm_kind in args.bms.split(","):
                sde = Bench(sde_type)
                times = {"fastdiffeq": [], "torchsde": []}
                nfe = {}
                for rep in range(args.reps + 1):
                    for name, lib in (("fastdiffeq", fastdiffeq), ("torchsde", torchsde)):
                        sde.zero_grad(set_to_none=True)
                        sde.calls = 0
                        _, cpu = time_call2(lambda: run(lib, sde, y0, ts, method, mode, bm_kind))
                        nfe[name] = sde.calls
                        if rep > 0:  # the first round warms up
                            times[name].append(cpu)
                fd, ts_ = median(times["fastdiffeq"]) * 1e3, median(times["torchsde"]) * 1e3
                rows.append([mode, method, bm_kind, f"{fd:.1f} ({nfe['fastdiffeq']})",
                             f"{ts_:.1f} ({nfe['torchsde']})", f"{ts_ / fd:.2f}x"])
                print(rows[-1], flush=True)
    print()
    print(markdown_table(["mode", "method", "bm", "fastdiffeq ms (NFE)", "torchsde ms (NFE)", "speed-up"], rows))


if __name__ == "__main__":
    main()
