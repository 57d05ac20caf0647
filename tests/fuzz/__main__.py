"""Long fuzz campaign: ``python -m tests.fuzz [--calls N] [--seeds 0,1] [--targets a,b] [--workers 2] [--known-bugs]``.

Prints the counts per target and outcome and every distinct failure with its shortest reproducing
program; ``--json FILE`` also writes every record; ``--show KEY`` prints the program of one call
(KEY = target/seed/index, as in the reports). Exit status 1 when any call failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import runner  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=int(os.environ.get("FDE_FUZZ_CALLS", 1000)),
                    help="calls per target and seed (default: $FDE_FUZZ_CALLS or 1000)")
    ap.add_argument("--seeds", default=os.environ.get("FDE_FUZZ_SEEDS", "0"), help="comma-separated seeds")
    ap.add_argument("--targets", default="", help="comma-separated targets (default: all)")
    ap.add_argument("--workers", type=int, default=int(os.environ.get("FDE_FUZZ_WORKERS", 2)))
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a call counts as a hang")
    ap.add_argument("--programs", type=int, default=1, help="programs shown per distinct failure")
    ap.add_argument("--json", default="", help="write every record to this file")
    ap.add_argument("--show", default="", help="print the program of one call key target/seed/index and exit")
    ap.add_argument("--known-bugs", action="store_true",
                    help="also draw the mutations that reach known, unfixed library bugs (gen.KNOWN_BUGS; sets "
                         "FDE_FUZZ_KNOWN_BUGS=1, which --show needs too to print the same programs)")
    args = ap.parse_args(argv)
    if args.known_bugs:
        os.environ["FDE_FUZZ_KNOWN_BUGS"] = "1"  # before gen is imported; the workers inherit it

    import fastdiffeq  # noqa: F401  (registers the ops)
    from fuzz import gen

    if args.show:
        target, seed, i = args.show.rsplit("/", 2)
        print(gen.make_call(target, int(seed), int(i)).program())
        return 0
    targets = [t for t in args.targets.split(",") if t] or gen.targets()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    keys = runner.interleave(targets, seeds, args.calls)
    t0 = time.monotonic()
    records = runner.campaign(keys, workers=args.workers, timeout=args.timeout)
    print(runner.report(records, max_programs=args.programs))
    print(f"\n{len(records)} calls in {time.monotonic() - t0:.0f} s with {args.workers} worker(s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"key": r.key, "outcome": r.outcome, "failures": r.failures} for r in records], f)
    return 1 if any(r.failures for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
