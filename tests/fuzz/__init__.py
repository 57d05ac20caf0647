"""fastdiffeq's fuzz harness (issue 14 / F12): seeded random calls of every op and entry point, run in
child processes, judged by oracles (no crash, no hang, clear errors, no silent wrong answers).

- helpers.py: what a generated program imports (tensor builder ``mk``, fields ``F``, ``api_call``, checks);
- gen.py: deterministic call generation (schema-driven for the ops, one builder per entry point);
- runner.py: child processes, oracles, campaigns and reports;
- __main__.py: the long campaign, ``python -m tests.fuzz --calls N`` (from the repository root).

The CI test is tests/test_fuzz.py.
"""
