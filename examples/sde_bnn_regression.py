"""Train an SDE-BNN (Xu et al., 2022) on a 1-D regression toy; plot the posterior predictive with sample functions.

The target is a sine observed with noise on [-1, 1] with a gap in the middle; the 1-D input is padded with zero
channels (``--augment-dim``) so the sampled functions need not be monotone. The loss is the negative ELBO per
data point: Gaussian negative log-likelihood (scale ``--obs-std``) + KL(posterior weight path ‖ OU prior) / N.
`python examples/sde_bnn_regression.py --help` lists the flags (iterations, sizes, σ, steps, STL, gradient mode,
solver backend: fastdiffeq or torchsde with the same model, output path, seed, threads).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from tqdm import tqdm

from fastdiffeq.nn import SDEBNN


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--points", type=int, default=60, help="training points (both sides of the gap)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam's initial rate (cosine decay to 1/10 of it)")
    p.add_argument("--width", type=int, default=32, help="hidden units of the ODE's network f_h")
    p.add_argument("--augment-dim", type=int, default=2, help="zero channels padded to the input")
    p.add_argument("--drift-hidden", type=int, default=32, help="hidden units of the weights' drift network")
    p.add_argument("--sigma", type=float, default=0.2, help="diffusion of the weights")
    p.add_argument("--steps", type=int, default=20, help="fixed solver steps on [0, 1]")
    p.add_argument("--obs-std", type=float, default=0.1, help="the Gaussian likelihood's scale")
    p.add_argument("--stl", action=argparse.BooleanOptionalAction, default=True, help="sticking the landing")
    p.add_argument("--gradient", default="direct", choices=("direct", "adjoint"))
    p.add_argument("--backend", default="fastdiffeq", choices=("fastdiffeq", "torchsde"))
    p.add_argument("--samples", type=int, default=64, help="weight paths for the posterior predictive")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (0: torch's default); one is fastest for this small model")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                                 "sde_bnn_regression.png"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def target(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(4.0 * x)


def make_data(n: int, obs_std: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    left = torch.rand(n // 2, generator=g) * 0.8 - 1.0        # [-1, -0.2]
    right = torch.rand(n - n // 2, generator=g) * 0.7 + 0.3   # [0.3, 1]
    x = torch.cat([left, right]).unsqueeze(1)
    y = target(x) + obs_std * torch.randn(x.shape, generator=g)
    return x, y


@torch.no_grad()
def predictive(model: SDEBNN, x: torch.Tensor, samples: int) -> torch.Tensor:
    """Sampled functions (samples, N): each one weight path shared by all N inputs."""
    return model.sample_functions(x, samples)[0].squeeze(-1)


def train(model: SDEBNN, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(args.iterations, 1), eta_min=args.lr / 10)
    n = x.size(0)
    log = {"loss": [], "nll": [], "kl": []}
    bar = tqdm(range(args.iterations), desc=f"SDE-BNN ({args.backend}, {args.gradient})", unit="it")
    for _ in bar:
        opt.zero_grad(set_to_none=True)
        pred, kl = model(x)
        nll = 0.5 * ((pred - y) / args.obs_std).square().mean() + math.log(args.obs_std * math.sqrt(2 * math.pi))
        loss = nll + kl.mean() / n
        loss.backward()
        opt.step()
        sched.step()
        log["loss"].append(loss.item())
        log["nll"].append(nll.item())
        log["kl"].append(kl.mean().item())
        bar.set_postfix(loss=f"{loss.item():.3f}", nll=f"{nll.item():.3f}", kl=f"{kl.mean().item():.2f}")
    return log


def plot(x, y, x_test, funcs, args, rmse, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xt = x_test.squeeze(1).numpy()
    mean, std = funcs.mean(0).numpy(), funcs.std(0).numpy()
    fig, ax = plt.subplots(figsize=(8, 4.6))
    ax.fill_between(xt, mean - 2 * std, mean + 2 * std, color="tab:blue", alpha=0.2, label="mean ± 2σ")
    for f in funcs[:12]:
        ax.plot(xt, f.numpy(), color="tab:blue", lw=0.6, alpha=0.5)
    ax.plot(xt, mean, color="tab:blue", lw=2, label="posterior predictive mean")
    ax.plot(xt, target(x_test).squeeze(1).numpy(), "k--", lw=1, label="true function sin(4x)")
    ax.scatter(x.squeeze(1).numpy(), y.squeeze(1).numpy(), s=12, color="tab:red", zorder=3, label="data")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_ylim(-2.5, 2.5)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"SDE-BNN ({args.backend}, {args.steps} Euler steps, σ={args.sigma}, stl={args.stl}): "
                 f"{args.iterations} iterations, test RMSE {rmse:.3f}", fontsize=9)
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
    x, y = make_data(args.points, args.obs_std, args.seed)
    model = SDEBNN(1, 1, width=args.width, augment_dim=args.augment_dim, drift_hidden=args.drift_hidden,
                   sigma=args.sigma, steps=args.steps, stl=args.stl, gradient=args.gradient, backend=args.backend)

    start = time.perf_counter()
    log = train(model, x, y, args)
    train_s = time.perf_counter() - start

    x_in = torch.linspace(-1, 1, 101).unsqueeze(1)        # the data's range, the gap included
    x_plot = torch.linspace(-1.5, 1.5, 151).unsqueeze(1)  # and beyond it
    funcs_in = predictive(model, x_in, args.samples)
    rmse = (funcs_in.mean(0) - target(x_in).squeeze(1)).square().mean().sqrt().item()
    gap = (x_in.squeeze(1) > -0.2) & (x_in.squeeze(1) < 0.3)
    std_in = funcs_in.std(0)
    k = max(1, min(20, args.iterations // 10))
    n = len(log["loss"])
    print(f"\ntrained {n} iterations in {train_s:.1f} s ({1e3 * train_s / max(n, 1):.0f} ms/iteration), "
          f"backend {args.backend}, gradient {args.gradient}, stl {args.stl}, {model.num_weights} weights, "
          f"{torch.get_num_threads()} threads")
    if n:
        print(f"final loss (mean of last {k}): {sum(log['loss'][-k:]) / k:.4f} (nll {sum(log['nll'][-k:]) / k:.4f}, "
              f"kl {sum(log['kl'][-k:]) / k:.2f}); first loss {log['loss'][0]:.4f}")
    print(f"test RMSE of the predictive mean vs sin(4x) on [-1, 1] ({args.samples} samples): {rmse:.4f}")
    print(f"predictive std: in the data {std_in[~gap].mean().item():.3f}, in the gap {std_in[gap].mean().item():.3f}")
    if not args.no_plot:
        funcs_plot = predictive(model, x_plot, args.samples)
        plot(x, y, x_plot, funcs_plot, args, rmse, args.out)
        print(f"wrote {args.out}")
    print(f"total wall time {time.perf_counter() - program_start:.1f} s (training {train_s:.1f} s)")


if __name__ == "__main__":
    main()
