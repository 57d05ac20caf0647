"""Train a neural ODE on spiral trajectories with odeint_adjoint (seminorm) under DistributedDataParallel.

The data are the trajectory of the cubic spiral dy/dt = y**3 A (torchdiffeq's ode_demo). Each process draws its
own random short segments of it; the model dy/dt = MLP(y**3) is integrated over each segment with
``fastdiffeq.odeint_adjoint`` (constant-memory gradients, ``adjoint_options=dict(norm="seminorm")``) and
DDP averages the parameter gradients across the processes.

Run on 2 CPU processes (gloo backend):

    torchrun --nproc_per_node=2 examples/ddp_neural_ode.py

or as one plain process (no torchrun: world size 1, no process group):

    python examples/ddp_neural_ode.py --iters 100

Rank 0 shows a progress bar with the training loss and, every --eval-every iterations, the loss of the whole
trajectory integrated from its first point.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

import fastdiffeq


class Spiral(torch.nn.Module):
    """The true dynamics: dy/dt = y**3 A."""

    def __init__(self):
        super().__init__()
        self.register_buffer("A", torch.tensor([[-0.1, 2.0], [-2.0, -0.1]]))

    def forward(self, t, y):
        return (y ** 3) @ self.A


class Field(torch.nn.Module):
    """The learned vector field: MLP(y**3)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2))
        for m in self.net:
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=0.1)
                torch.nn.init.zeros_(m.bias)

    def forward(self, t, y):
        return self.net(y ** 3)


class NeuralODE(torch.nn.Module):
    """y0 [B, 2], t [T] -> trajectories [T, B, 2], differentiated by the adjoint method."""

    def __init__(self, hidden: int, rtol: float, atol: float):
        super().__init__()
        self.field = Field(hidden)
        self.rtol, self.atol = rtol, atol

    def forward(self, y0, t):
        return fastdiffeq.odeint_adjoint(self.field, y0, t, rtol=self.rtol, atol=self.atol,
                                         adjoint_params=tuple(self.field.parameters()),
                                         adjoint_options=dict(norm="seminorm"))


def setup_distributed():
    """(rank, world_size, initialised): a gloo process group when launched by torchrun, else one process."""
    launched = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    if not launched:
        return 0, 1, False
    dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=5))
    return dist.get_rank(), dist.get_world_size(), True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=300, help="training iterations (default 300)")
    parser.add_argument("--batch-size", type=int, default=16, help="segments per process and iteration")
    parser.add_argument("--batch-time", type=int, default=10, help="points per segment")
    parser.add_argument("--data-size", type=int, default=1000, help="points of the true trajectory")
    parser.add_argument("--hidden", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--atol", type=float, default=1e-8)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rank, world, distributed = setup_distributed()
    try:
        # The data: identical on every process (deterministic solve of the true dynamics).
        true_y0 = torch.tensor([[2.0, 0.0]])
        t = torch.linspace(0.0, 25.0, args.data_size)
        with torch.no_grad():
            true_y = fastdiffeq.odeint(Spiral(), true_y0, t, rtol=1e-7, atol=1e-9)  # [T, 1, 2]

        # The same initial parameters everywhere (DDP also broadcasts rank 0's at construction).
        torch.manual_seed(args.seed)
        model = NeuralODE(args.hidden, args.rtol, args.atol)
        net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
        opt = torch.optim.RMSprop(model.parameters(), lr=args.lr)

        # Each process draws its own segments.
        gen = torch.Generator().manual_seed(args.seed * 1000 + rank)

        def get_batch():
            start = torch.randint(0, args.data_size - args.batch_time, (args.batch_size,), generator=gen)
            batch_y0 = true_y[start, 0]                                                   # [B, 2]
            batch_t = t[:args.batch_time]                                                 # [T]
            batch_y = torch.stack([true_y[start + i, 0] for i in range(args.batch_time)])  # [T, B, 2]
            return batch_y0, batch_t, batch_y

        def full_trajectory_loss() -> float:
            with torch.no_grad():
                return float((model(true_y0, t) - true_y).abs().mean())

        if rank == 0:
            print(f"fastdiffeq {fastdiffeq.__version__}: {world} process(es), gloo={distributed}, "
                  f"{args.batch_size} segments x {args.batch_time} points per process, odeint_adjoint + seminorm")
        start_time = time.perf_counter()
        eval_loss = full_trajectory_loss() if rank == 0 else float("nan")
        if rank == 0:
            print(f"full-trajectory loss before training: {eval_loss:.4f}")
        backward_nfe = 0
        bar = tqdm(range(1, args.iters + 1), desc="training", unit="it", disable=rank != 0)
        for it in bar:
            batch_y0, batch_t, batch_y = get_batch()
            opt.zero_grad(set_to_none=True)
            loss = (net(batch_y0, batch_t) - batch_y).abs().mean()
            loss.backward()
            opt.step()
            backward_nfe += fastdiffeq.last_backward_stats().nfe
            if rank == 0 and (it % args.eval_every == 0 or it == args.iters):
                eval_loss = full_trajectory_loss()
            bar.set_postfix(loss=f"{loss.item():.4f}", full=f"{eval_loss:.4f}")

        if distributed:
            # Every rank holds the same parameters after the synchronised steps.
            flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            ref = flat.clone()
            dist.broadcast(ref, src=0)
            in_sync = torch.tensor([float(torch.equal(flat, ref))])
            dist.all_reduce(in_sync, op=dist.ReduceOp.MIN)
            synced = bool(in_sync.item() == 1.0)
        else:
            synced = True
        if rank == 0:
            elapsed = time.perf_counter() - start_time
            print(f"done: {args.iters} iterations in {elapsed:.1f} s; full-trajectory loss {eval_loss:.4f}; "
                  f"mean backward NFE per iteration {backward_nfe / args.iters:.0f}; "
                  f"parameters identical on all ranks: {synced}")
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
