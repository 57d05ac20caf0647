"""Train a continuous normalizing flow (FFJORD) on a 2-D toy distribution; plot data, samples and density.

`make demo` runs it on defaults (8gaussians, about two minutes on 2 CPU cores). `python examples/cnf_toy.py
--help` lists the flags: the dataset, iterations, batch size, trace estimator, tolerances, gradient mode, the
solver backend (fastdiffeq, or torchdiffeq with the same model for comparison), output path and seed.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from tqdm import tqdm

from fastdiffeq.datasets import TOY_2D, TOY_2D_ENTROPY, toy_2d
from fastdiffeq.nn import CNF, ConcatSquashMLP


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="8gaussians", choices=TOY_2D)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-2, help="Adam's initial rate (cosine decay to 1/20 of it)")
    p.add_argument("--hidden", default="64,64,64", help="hidden widths of the ConcatSquashMLP")
    p.add_argument("--activation", default="softplus")
    p.add_argument("--trace", default="exact", choices=("exact", "hutchinson"))
    p.add_argument("--T", type=float, default=1.0, help="initial end time (learned)")
    p.add_argument("--kinetic", type=float, default=0.01, help="RNODE kinetic-energy weight")
    p.add_argument("--jacobian", type=float, default=0.01, help="RNODE Jacobian-Frobenius weight")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--gradient", default="adjoint", choices=("adjoint", "direct", "checkpoint"))
    p.add_argument("--backend", default="fastdiffeq", choices=("fastdiffeq", "torchdiffeq"))
    p.add_argument("--derivatives", default="auto", choices=("auto", "forward", "autograd"),
                   help="the field: native C++ where possible (auto), Python forward-mode products, or autograd")
    p.add_argument("--test-size", type=int, default=20000, help="fresh samples for the test NLL")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (0: torch's default); one is fastest for this small model")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "cnf_toy.png"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def make_flow(args: argparse.Namespace) -> CNF:
    hidden = tuple(int(h) for h in args.hidden.split(","))
    return CNF(ConcatSquashMLP(2, hidden, args.activation), trace=args.trace, T=args.T, kinetic=args.kinetic,
               jacobian=args.jacobian, rtol=args.rtol, atol=args.atol, gradient=args.gradient, backend=args.backend,
               derivatives=args.derivatives)


@torch.no_grad()
def test_nll(flow: CNF, x: torch.Tensor, chunk: int = 5000) -> float:
    """Mean negative log-likelihood in nats, exact trace (whatever the training estimator)."""
    trace, flow.trace = flow.trace, "exact"
    try:
        return -torch.cat([flow.log_prob(part) for part in x.split(chunk)]).mean().item()
    finally:
        flow.trace = trace


def train(flow: CNF, args: argparse.Namespace) -> dict:
    opt = torch.optim.Adam(flow.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.iterations, eta_min=args.lr / 20)
    nfe_f, nfe_b = [], []
    bar = tqdm(range(args.iterations), desc=f"CNF {args.dataset} ({args.backend})", unit="it")
    for it in bar:
        x = toy_2d(args.dataset, args.batch)
        opt.zero_grad(set_to_none=True)
        nll = -flow.log_prob(x).mean()
        loss = nll + flow.regularization().mean()
        loss.backward()
        opt.step()
        sched.step()
        nfe_f.append(flow.nfe_forward)
        nfe_b.append(flow.nfe_backward)
        bar.set_postfix(loss=f"{loss.item():.3f}", nll=f"{nll.item():.3f}", nfe_f=nfe_f[-1], nfe_b=nfe_b[-1],
                        T=f"{flow.T.item():.2f}")
    return {"nfe_forward": nfe_f, "nfe_backward": nfe_b, "final_nll": nll.item()}


@torch.no_grad()
def plot(flow: CNF, args: argparse.Namespace, nll: float, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim, n_grid = 4.5, 120
    data = toy_2d(args.dataset, 20000, seed=args.seed + 2)
    samples = flow.sample(20000)
    g = torch.linspace(-lim, lim, n_grid)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    density = torch.cat([flow.log_prob(part) for part in grid.split(5000)]).exp().reshape(n_grid, n_grid)

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.6))
    for ax, pts, title in ((axes[0], data, f"data: {args.dataset}"), (axes[1], samples, "model samples")):
        ax.hist2d(pts[:, 0].numpy(), pts[:, 1].numpy(), bins=n_grid, range=[[-lim, lim], [-lim, lim]], cmap="viridis")
        ax.set_title(title)
    im = axes[2].imshow(density.numpy(), origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
    axes[2].set_title("learned density p(x)")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal")
    floor = TOY_2D_ENTROPY.get(args.dataset)
    fig.suptitle(f"CNF on {args.dataset} ({args.backend} solver, {args.trace} trace, {args.iterations} iterations): "
                 f"test NLL {nll:.3f} nats"
                 + (f" (data entropy {floor:.2f})" if floor is not None else ""))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    program_start = time.perf_counter()
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    flow = make_flow(args)
    x_test = toy_2d(args.dataset, args.test_size, seed=args.seed + 1)
    nll0 = test_nll(flow, x_test)

    start = time.perf_counter()
    log = train(flow, args)
    train_s = time.perf_counter() - start
    nll = test_nll(flow, x_test)
    floor = TOY_2D_ENTROPY[args.dataset]

    n = len(log["nfe_forward"])
    print(f"\ntrained {n} iterations in {train_s:.1f} s ({1e3 * train_s / n:.0f} ms/iteration), "
          f"backend {args.backend}, gradient {args.gradient}, trace {args.trace}, {torch.get_num_threads()} threads")
    print(f"NFE per iteration: forward mean {sum(log['nfe_forward']) / n:.0f} (last {log['nfe_forward'][-1]}), "
          f"backward mean {sum(log['nfe_backward']) / n:.0f} (last {log['nfe_backward'][-1]})")
    print(f"learned end time T = {flow.T.item():.3f}")
    print(f"test NLL on {args.test_size} fresh samples: {nll:.3f} nats (untrained {nll0:.3f}; "
          f"data entropy, the floor: {floor:.3f}; gap {nll - floor:.3f})")
    if not args.no_plot:
        plot(flow, args, nll, args.out)
        print(f"wrote {args.out}")
    print(f"total wall time {time.perf_counter() - program_start:.1f} s (training {train_s:.1f} s)")


if __name__ == "__main__":
    main()
