"""Shared helpers for the Python benchmarks: timing, machine description, Markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def time_call(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of fn."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_call2(fn: Callable[[], object]) -> Tuple[float, float]:
    """(wall seconds, this thread's CPU seconds) of one call of fn. With one torch thread all the work
    runs on the calling thread, so the CPU time is the wall time minus the time other processes took
    the core away (robust on a shared machine); cache pollution by them still shows."""
    c0, t0 = time.thread_time(), time.perf_counter()
    fn()
    t1, c1 = time.perf_counter(), time.thread_time()
    return t1 - t0, c1 - c0


def machine_info() -> Dict[str, object]:
    """CPU model and core count (from lscpu where available), torch version and thread count."""
    model, cores = platform.processor() or "unknown", os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
        model = fields.get("Model name", model)
        cores = int(fields.get("CPU(s)", cores))
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {
        "cpu_model": model,
        "cpus": cores,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "loadavg_1min_at_start": round(load, 2),
    }


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --- a shared machine: wait for the other CPUs to go idle, and tell which timed rounds were disturbed ---

def cpu_ticks() -> Optional[Tuple[int, int]]:
    """(idle ticks, total ticks) over all CPUs from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return values[3] + values[4], sum(values)


def idle_fraction(a: Optional[Tuple[int, int]], b: Optional[Tuple[int, int]]) -> Optional[float]:
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


def wait_for_quiet(max_wait_s: float, window_s: float = 0.3, threshold: float = 0.9) -> Optional[float]:
    """Sleep until the machine is at least `threshold` idle over `window_s` (nobody else is running), or
    until `max_wait_s` has passed. Returns the last idle fraction seen (None without /proc/stat)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        a = cpu_ticks()
        time.sleep(window_s)
        f = idle_fraction(a, cpu_ticks())
        if f is None or f >= threshold or time.monotonic() >= deadline:
            return f


def quiet_threshold() -> float:
    """Idle fraction of the whole machine expected while this (single-threaded) benchmark runs and nobody
    else does: all CPUs but one idle, with some slack for the 10 ms tick resolution."""
    n = os.cpu_count() or 1
    return 0.8 * (n - 1) / n


class MLPField(torch.nn.Module):
    """dim -> width -> width -> dim tanh MLP field f(t, y): torch's default init with `seed`, times `gain`
    (the problems of bench_forward.py and bench_gradients.py)."""

    def __init__(self, dim: int, width: int, gain: float = 1.0, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(dim, width), torch.nn.Tanh(),
                torch.nn.Linear(width, width), torch.nn.Tanh(),
                torch.nn.Linear(width, dim),
            )
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(gain)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)
