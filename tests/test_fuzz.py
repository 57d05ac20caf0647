"""Seeded, bounded fuzz test of every fastdiffeq op and entry point (issue 14 / F12, issue 6 / F9).

Every op in torch.ops.fastdiffeq (arguments generated from its schema), every solver entry point of _C
(rk_solve, rk_checkpoint_backward, rk_adjoint, all_finite and the per-sample rk_solve_per_sample,
rk_checkpoint_backward_per_sample, rk_adjoint_per_sample), odeint, odeint_adjoint, solve_ivp and odeint_event, the SDE
solvers sdeint / sdeint_adjoint, the Brownian motions (BrownianInterval, BrownianPath, BrownianTree), _C.NativeMLP and
_C.NativeCNF get CI_CALLS random calls each (seeds CI_SEEDS),
run in child interpreters so that a segfault or an abort is a reported failure with its reproducing
program, and a call that does not finish within TIMEOUT seconds is a reported hang (a hang detector,
far above any call's run time; nothing here asserts speed). The oracles are in tests/fuzz/runner.py.

A failure prints, per distinct problem, a standalone program that reproduces it (run it from the
repository root). The long campaign: ``python -m tests.fuzz --calls 2000`` (or FDE_FUZZ_CALLS=... here).
Mutations that reach known, unfixed library bugs (gen.KNOWN_BUGS) are drawn only with FDE_FUZZ_KNOWN_BUGS=1.
"""

from __future__ import annotations

import os
import sys

import pytest

import fastdiffeq  # noqa: F401  (registers torch.ops.fastdiffeq)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fuzz import gen, runner  # noqa: E402

CI_SEEDS = (0,)
CI_CALLS = int(os.environ.get("FDE_FUZZ_CALLS", 30))  # per target and seed
TIMEOUT = float(os.environ.get("FDE_FUZZ_TIMEOUT", 10))
WORKERS = int(os.environ.get("FDE_FUZZ_WORKERS", 2))
TARGETS = gen.targets()


@pytest.fixture(scope="module")
def records():
    return runner.campaign(runner.interleave(TARGETS, CI_SEEDS, CI_CALLS), workers=WORKERS, timeout=TIMEOUT)


def _failure_report(records, total: int) -> str:
    groups = runner.failure_groups(records)
    lines = [f"{len(records)} of {total} fuzz calls failed; {len(groups)} distinct problem(s), each with its "
             "shortest reproducing program (run from the repository root):"]
    for (cls, detail), items in groups.items():
        lines.append(f"\n[{cls}] {detail} ({len(items)} call(s))")
        lines.append("  " + items[0][1]["program"].replace("\n", "\n  "))
    return "\n".join(lines)


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz(records, target):
    mine = [r for r in records if r.target == target]
    assert len(mine) == CI_CALLS * len(CI_SEEDS)
    failing = [r for r in mine if r.failures]
    if failing:
        pytest.fail(_failure_report(failing, len(mine)), pytrace=False)


def test_fuzz_generator_builds_every_call(records):
    # A call the generator cannot even build (a new argument type, a stale hint) is a harness bug.
    bad = [f"{'/'.join(map(str, r.key))}: {r.outcome}" for r in records
           if r.outcome.startswith(("setup-error", "generator-error"))]
    assert not bad, "\n".join(bad)


def test_fuzz_is_not_vacuous(records):
    # Each target both returns and raises on some calls: the baseline calls are valid, the mutations bite.
    for target in TARGETS:
        outcomes = [r.outcome for r in records if r.target == target]
        assert any(o == "returned" for o in outcomes), f"{target}: no call returned"
        assert any(o != "returned" for o in outcomes), f"{target}: every call returned"


def test_every_op_is_a_target():
    import torch

    ops = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastdiffeq::")}
    assert {f"op:{n}" for n in ops} <= set(TARGETS)
    assert {"rk_solve", "rk_checkpoint_backward", "odeint", "odeint_adjoint", "solve_ivp", "odeint_event"} <= set(TARGETS)
    # The Python entry points that are not ops or _C functions (test_every_C_entry_point_is_a_target skips classes).
    assert {"sdeint", "sdeint_adjoint", "BrownianInterval", "BrownianPath", "BrownianTree", "NativeMLP",
            "NativeCNF"} <= set(TARGETS)


def test_every_op_argument_has_a_hint():
    # Unknown argument names are still fuzzed by their type, but valid baselines need the hint table.
    missing = [f"{op}.{a.name}" for op, s in gen.op_schemas().items() for a in s.arguments
               if a.name not in gen.HINTS]
    assert not missing, f"add these argument names to tests/fuzz/gen.py HINTS: {missing}"


def test_generation_is_deterministic():
    for target in TARGETS:
        a = [gen.make_call(target, 0, i).program() for i in range(5)]
        assert a == [gen.make_call(target, 0, i).program() for i in range(5)]
        assert len(set(a)) > 1


def test_harness_catches_each_kind_of_failure():
    # Programs with a known defect (gen._selftest): each must be reported with the right class, and the
    # harness must survive the crash and the hang to judge the calls after them.
    expected = {
        "crash": "crash", "hang": "hang", "unclear": "unclear-error", "clear": None,
        "nondeterministic": "nondeterministic", "accepted": "accepted-invalid-input",
        "alias": "alias-result-differs-from-copies", "oob": "out-of-bounds-write", "check": "wrong-output-shape",
        "meta": "meta-kernel-rejects-valid-call", "swap": "field-returning-its-input-differs",
    }
    recs = runner.campaign([(f"selftest:{k}", 0, 0) for k in expected], workers=WORKERS, timeout=5.0)
    got = {r.target.split(":", 1)[1]: sorted({f["cls"] for f in r.failures}) for r in recs}
    assert got == {k: [v] if v else [] for k, v in expected.items()}
    crash = next(r for r in recs if r.target == "selftest:crash")
    assert "os').abort()" in crash.failures[0]["program"]  # the culprit's program is in the report


def test_every_C_entry_point_is_a_target():
    # A new solver entry point in _C needs an argument builder in tests/fuzz/gen.py (ENTRY_POINTS).
    from fastdiffeq import _C

    not_fuzzed = {"tableau"}  # a lookup by name, covered by test_ops.py
    entry = {n for n in dir(_C) if not n.startswith("_") and callable(getattr(_C, n))
             and not isinstance(getattr(_C, n), type)}
    assert entry - not_fuzzed <= set(TARGETS), f"add fuzz targets for: {sorted(entry - not_fuzzed - set(TARGETS))}"


def test_known_bugs_are_gated():
    # Each known library bug names the mutations that reach it (gen._known) and says what is wrong.
    import inspect

    src = inspect.getsource(gen)
    for bug, what in gen.KNOWN_BUGS.items():
        assert f'_known("{bug}")' in src, f"KNOWN_BUGS[{bug!r}] gates no mutation"
        assert what.strip(), bug
