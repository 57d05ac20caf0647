"""Running fuzz calls in child processes and judging them.

Parent (``campaign``): splits the call keys (target, seed, index) over ``workers`` child interpreters.
Each child logs a JSON line *before* every program it runs (the full reproducing source, flushed) and
one after every call. When a child dies (signal, abort) the program it had started is the culprit: the
parent records a ``crash`` with that program and the tail of the child's stderr, and starts a fresh
child at the next key. When a program runs longer than ``timeout`` seconds the parent kills the child's
process group and records a ``hang`` (a hang detector, not a timing assertion: pick it generously).

Child (``worker_main``): for each key, ``make_call`` then ``check_call``, which runs the call and its
metamorphic variants and applies the oracles:

- the error, if any, must be clear (``classify``);
- a call with inputs its contract rejects (``Call.must_raise``) must raise;
- the post-conditions (``Call.checks``) must hold when it returns;
- guarded mutable tensors must not be written outside their bounds;
- the same call twice gives the same outcome (same exception type or bit-identical results);
- aliased arguments give the results of copies (or raise); a valid CPU call also runs on meta tensors
  with the same output shapes; a field returning its input gives the result of one returning a copy.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------------------------
# Child side
# ---------------------------------------------------------------------------------------------------

# After these failures the child may have a corrupted heap: the next call runs in a fresh process, so
# that a later crash is not blamed on an innocent call.
RESTART_AFTER = {"accepted-invalid-input", "out-of-bounds-write", "alias-result-differs-from-copies"}

_API_ARG = re.compile(
    r"`[A-Za-z_][\w\[\]]*`|options\['\w+'\]|\b(func|y0|rtol|atol|method|options|gradient\w*|adjoint_\w+|event_fn|"
    r"norm|step_t|jump_t|first_step|min_step|max_step|safety|ifactor|dfactor|max_num_steps|dtype|"
    r"params|t_eval|on_failure|t0|reverse_time|odeint_interface)\b")  # (solve_ivp, odeint_event)
# sdeint / sdeint_adjoint and the Brownian motions (level "sde"): their argument names, the SDE's attributes, and
# torchsde's names for the user's drift and diffusion in its shape errors.
_SDE_ARG = re.compile(
    r"`[A-Za-z_][\w\[\]]*`|\b(sde|y0|ts|bm|dt|dt_min|rtol|atol|method|adaptive|options|names|logqp|extra|"
    r"extra_solver_state|adjoint_\w+|noise_type|sde_type|levy_area_approximation|Drift|Diffusion|ta|tb|t0|t1|"
    r"w0|w1|size|entropy|return_U|return_A)\b")


def in_user_code(exc: BaseException) -> bool:
    """Was `exc` raised inside the user's code (a vector field, a norm: helpers.USER_CODE)?"""
    from fuzz import helpers

    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code if tb is not None else None
    return code is not None and code.co_name in helpers.USER_CODE and (
        code.co_filename in ("<string>", helpers.__file__))


def classify(exc: BaseException, level: str) -> Tuple[bool, str]:
    """(acceptable?, label) of an exception raised by a call at `level` (op | C | api | sde)."""
    from fastdiffeq import SolverError

    from fuzz.helpers import FieldError

    name, msg = type(exc).__name__, str(exc)
    first = msg.strip().splitlines()[0][:160] if msg.strip() else ""
    label = f"{name}: {first}"
    if isinstance(exc, (FieldError, SolverError)):
        return True, name
    if in_user_code(exc):  # the user's function failed (e.g. a norm on an empty state): passed on unchanged
        return True, f"{name} in user code"
    if "incompatible function arguments" in msg:
        return False, f"{name}: pybind11 signature dump ({first})"
    ours = msg.startswith("fastdiffeq")
    if level in ("api", "sde"):
        names = _API_ARG if level == "api" else _SDE_ARG
        if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, IndexError):
            return (bool(names.search(msg)), name if names.search(msg) else label + " (names no argument)")
        return (type(exc) is RuntimeError and ours), (name if ours else label)
    if isinstance(exc, (RuntimeError, ValueError, TypeError, IndexError)) and ours:
        return True, name
    return False, label


