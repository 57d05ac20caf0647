"""Forward solve of an MLP neural-ODE field: fastdiffeq vs torchdiffeq vs torchode, in one run.

Every solver integrates the same ``MLPField`` object (a tanh MLP; the time argument is ignored) from
the same y0 over t in [0, 5] with dopri5, rtol = atol = 1e-5, float32, under ``torch.no_grad()`` on
one thread (``--threads``). Per solver the script reports the median wall time over ``--repeats``
timed solves (after warm-up; the solvers are interleaved round-robin so drift hits all of them alike),
the NFE, and the overhead ratio

    ratio = median solve time / (NFE x median time of one field call at the same batch),

where the field call is timed separately, interleaved with the solves (4 calls right before every timed
solve), on the same function object the solvers call, with the same batch. A ratio of 1 means the solver
costs nothing beyond its field evaluations. The *paired* ratio divides each solve by the field calls timed
just before it and takes the median over rounds (robust when the machine's speed drifts); it is given on
wall time and on the thread's CPU time. On a shared machine, rounds during which another CPU was busy are
detected from /proc/stat and left out of the medians when at least half the rounds are undisturbed;
``--quiet-wait S`` waits up to S seconds before each round for the other CPUs to go idle.

NFE: fastdiffeq reports it (``fastdiffeq.last_stats()``); torchdiffeq's is counted with a wrapper in a
separate, untimed run; torchode's comes from its own stats (``n_f_evals``) in a separate untimed run
(its timed runs use ``ODETerm(with_stats=False)``). torchode steps every sample with its own step size
but evaluates the field on the whole batch, so its NFE is the number of batched field calls, and its
step counts (per sample) are not comparable to the joint solvers'.

Diagnostics (``--no-diag`` skips them): solver-only cost measured by *replaying* recorded field outputs
(the solver takes exactly the same steps, the field costs a list lookup), at two tolerances, which
gives the per-step overhead (slope) and the fixed per-solve overhead (intercept) for fastdiffeq and
torchdiffeq; and the field's cost inside the solver loops vs in isolation, with page faults per solve.
Problems: small (2-64-64-2, batch 256), large (32-256-256-32, batch 512); the *-x3 variants multiply every
parameter by 3 (a harder field: 4-5x the steps). ``--profile`` adds a
torch.profiler table of fastdiffeq's replayed solve.

Usage:
    python benchmarks/bench_forward.py [--repeats 11] [--problems small,large] [--threads 1] [--json out.json]
                                       [--no-diag] [--profile] [--quiet-wait S]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (MLPField, cpu_ticks, idle_fraction, machine_info, markdown_table, median, quiet_threshold,  # noqa: E402
                    time_call2, wait_for_quiet)

import fastdiffeq  # noqa: E402
import torchdiffeq  # noqa: E402

try:
    import torchode
except ImportError:  # the benchmark runs without it
    torchode = None

# dim -> width -> width -> dim tanh MLP; `gain` multiplies every default-initialised parameter
# (the *-x3 variants are harder fields that need ~4x more steps, closer to a trained model's count).
PROBLEMS: Dict[str, Dict[str, Any]] = {
    "small": dict(dim=2, width=64, batch=256, gain=1.0),
    "large": dict(dim=32, width=256, batch=512, gain=1.0),
    "small-x3": dict(dim=2, width=64, batch=256, gain=3.0),
    "large-x3": dict(dim=32, width=256, batch=512, gain=3.0),
}
T_END, N_OUT, TOL, TIGHT_TOL = 5.0, 10, 1e-5, 1e-7
FIELD_CALLS_PER_SOLVE = 4  # field calls timed right before each timed solve


class Counter:
    def __init__(self, f: Callable):
        self.f, self.n = f, 0

    def __call__(self, t, y):
        self.n += 1
        return self.f(t, y)


class Recorder:
    def __init__(self, f: Callable):
        self.f, self.outs = f, []

    def __call__(self, t, y):
        out = self.f(t, y)
        self.outs.append(out.clone())
        return out


class Replay:
    """Returns recorded field outputs in call order: the solver takes the recorded steps, the field is free."""

    def __init__(self, outs: List[torch.Tensor]):
        self.outs, self.i = outs, 0

    def __call__(self, t, y):
        out = self.outs[self.i]
        self.i += 1
        return out


class TimedField:
    """Accumulates the thread CPU time of each field call (for the in-solver field cost; never in timed runs)."""

    def __init__(self, f: Callable):
        self.f, self.times = f, []

    def __call__(self, t, y):
        t0 = time.thread_time()
        out = self.f(t, y)
        self.times.append(time.thread_time() - t0)
        return out


# ----------------------------------------------------------------------------------------------- solvers

def solve_fastdiffeq(f, y0, t, tol=TOL):
    return fastdiffeq.odeint(f, y0, t, rtol=tol, atol=tol, method="dopri5")


def solve_torchdiffeq(f, y0, t, tol=TOL):
    return torchdiffeq.odeint(f, y0, t, rtol=tol, atol=tol, method="dopri5")


class TorchodeSolver:
    """torchode 1.0.1: Dopri5 + IntegralController (safety 0.9, factors 0.2..10, like torchdiffeq) +
    AutoDiffAdjoint, per-sample step sizes, no JIT. Built once per field, as a user would."""

    def __init__(self, f, tol=TOL, with_stats=False):
        term = torchode.ODETerm(f, with_stats=with_stats)
        step = torchode.Dopri5(term=term)
        ctrl = torchode.IntegralController(atol=tol, rtol=tol, term=term)
        self.adjoint = torchode.AutoDiffAdjoint(step, ctrl)
        self.last = None

    def __call__(self, y0, t):
        t_eval = t.unsqueeze(0).expand(y0.shape[0], -1)
        sol = self.adjoint.solve(torchode.InitialValueProblem(y0=y0, t_eval=t_eval))
        self.last = sol
        return sol.ys.transpose(0, 1)  # [T, B, D] like the others


# ------------------------------------------------------------------------------------------- benchmark

def bench_problem(name: str, spec: Dict[str, Any], repeats: int, diag: bool, profile: bool,
                  quiet_wait: float = 0.0) -> Dict[str, Any]:
    f = MLPField(spec["dim"], spec["width"], spec["gain"])
    y0 = torch.randn(spec["batch"], spec["dim"], generator=torch.Generator().manual_seed(1))
    t = torch.linspace(0.0, T_END, N_OUT)
    t_field = torch.tensor(0.0)

    solvers: Dict[str, Callable[[], torch.Tensor]] = {
        "fastdiffeq": lambda: solve_fastdiffeq(f, y0, t),
        "torchdiffeq": lambda: solve_torchdiffeq(f, y0, t),
    }
    tode = None
    if torchode is not None:
        tode = TorchodeSolver(f)
        solvers["torchode"] = lambda: tode(y0, t)

    res: Dict[str, Any] = {"problem": name, **spec, "t_end": T_END, "n_out": N_OUT, "rtol": TOL, "atol": TOL,
                           "solvers": {}}

    # Untimed runs: outputs, NFE, step counts.
    outs: Dict[str, torch.Tensor] = {}
    outs["fastdiffeq"] = solve_fastdiffeq(f, y0, t)
    st = fastdiffeq.last_stats()
    cnt = Counter(f)
    solve_fastdiffeq(cnt, y0, t)
    assert cnt.n == st.nfe, (cnt.n, st.nfe)
    info = {"fastdiffeq": dict(nfe=st.nfe, n_accepted=st.n_accepted, n_rejected=st.n_rejected)}
    cnt = Counter(f)
    outs["torchdiffeq"] = solve_torchdiffeq(cnt, y0, t)
    info["torchdiffeq"] = dict(nfe=cnt.n)
    if tode is not None:
        counted = TorchodeSolver(f, with_stats=True)
        outs["torchode"] = counted(y0, t)
        s = counted.last.stats
        assert bool((counted.last.status == 0).all()), "torchode did not finish every sample"
        steps = s["n_steps"].float()
        info["torchode"] = dict(nfe=int(s["n_f_evals"].max()), n_steps_min=int(steps.min()),
                                n_steps_median=float(steps.median()), n_steps_max=int(steps.max()),
                                n_accepted_max=int(s["n_accepted"].max()))

    # Minor page faults per solve (untimed): the allocator returning memory to the OS and faulting it back.
    for k, fn in solvers.items():
        fn()
        f0 = _minor_faults()
        for _ in range(3):
            fn()
        info[k]["minor_faults_per_solve"] = (_minor_faults() - f0) / 3 if f0 >= 0 else None

    # Warm-up, then interleaved timed solves and field calls.
    for fn in solvers.values():
        fn()
        fn()
    for _ in range(20):
        f(t_field, y0)
    # Each round times every solver once (rotating the order), each solve preceded by FIELD_CALLS_PER_SOLVE
    # timed field calls: the field's median is over all of them, and each solve also gets a *paired* ratio
    # against the field calls just before it (robust to the machine's speed drifting between rounds). A
    # round during which other processes kept another CPU busy is "disturbed" (from /proc/stat); the medians
    # use the undisturbed rounds when at least half of them are, else all rounds.
    rounds: List[Dict[str, Any]] = []
    names = list(solvers)
    threshold = quiet_threshold()
    for r in range(repeats):
        if quiet_wait > 0:
            wait_for_quiet(quiet_wait)
        a = cpu_ticks()
        rt: Dict[str, Any] = {"field": {}}
        for k in names[r % len(names):] + names[:r % len(names)]:
            rt["field"][k] = [time_call2(lambda: f(t_field, y0)) for _ in range(FIELD_CALLS_PER_SOLVE)]
            rt[k] = time_call2(solvers[k])
        idle = idle_fraction(a, cpu_ticks())
        rt["idle"] = idle
        rt["clean"] = idle is None or idle >= threshold
        rounds.append(rt)
    clean = [rt for rt in rounds if rt["clean"]]
    used = clean if 2 * len(clean) >= len(rounds) else rounds
    res["rounds"] = dict(total=len(rounds), undisturbed=len(clean), used=len(used),
                         idle_fractions=[rt["idle"] for rt in rounds], idle_threshold=threshold)
    times: Dict[str, List[Tuple[float, float]]] = {k: [rt[k] for rt in used] for k in solvers}
    field_times: List[Tuple[float, float]] = [x for rt in used for fk in rt["field"].values() for x in fk]
    field_ms = median([w for w, _ in field_times]) * 1e3
    field_cpu_ms = median([c for _, c in field_times]) * 1e3
    res["field_call_ms"] = field_ms
    res["field_call_cpu_ms"] = field_cpu_ms
    res["field_call_samples"] = len(field_times)

    ref = outs["torchdiffeq"]
    for k in solvers:
        ms = median([w for w, _ in times[k]]) * 1e3
        cpu_ms = median([c for _, c in times[k]]) * 1e3
        nfe = info[k]["nfe"]
        res["solvers"][k] = {
            **info[k],
            "median_ms": ms,
            "median_cpu_ms": cpu_ms,
            "min_ms": min(w for w, _ in times[k]) * 1e3,
            "times_ms": [w * 1e3 for w, _ in times[k]],
            "cpu_times_ms": [c * 1e3 for _, c in times[k]],
            "overhead_ratio": ms / (nfe * field_ms),
            "overhead_ratio_cpu": cpu_ms / (nfe * field_cpu_ms),
            "paired_ratio": median([rt[k][0] / (nfe * median([w for w, _ in rt["field"][k]])) for rt in used]),
            "paired_ratio_cpu": median([rt[k][1] / (nfe * median([c for _, c in rt["field"][k]])) for rt in used]),
            "max_abs_diff_vs_torchdiffeq": float((outs[k] - ref).abs().max()),
        }
    if torchode is None:
        res["notes"] = ["torchode is not installed: skipped"]

    if diag:
        res["diagnostics"] = diagnostics(f, y0, t, t_field, field_cpu_ms, profile)
    return res


def _minor_faults() -> int:
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return -1


def _median_ms(fn: Callable[[], object], n: int) -> Tuple[float, float]:
    """Median (wall ms, CPU ms) over n calls after one warm-up call."""
    fn()
    ts = [time_call2(fn) for _ in range(n)]
    return median([w for w, _ in ts]) * 1e3, median([c for _, c in ts]) * 1e3


def diagnostics(f, y0, t, t_field, field_cpu_ms: float, profile: bool) -> Dict[str, Any]:
    """Solver-only cost by replay at two tolerances (per-step slope, per-solve intercept), and the field's
    cost inside fastdiffeq's loop vs in isolation."""
    out: Dict[str, Any] = {"replay": {}}
    for solver_name, solve in (("fastdiffeq", solve_fastdiffeq), ("torchdiffeq", solve_torchdiffeq)):
        points = []
        for tol in (TOL, TIGHT_TOL):
            rec = Recorder(f)
            real = solve(rec, y0, t, tol)
            solve_fastdiffeq(f, y0, t, tol)  # same steps as torchdiffeq (checked via NFE below)
            st = fastdiffeq.last_stats()
            attempts = st.n_accepted + st.n_rejected
            rp = Replay(rec.outs)

            def run(rp=rp, tol=tol):
                rp.i = 0
                return solve(rp, y0, t, tol)

            ms, cpu_ms = _median_ms(run, 31)
            exact = float((run() - real).abs().max())
            points.append(dict(tol=tol, nfe=len(rec.outs), fastdiffeq_nfe=st.nfe, attempts=attempts,
                               replay_ms=ms, replay_cpu_ms=cpu_ms, replay_max_abs_diff=exact))
        (a, b) = points
        fit = {}
        for key, suffix in (("replay_ms", ""), ("replay_cpu_ms", "_cpu")):
            slope_us = (b[key] - a[key]) * 1e3 / max(1, b["attempts"] - a["attempts"])
            fit["per_step_us" + suffix] = slope_us
            fit["per_solve_us" + suffix] = a[key] * 1e3 - slope_us * a["attempts"]
        out["replay"][solver_name] = dict(points=points, **fit)

    nfe = out["replay"]["fastdiffeq"]["points"][0]["nfe"]
    for k, rp in out["replay"].items():
        rp["implied_ratio_cpu"] = 1.0 + rp["points"][0]["replay_cpu_ms"] / (nfe * field_cpu_ms)

    # The field inside the solver loops vs in isolation (instrumented, untimed solves, interleaved with
    # isolated calls so that both see the same machine state).
    out["in_solver_field"] = {}
    iso: List[float] = []
    runs: Dict[str, List[Tuple[float, float, List[float]]]] = {"fastdiffeq": [], "torchdiffeq": []}
    for _ in range(9):
        for _ in range(5):
            iso.append(time_call2(lambda: f(t_field, y0))[1])
        for k, solve in (("fastdiffeq", solve_fastdiffeq), ("torchdiffeq", solve_torchdiffeq)):
            tf = TimedField(f)
            _wall, total = time_call2(lambda: solve(tf, y0, t))
            runs[k].append((total, sum(tf.times), tf.times))
    for k, rs in runs.items():
        rs.sort(key=lambda r: r[0])
        total, field_sum, _ = rs[len(rs) // 2]
        out["in_solver_field"][k] = dict(
            clock="thread CPU time", solve_ms=total * 1e3, field_sum_ms=field_sum * 1e3,
            field_call_median_ms=median([x for r in rs for x in r[2]]) * 1e3,
            isolated_field_call_ms=median(iso) * 1e3, rest_ms=(total - field_sum) * 1e3)

    if profile:
        rec = Recorder(f)
        solve_fastdiffeq(rec, y0, t)
        rp = Replay(rec.outs)
        from torch.profiler import ProfilerActivity, profile as tprofile
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(20):
                rp.i = 0
                solve_fastdiffeq(rp, y0, t)
        out["profile_table"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    return out


# ---------------------------------------------------------------------------------------------- report

def _fmt_faults(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def report(results: List[Dict[str, Any]], machine: Dict[str, Any]) -> str:
    rows = []
    for r in results:
        for k, s in r["solvers"].items():
            nfe = f"{s['nfe']}"
            if k == "torchode":
                nfe += f" ‡ (batched calls; per-sample steps {s['n_steps_min']}–{s['n_steps_max']})"
            elif k == "fastdiffeq":
                nfe += f" ({s['n_accepted']} acc + {s['n_rejected']} rej)"
            rows.append([
                r["problem"], k, f"{s['median_ms']:.2f}", nfe, f"{r['field_call_ms'] * 1e3:.0f}",
                f"**{s['overhead_ratio']:.2f}**", f"{s['paired_ratio']:.2f} / {s['paired_ratio_cpu']:.2f}",
                f"{s['max_abs_diff_vs_torchdiffeq']:.1e}",
            ])
    header = ["problem", "solver", "median wall ms", "NFE", "field call µs", "ratio",
              "paired ratio (wall / CPU)", "max|Δ| vs torchdiffeq"]
    text = [markdown_table(header, rows)]
    text.append("\nTimed rounds used for the medians (undisturbed / total): " + ", ".join(
        f"{r['problem']} {r['rounds']['used']} ({r['rounds']['undisturbed']}/{r['rounds']['total']})" for r in results))
    text.append("\nratio = median wall time of the solve / (NFE × median wall time of one field call); paired "
                "ratio = median over rounds of solve time / (NFE × median of the field calls timed just before "
                "that solve), on wall time and on this thread's CPU time (time.thread_time: not inflated when "
                "other processes take the core away, still inflated when they run beside it). "
                "‡ torchode steps each sample with its own step size; its NFE counts batched field calls "
                "(every call evaluates the whole batch), so it is not comparable step-for-step.")
    if any("diagnostics" in r for r in results):
        drows = []
        for r in results:
            d = r.get("diagnostics")
            if not d:
                continue
            for k, rp in d["replay"].items():
                a, b = rp["points"]
                same = "" if a["nfe"] == a["fastdiffeq_nfe"] and b["nfe"] == b["fastdiffeq_nfe"] else " (steps differ!)"
                drows.append([r["problem"], k + same, f"{a['attempts']} / {b['attempts']}",
                              f"{a['replay_cpu_ms']:.3f} / {b['replay_cpu_ms']:.3f}",
                              f"**{rp['per_step_us_cpu']:.0f}**", f"{rp['per_solve_us_cpu']:.0f}",
                              f"{rp['per_step_us']:.0f} / {rp['per_solve_us']:.0f}",
                              f"{rp['implied_ratio_cpu']:.2f}"])
        text.append("\nSolver-only cost: the recorded field outputs replayed (same steps, the field is a list "
                    "lookup), rtol=atol=1e-5 / 1e-7; per step = slope, fixed = intercept of the line through "
                    "the two points (CPU time; the same fit on wall time in the next column):\n")
        text.append(markdown_table(["problem", "solver", "step attempts", "replay CPU ms", "per step µs",
                                    "fixed per solve µs", "wall: per step / fixed µs",
                                    "1 + replay / (NFE × field)"], drows))
        text.append("\nThe last column is the ratio the solver would reach if each field call inside it cost what "
                    "it costs in isolation (CPU time, rtol 1e-5).")
        frows = []
        for r in results:
            d = r.get("diagnostics")
            if not d:
                continue
            for k, i in d["in_solver_field"].items():
                frows.append([r["problem"], k, f"{i['isolated_field_call_ms'] * 1e3:.0f}",
                              f"{i['field_call_median_ms'] * 1e3:.0f}", f"{i['solve_ms']:.2f}",
                              f"{i['field_sum_ms']:.2f}", f"{i['rest_ms']:.2f}",
                              _fmt_faults(r["solvers"][k].get("minor_faults_per_solve"))])
        text.append("\nThe field's cost inside the solver loop (instrumented solves interleaved with isolated "
                    "calls, thread CPU time; page faults from an uninstrumented solve):\n")
        text.append(markdown_table(["problem", "solver", "isolated call µs", "in-loop call µs (median)",
                                    "solve ms", "Σ field ms", "rest ms", "minor page faults / solve"], frows))
    if torchode is None:
        text.append("\ntorchode is not installed: skipped.")
    return "\n".join(text)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=11, help="timed solves per solver (median reported)")
    p.add_argument("--problems", default="small,large", help=f"comma-separated, from {sorted(PROBLEMS)}")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--no-diag", action="store_true", help="skip the replay / in-loop field diagnostics")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of fastdiffeq (replay)")
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                   help="before each timed round wait up to S seconds for the other CPUs to go idle (shared machines)")
    args = p.parse_args(argv)

    names = [n.strip() for n in args.problems.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROBLEMS]
    if unknown:
        p.error(f"unknown problem(s) {unknown}; known: {sorted(PROBLEMS)}")
    torch.set_num_threads(args.threads)
    machine = machine_info()
    machine.update(fastdiffeq=getattr(fastdiffeq, "__version__", "?"), torchdiffeq=torchdiffeq.__version__,
                   torchode=getattr(torchode, "__version__", None))
    print(f"# {machine['cpu_model']} ({machine['cpus']} CPUs), torch {machine['torch']}, "
          f"{machine['threads']} thread(s), load {machine['loadavg_1min_at_start']}; "
          f"torchdiffeq {machine['torchdiffeq']}, torchode {machine['torchode'] or 'not installed'}")
    if torchode is None:
        print("# torchode is not installed: it is skipped")

    results = []
    with torch.no_grad():
        for n in names:
            r = bench_problem(n, PROBLEMS[n], args.repeats, not args.no_diag, args.profile, args.quiet_wait)
            results.append(r)
            print(f"# {n}: done", file=sys.stderr)
    try:
        machine["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    print(report(results, machine))
    print(f"\n# load average (1 min) at start {machine['loadavg_1min_at_start']}, "
          f"at end {machine.get('loadavg_1min_at_end', 'n/a')}")
    for r in results:
        if "profile_table" in r.get("diagnostics", {}):
            print(f"\ntorch.profiler, fastdiffeq replayed solve x20, problem {r['problem']}:")
            print(r["diagnostics"].pop("profile_table"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"date": datetime.date.today().isoformat(), "argv": sys.argv, "machine": machine,
                       "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
