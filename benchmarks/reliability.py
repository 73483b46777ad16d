"""The reliability figures of issue 6: the fault matrix ``bulkd selftest`` prints.

    python -m benchmarks.reliability            # the full matrix (a few minutes on 2 cores)
    python -m benchmarks.reliability --quick    # the CI-sized matrix (about a minute)
    python -m benchmarks.reliability --seed 7   # another reproducible draw of random kills and soaks

Each row runs the real daemon against the Lexer simulator with one fault injected (a crash
point, SIGKILLs at random times, HTTP errors, resets, expiring URLs, or a random mix), restarts
it until the inbox is drained and checks that every valid record arrived exactly once. The exit
status is 0 only when every scenario kept every promise.
"""

from __future__ import annotations

import argparse
import sys

from bulkd.selftest import run_selftest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reliability", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="the smaller matrix CI can afford")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random kills and soak cases")
    args = parser.parse_args(argv)
    return run_selftest(sys.stdout, quick=args.quick, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