def _observe(v: Any) -> Any:
    import torch

    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, dict):
        return {k: _observe(x) for k, x in v.items() if k != "tape"}
    if isinstance(v, (list, tuple)):
        return [_observe(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return f"<{type(v).__name__}>"


def same(a: Any, b: Any, shapes_only: bool = False) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if shapes_only or a.device.type == "meta" or b.device.type == "meta":
            return shapes_only or a.device == b.device
        if a.is_floating_point() or a.is_complex():
            return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
        return bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], shapes_only) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, shapes_only) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return shapes_only or a == b


@dataclass
class Run:
    exc: Optional[BaseException] = None
    obs: Any = None
    guards: List[str] = field(default_factory=list)
    ns: Dict[str, Any] = field(default_factory=dict)
    setup_error: Optional[str] = None


def run_program(call, variant: str, emit) -> Run:
    from fuzz import helpers

    setup, stmt = call.parts("" if variant == "repeat" else variant)
    emit({"ev": "start", "key": list(call.key), "variant": variant or "call",
          "program": call.program("" if variant == "repeat" else variant)})
    helpers.GUARDS.clear()
    ns: Dict[str, Any] = {"__name__": "fuzz_program"}
    try:
        exec("from fuzz.helpers import *\n" + setup, ns)
    except Exception as e:  # the generator built something the harness cannot build: not a finding
        return Run(setup_error=f"{type(e).__name__}: {e}"[:300], ns=ns)
    run = Run(ns=ns)
    try:
        exec(stmt, ns)
    except Exception as e:
        run.exc = e
    run.guards = helpers.check_guards()
    if run.exc is None:
        try:
            result = eval(call.observe, ns)
        except Exception as e:
            result = f"<{call.observe} raised {type(e).__name__}>"
        run.obs = {"RESULT": _observe(result), **{m: _observe(ns[m]) for m in call.mutable if m in ns}}
    return run


def check_call(call, emit) -> Tuple[str, List[Dict[str, str]]]:
    """Run a call with its oracles. Returns (outcome label, failures)."""
    fails: List[Dict[str, str]] = []

    def fail(cls: str, detail: str, variant: str = "") -> None:
        fails.append({"cls": cls, "detail": detail, "program": call.program(variant)})

    r = run_program(call, "", emit)
    if r.setup_error:
        return "setup-error: " + r.setup_error, []
    if r.guards:
        fail("out-of-bounds-write", "; ".join(r.guards))
    if call.must_raise and (r.exc is None or in_user_code(r.exc)):
        # Invalid input must be rejected by fastdiffeq itself; what it returned (or the user's code did
        # with it) means nothing, so the metamorphic checks are skipped.
        for reason in call.must_raise:
            fail("accepted-invalid-input", reason)
        return ("returned" if r.exc is None else f"raised {type(r.exc).__name__} in user code"), fails
    if r.exc is not None:
        ok, label = classify(r.exc, call.level)
        outcome = f"raised {label}" if ok else "unclear error"
        if not ok:
            fail("unclear-error", label)
    else:
        outcome = "returned"
        for cls, expr in call.checks:
            try:
                good, why = bool(eval(expr, r.ns)), expr
            except Exception as e:
                good, why = False, f"{expr} raised {type(e).__name__}: {str(e)[:120]}"
            if not good:
                fail(cls, why)

    def same_outcome(a: Run, b: Run) -> bool:
        if (a.exc is None) != (b.exc is None):
            return False
        return type(a.exc) is type(b.exc) if a.exc is not None else same(a.obs, b.obs)

    def describe(x: Run) -> str:
        return "returned" if x.exc is None else f"raised {type(x.exc).__name__}: {str(x.exc)[:100]}"

    again = run_program(call, "repeat", emit)
    if not again.setup_error and not same_outcome(r, again):
        fail("nondeterministic", f"first {describe(r)}, then {describe(again)}"
             + (" (different values)" if r.exc is None and again.exc is None else ""))
    if r.exc is None and call.has_alias():
        c = run_program(call, "copies", emit)
        if not c.setup_error and not same_outcome(r, c):
            fail("alias-result-differs-from-copies", f"aliased {describe(r)}, copies {describe(c)}"
                 + (" (different values)" if c.exc is None else ""))
    if r.exc is None and call.meta_parity:
        m = run_program(call, "meta", emit)
        if m.setup_error:
            pass
        elif m.exc is not None:
            fail("meta-kernel-rejects-valid-call", f"{type(m.exc).__name__}: {str(m.exc)[:120]}", "meta")
        elif not same(r.obs, m.obs, shapes_only=True):
            fail("meta-kernel-output-shape", "outputs' shapes/dtypes differ from the CPU kernel's", "meta")
    if call.swap:
        s = run_program(call, "swap", emit)
        if not s.setup_error and not same_outcome(r, s):
            fail("field-returning-its-input-differs", f"{call.swap[0]}: {describe(r)}; {call.swap[1]}: {describe(s)}")
    return outcome, fails


