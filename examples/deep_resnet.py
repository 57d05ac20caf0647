"""Train ResNets and HeunNets up to depth 512 on scikit-learn's 8x8 digits with backprop and with the
memory-free reconstruct gradient (fastdiffeq.nn.ResidualODE); plot test accuracy and peak memory vs depth.

The model: x (64 pixels / 16) -> Linear(64, width) -> ResidualODE of N blocks tanh(Linear(width, width)) with
step 1/N (ResNet: Euler; HeunNet: Heun) -> Linear(width, 10). The blocks' weights start smooth in depth
(interpolated linearly between 4 random anchors), the setting in which Sander, Ablin & Peyre (2022) show the
reconstruct gradient converges (O(1/N) ResNet, O(1/N^2) HeunNet). Every (scheme, gradient, depth) trains in its
own process (Adam, the same data order and initial weights for the four variants of a depth), so its peak RSS
growth (ru_maxrss during training, minus that after a warm-up step) is its own; it includes the parameters,
their gradients and Adam's state, which grow with N in every variant. Digits are bundled with
scikit-learn (no download). The default run takes 2-4 minutes on 2 CPU cores.

    python examples/deep_resnet.py [--depths 8,32,128,512] [--iterations 150] [--out examples/out]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

VARIANTS = [("euler", "backprop"), ("euler", "reconstruct"), ("heun", "backprop"), ("heun", "reconstruct")]
LABELS = {"euler": "ResNet", "heun": "HeunNet"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="8,32,128,512")
    p.add_argument("--iterations", type=int, default=150, help="Adam steps per model")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--jobs", type=int, default=2, help="models trained at the same time (one thread each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    p.add_argument("--no-plot", action="store_true")
    # Internal: train one model in this process and print its result as JSON.
    p.add_argument("--child", nargs=3, metavar=("SCHEME", "GRADIENT", "DEPTH"), help=argparse.SUPPRESS)
    return p.parse_args()


def train_one(args: argparse.Namespace, scheme: str, gradient: str, depth: int) -> dict:
    import resource
    import time

    import torch
    from sklearn.datasets import load_digits

    from fastdiffeq.nn import ResidualODE

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))
    n_train = int(0.8 * len(y))
    tr, te = perm[:n_train], perm[n_train:]

    w = args.width
    g = torch.Generator().manual_seed(args.seed + 1)
    anchors = [(torch.randn(w, w, generator=g) / w ** 0.5, 0.1 * torch.randn(w, generator=g)) for _ in range(4)]

    def block(k: int) -> torch.nn.Module:
        s = 3.0 * k / max(depth - 1, 1)  # position in depth, between anchors 0 .. 3
        i = min(int(s), 2)
        a = s - i
        lin = torch.nn.Linear(w, w)
        with torch.no_grad():
            lin.weight.copy_((1 - a) * anchors[i][0] + a * anchors[i + 1][0])
            lin.bias.copy_((1 - a) * anchors[i][1] + a * anchors[i + 1][1])
        return torch.nn.Sequential(lin, torch.nn.Tanh())

    def make_model(n: int):
        torch.manual_seed(args.seed + 2)
        return torch.nn.Sequential(torch.nn.Linear(64, w),
                                   ResidualODE([block(k) for k in range(n)], scheme=scheme, gradient=gradient),
                                   torch.nn.Linear(w, 10))

    def step(model, opt, idx):
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    warm = make_model(2)
    step(warm, torch.optim.Adam(warm.parameters(), lr=args.lr), tr[: args.batch])
    model = make_model(depth)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    order = torch.Generator().manual_seed(args.seed + 3)
    t0 = time.perf_counter()
    for it in range(args.iterations):
        idx = tr[torch.randint(len(tr), (args.batch,), generator=order)]
        loss = step(model, opt, idx)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        acc = (model(x[te]).argmax(1) == y[te]).float().mean().item()
    return dict(scheme=scheme, gradient=gradient, depth=depth, test_accuracy=acc, final_loss=loss,
                peak_rss_growth_mib=(peak - base) / 1024, seconds=seconds)


def run_child(args: argparse.Namespace, scheme: str, gradient: str, depth: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", scheme, gradient, str(depth),
           "--iterations", str(args.iterations), "--batch", str(args.batch), "--width", str(args.width),
           "--lr", str(args.lr), "--seed", str(args.seed)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # Through a shell so the child's ru_maxrss is its own (a fork+exec child inherits its parent's peak).
    proc = subprocess.run(["/bin/sh", "-c", '"$0" "$@"; exit $?', *cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{scheme}/{gradient}/N={depth} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(results: list, depths: list, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, ylabel, name in [("test_accuracy", "test accuracy", "deep_resnet_accuracy.png"),
                              ("peak_rss_growth_mib", "peak memory during training (RSS growth, MiB)",
                               "deep_resnet_memory.png")]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for scheme, gradient in VARIANTS:
            pts = sorted((r["depth"], r[key]) for r in results if r["scheme"] == scheme and r["gradient"] == gradient)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    linestyle="-" if gradient == "backprop" else "--", label=f"{LABELS[scheme]}, {gradient}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.set_xlabel("depth N (blocks)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        print(f"wrote {path}")


def main() -> None:
    args = parse_args()
    if args.child:
        scheme, gradient, depth = args.child
        print(json.dumps(train_one(args, scheme, gradient, int(depth))))
        return
    depths = [int(d) for d in args.depths.split(",")]
    configs = [(s, g, n) for n in sorted(depths, reverse=True) for s, g in VARIANTS]  # longest first
    results = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool, tqdm(total=len(configs), unit="model") as bar:
        for r in pool.map(lambda c: run_child(args, *c), configs):
            results.append(r)
            bar.set_postfix_str(f"{LABELS[r['scheme']]} {r['gradient']} N={r['depth']}: acc {r['test_accuracy']:.3f}")
            bar.update()
    print(f"{'model':<24}{'N':>5}{'test acc':>10}{'peak MiB':>10}{'train s':>9}")
    for r in sorted(results, key=lambda r: (r["scheme"], r["gradient"], r["depth"])):
        print(f"{LABELS[r['scheme']] + ', ' + r['gradient']:<24}{r['depth']:>5}{r['test_accuracy']:>10.3f}"
              f"{r['peak_rss_growth_mib']:>10.1f}{r['seconds']:>9.1f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "deep_resnet.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    if not args.no_plot:
        plot(results, depths, args.out)


if __name__ == "__main__":
    main()
