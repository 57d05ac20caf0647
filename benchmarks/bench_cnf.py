"""CNF training iterations: fastdiffeq vs torchdiffeq on the demo's model (examples/cnf_toy.py defaults).

One thread, the variants interleaved, each timed from the same parameters on the same batch and noise:
  fastdiffeq                  fastdiffeq.nn.CNF: the augmented field (ConcatSquashMLP, its trace and RNODE terms)
                              evaluated natively in C++ (_C.NativeCNF, F7), hand-written vector-Jacobian products
  fastdiffeq, Python field    the same on fastdiffeq's solvers with the field in Python (derivatives='forward':
                              ConcatSquashMLP's forward-mode Jacobian products as torch operations)
  torchdiffeq, same field     the same augmented field on torchdiffeq's solvers (the solver's share alone)
  torchdiffeq, FFJORD trace   torchdiffeq with the trace as FFJORD's code computes it: autograd, one backward
                              pass per dimension for the exact trace (its divergence_bf), one vector-Jacobian
                              product for Hutchinson -- what a FFJORD-on-torchdiffeq user runs today
The model is first trained for --warmup iterations (fastdiffeq) so the step counts are those of a model
mid-training, not of the initialisation. Prints a Markdown table (median CPU ms per iteration of the calling
thread -- with one torch thread all the work runs there -- and NFE forward/backward).

    python benchmarks/bench_cnf.py [--warmup 150] [--reps 7] [--batch 512]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, markdown_table, median  # noqa: E402

from fastdiffeq.datasets import toy_2d  # noqa: E402
from fastdiffeq.nn import CNF, ConcatSquashMLP  # noqa: E402
from fastdiffeq.nn import _cnf  # noqa: E402  (the per-dimension switch, for FFJORD's trace)


def demo_flow(gradient: str, trace: str) -> CNF:
    return CNF(ConcatSquashMLP(2), trace=trace, kinetic=0.01, jacobian=0.01, gradient=gradient)


def warm_model(iterations: int, seed: int) -> dict:
    torch.manual_seed(seed)
    flow = demo_flow("direct", "exact")
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(iterations):
        opt.zero_grad()
        (-flow.log_prob(toy_2d("8gaussians", 512)).mean() + flow.regularization().mean()).backward()
        opt.step()
    return copy.deepcopy(flow.state_dict())


DERIVATIVES = {"fastdiffeq": "auto", "fastdiffeq, Python field": "forward", "torchdiffeq, same field": "auto",
               "torchdiffeq, FFJORD trace": "autograd"}


def variant(name: str, state: dict, gradient: str, trace: str) -> CNF:
    backend = "fastdiffeq" if name.startswith("fastdiffeq") else "torchdiffeq"
    flow = CNF(ConcatSquashMLP(2), trace=trace, kinetic=0.01, jacobian=0.01, gradient=gradient, backend=backend,
               derivatives=DERIVATIVES[name])
    flow.load_state_dict(state)
    return flow


def one_iteration(flow: CNF, name: str, x: torch.Tensor, seed: int) -> tuple:
    stack_max = _cnf.EXACT_TRACE_STACK_MAX_DIM
    if name == "torchdiffeq, FFJORD trace":
        _cnf.EXACT_TRACE_STACK_MAX_DIM = 0  # one backward pass per dimension, as FFJORD
    try:
        flow.zero_grad(set_to_none=True)
        torch.manual_seed(seed)  # the same Hutchinson draw for every variant
        t0 = time.thread_time()  # this thread's CPU time: with one torch thread, robust to other processes
        loss = -flow.log_prob(x).mean() + flow.regularization().mean()
        loss.backward()
        return time.thread_time() - t0, flow.nfe_forward, flow.nfe_backward, loss.item()
    finally:
        _cnf.EXACT_TRACE_STACK_MAX_DIM = stack_max


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    info = machine_info()
    state = warm_model(args.warmup, args.seed)
    x = toy_2d("8gaussians", args.batch, seed=args.seed + 1)
    names = tuple(DERIVATIVES)
    rows = []
    for trace in ("exact", "hutchinson"):
        for gradient in ("adjoint", "direct"):
            flows = {n: variant(n, state, gradient, trace) for n in names}
            times = {n: [] for n in names}
            meta = {}
            for rep in range(args.reps + 1):
                for n in names:  # interleaved
                    dt, nf, nb, loss = one_iteration(flows[n], n, x, args.seed + rep)
                    if rep:  # the first round warms caches and allocators
                        times[n].append(dt)
                    meta[n] = (nf, nb, loss)
            base = median(times["fastdiffeq"])
            for n in names:
                nf, nb, loss = meta[n]
                rows.append([trace, gradient, n, f"{1e3 * median(times[n]):.1f}", f"{nf}/{nb}",
                             f"{median(times[n]) / base:.2f}", f"{loss:.4f}"])
            print(f"done: {trace} {gradient}", file=sys.stderr, flush=True)
    print(f"machine: {info}; batch {args.batch}, model after {args.warmup} warm-up iterations, "
          f"median of {args.reps}")
    print(markdown_table(["trace", "gradient", "solver", "CPU ms / iteration", "NFE fwd/bwd", "× fastdiffeq",
                          "loss"], rows))


if __name__ == "__main__":
    main()