def worker_main(job_path: str, log_path: str) -> None:
    import torch

    import fastdiffeq  # noqa: F401  (registers torch.ops.fastdiffeq)
    from fuzz.gen import make_call

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    with open(job_path) as f:
        keys = [tuple(k) for k in json.load(f)["keys"]]
    log = open(log_path, "a", buffering=1)

    def emit(rec: Dict[str, Any]) -> None:
        log.write(json.dumps(rec) + "\n")
        log.flush()

    for key in keys:
        try:
            call = make_call(*key)
        except Exception as e:
            emit({"ev": "end", "key": list(key), "outcome": f"generator-error: {type(e).__name__}: {e}"[:300],
                  "failures": []})
            continue
        outcome, fails = check_call(call, emit)
        emit({"ev": "end", "key": list(key), "outcome": outcome, "failures": fails})
        if any(f["cls"] in RESTART_AFTER for f in fails):
            break  # the call may have corrupted memory: the parent goes on in a fresh process
    log.close()


# ---------------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------------

_BOOT = ("import sys; sys.path.insert(0, {tests!r}); from fuzz.runner import worker_main; "
         "worker_main(sys.argv[1], sys.argv[2])")


@dataclass
class Record:
    key: Tuple
    outcome: str
    failures: List[Dict[str, str]]

    @property
    def target(self) -> str:
        return self.key[0]


def _signal_name(rc: int) -> str:
    if rc < 0:
        try:
            return signal.Signals(-rc).name
        except ValueError:
            pass
    return f"exit status {rc}"


def run_keys(keys: Sequence[Tuple], timeout: float, workdir: str, startup_timeout: float = 180.0) -> List[Record]:
    """Run `keys` in child processes, restarting after every crash or hang."""
    remaining = [tuple(k) for k in keys]
    records: List[Record] = []
    n_start = 0
    while remaining:
        n_start += 1
        job = os.path.join(workdir, f"job{n_start}.json")
        log = os.path.join(workdir, f"log{n_start}.jsonl")
        err = os.path.join(workdir, f"stderr{n_start}.txt")
        with open(job, "w") as f:
            json.dump({"keys": remaining}, f)
        open(log, "w").close()
        with open(err, "w") as errf:
            proc = subprocess.Popen([sys.executable, "-c", _BOOT.format(tests=TESTS_DIR), job, log],
                                    stdout=subprocess.DEVNULL, stderr=errf, start_new_session=True)
        finished, current, last_start, t_mark, buf, hung = set(), None, None, time.monotonic(), b"", False
        with open(log, "rb") as lf:
            while True:
                rc = proc.poll()
                buf += lf.read()
                *lines, buf = buf.split(b"\n")  # the last piece is an incomplete line (or b"")
                for line in lines:
                    rec = json.loads(line)
                    if rec["ev"] == "start":
                        current, last_start, t_mark = rec, rec, time.monotonic()
                    else:
                        key = tuple(rec["key"])
                        finished.add(key)
                        records.append(Record(key, rec["outcome"], rec["failures"]))
                        current, t_mark = None, time.monotonic()
                if rc is not None:
                    break
                limit = timeout if current is not None else startup_timeout
                if time.monotonic() - t_mark > limit:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    hung = True
                    break
                time.sleep(0.02)
        rc = proc.returncode
        with open(err, errors="replace") as f:
            tail = [ln for ln in f.read().splitlines() if ln.strip()][-3:]
        if current is not None and tuple(current["key"]) not in finished:
            key = tuple(current["key"])
            cls, detail = ("hang", f"no result after {timeout:g} s") if hung else \
                ("crash", _signal_name(rc) + (": " + " | ".join(tail)[-240:] if tail else ""))
            records.append(Record(key, cls, [{"cls": cls, "detail": detail, "program": current["program"],
                                              "variant": current["variant"]}]))
            finished.add(key)
        elif rc != 0 and last_start is not None:
            # Died between calls (typically freeing memory a call corrupted): blame the call that just ended.
            rec = next(r for r in reversed(records) if r.key == tuple(last_start["key"]))
            rec.failures.append({"cls": "crash", "detail": _signal_name(rc) + " after the call returned" + (
                ": " + " | ".join(tail)[-240:] if tail else ""), "program": last_start["program"],
                "variant": last_start["variant"]})
        elif rc != 0 or not finished:
            raise RuntimeError(f"fuzz worker failed outside any call ({_signal_name(rc)}): " + "\n".join(tail))
        remaining = [k for k in remaining if k not in finished]
    return records


def interleave(targets: Sequence[str], seeds: Sequence[int], calls: int) -> List[Tuple]:
    return [(t, s, i) for i in range(calls) for s in seeds for t in targets]


def campaign(keys: Sequence[Tuple], workers: int = 2, timeout: float = 20.0) -> List[Record]:
    """Run every key, `workers` children at a time; the records come back in key order."""
    workers = max(1, min(workers, len(keys)))
    chunks = [list(keys[w::workers]) for w in range(workers)]
    with tempfile.TemporaryDirectory(prefix="fde-fuzz-") as tmp:
        dirs = [os.path.join(tmp, str(w)) for w in range(workers)]
        for d in dirs:
            os.makedirs(d)
        with ThreadPoolExecutor(workers) as ex:
            parts = list(ex.map(lambda a: run_keys(a[0], timeout, a[1]), zip(chunks, dirs)))
    order = {tuple(k): n for n, k in enumerate(keys)}
    return sorted((r for p in parts for r in p), key=lambda r: order[r.key])


# ---------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------

def _norm(detail: str) -> str:
    d = re.sub(r"0x[0-9a-f]+", "0x?", detail)
    d = re.sub(r"-?\d+(\.\d+)?(e[+-]?\d+)?", "N", d)
    d = re.sub(r"\[[N, ]*\]", "[..]", d)
    return d[:140]


def failure_groups(records: Sequence[Record]) -> Dict[Tuple[str, str], List[Tuple[Record, Dict[str, str]]]]:
    """Failures grouped by (class, normalised detail); each group's list starts with its shortest program."""
    groups: Dict[Tuple[str, str], list] = collections.defaultdict(list)
    for r in records:
        for f in r.failures:
            detail = _norm(f["detail"])
            if f["cls"] in ("crash", "hang"):  # one group per target and signal (allocator messages vary)
                detail = f"{r.target}: {f['detail'].split(':')[0]}"
            elif f["cls"] == "accepted-invalid-input":  # one group per rule, whatever the values or names
                detail = re.split(r"[=:]", f["detail"])[0]
            groups[(f["cls"], detail)].append((r, f))
    for g in groups.values():
        g.sort(key=lambda rf: (len(rf[1]["program"]), rf[0].key))
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], -len(kv[1]))))


def outcome_counts(records: Sequence[Record]) -> Dict[str, collections.Counter]:
    counts: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in records:
        c = counts[r.target]
        c["calls"] += 1
        label = r.outcome.split(":")[0] if r.outcome.startswith(("setup-error", "generator-error")) else r.outcome
        label = re.sub(r"^raised (\w+)( in user code)?.*", r"raised \1\2", label)
        c[label] += 1
        for cls in sorted({f["cls"] for f in r.failures}):
            c["FAIL " + cls] += 1
        if r.failures:
            c["calls failing"] += 1
    return counts


def report(records: Sequence[Record], max_programs: int = 1, width: int = 100) -> str:
    out = []
    counts = outcome_counts(records)
    total = collections.Counter()
    out.append(f"{len(records)} calls")
    for target in sorted(counts):
        c = counts[target]
        total.update(c)
        out.append(f"  {target}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: kv[0])))
    out.append("  all: " + ", ".join(f"{k} {v}" for k, v in sorted(total.items())))
    groups = failure_groups(records)
    out.append(f"\n{len(groups)} distinct failures (class | detail | calls | targets):")
    for (cls, detail), items in groups.items():
        tg = collections.Counter(r.target for r, _ in items)
        out.append(f"\n[{cls}] {detail}\n  {len(items)} call(s); " + ", ".join(f"{t} x{n}" for t, n in tg.items()))
        for r, f in items[:max_programs]:
            out.append("  " + f["program"].replace("\n", "\n  "))
    return "\n".join(out)
