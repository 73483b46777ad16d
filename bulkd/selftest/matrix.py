"""The fault matrix ``bulkd selftest`` runs and prints: the figures bulkd publishes.

Each row is one injected fault (a crash point, a SIGKILL at a random time, a simulator fault
or a random mix), run end to end against the real daemon: records in, records delivered,
duplicates (the same record in two different chunks: must be 0), re-sent chunks (the same
chunk's bytes stored again under a second upload id that the ledger recorded and the report
lists: at-least-once delivery after the daemon died between a PUT and its ledger commit, or
after a PUT's answer was lost and its URL expired before the retry), and records lost (must be 0).
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from bulkd.hubsim import Faults, RetryAfterForm
from bulkd.selftest.scenario import Outcome, Scenario, random_scenario, run_scenario

__all__ = ["all_crashpoints", "fault_matrix", "format_matrix", "run_matrix", "run_selftest"]

NTH_PASSES = (
    "chunk.renamed:3",
    "upload.created:3",
    "upload.put.body:4",
    "upload.put.done:3",
    "ledger.txn.committed:12",
    "ledger.txn.written:20",
)
"""Crash points worth hitting later than their first pass (mid-job rather than at its start)."""

SIMULATOR_FAULTS: tuple[tuple[str, Faults], ...] = (
    (
        "HTTP 500/503 on 20% of POSTs and PUTs",
        Faults(post_errors={500: 0.1, 503: 0.1}, put_errors={500: 0.1, 503: 0.1}),
    ),
    ("HTTP 429 + Retry-After (seconds) on 20%", Faults(throttle_rate=0.2)),
    (
        "HTTP 429 + Retry-After (HTTP date) on 20%",
        Faults(throttle_rate=0.2, retry_after_form=RetryAfterForm.HTTP_DATE),
    ),
    ("connection reset mid-body on 20% of PUTs", Faults(reset_rate=0.2)),
    ("PUT stored, then connection reset (20%)", Faults(reset_after_body_rate=0.2)),
    ("presigned URLs expire within 1 s", Faults(url_ttl_seconds=1.0, latency_seconds=0.25)),
    (
        "PUT stored, answer lost, URL expired before the retry",
        Faults(reset_after_body_rate=0.3, url_ttl_seconds=1.0, latency_seconds=0.3),
    ),
    (
        "20% 500/503/429/resets + expiring URLs",
        Faults(
            post_errors={500: 0.05, 503: 0.05},
            put_errors={500: 0.05, 503: 0.05},
            throttle_rate=0.05,
            reset_rate=0.05,
            url_ttl_seconds=1.0,
            latency_seconds=0.1,
        ),
    ),
)
_QUICK_FAULTS = (0, 3, 4, 7)


def all_crashpoints() -> tuple[str, ...]:
    """Every crash point the daemon declares (importing the modules that declare them)."""
    import bulkd.chunk
    import bulkd.inbox
    import bulkd.jobs
    import bulkd.ledger
    import bulkd.service
    import bulkd.upload
    from bulkd import durable

    del bulkd
    return tuple(sorted(durable.CRASHPOINTS))


def fault_matrix(*, quick: bool, seed: int) -> list[Scenario]:
    """The scenarios of one self-test run; ``seed`` makes the whole matrix reproducible."""
    seeds = _seeds(seed)
    scenarios = [Scenario("none (baseline)", next(seeds))]
    for index, (label, faults) in enumerate(SIMULATOR_FAULTS):
        if not quick or index in _QUICK_FAULTS:
            scenarios.append(Scenario(label, next(seeds), faults=faults))
    points = list(all_crashpoints()) + ([] if quick else list(NTH_PASSES))
    scenarios += [Scenario(f"crash point {p}", next(seeds), crashpoint=p) for p in points]
    for point in ("job.convert.batch", "upload.put.done") if not quick else ():
        label = f"purchases (order lines fold into records), crash point {point}"
        scenarios.append(
            Scenario(label, next(seeds), crashpoint=point, record_type="purchase", rows=(80, 300))
        )
    rng = random.Random(seed)
    busy = Faults(latency_seconds=0.1)  # uploads take a few seconds, so most kills land mid-work
    for _ in range(2 if quick else 5):
        kills = tuple(round(rng.uniform(0.4, 2.5), 2) for _ in range(rng.randint(1, 3)))
        label = f"SIGKILL at random times ({', '.join(f'{k:.1f}s' for k in kills)})"
        scenarios.append(
            Scenario(label, next(seeds), faults=busy, kill_times=kills, files=6, rows=(200, 500))
        )
    crashpoints = all_crashpoints()
    scenarios += [random_scenario(next(seeds), crashpoints) for _ in range(2 if quick else 8)]
    return scenarios


def _seeds(seed: int) -> Iterator[int]:
    count = 0
    while True:
        count += 1
        yield seed * 1000 + count


async def run_matrix(scenarios: list[Scenario], workdir: Path, out: TextIO | None = None) -> list[Outcome]:
    """Run the scenarios one after another (each in its own directory under ``workdir``)."""
    outcomes: list[Outcome] = []
    for number, scenario in enumerate(scenarios, start=1):
        outcome = await run_scenario(scenario, workdir / f"s{number:03d}")
        outcomes.append(outcome)
        if out is not None:
            verdict = "ok" if outcome.ok else "FAILED"
            out.write(f"[{number}/{len(scenarios)}] {scenario.name}: {verdict} ({outcome.seconds:.1f}s)\n")
            out.flush()
        if outcome.ok:
            shutil.rmtree(workdir / f"s{number:03d}", ignore_errors=True)
    return outcomes


_HEADER = ("fault injected", "runs", "records in", "delivered", "duplicates", "re-sent", "lost", "result")


def _label(outcome: Outcome) -> str:
    """The scenario's name, and for planned SIGKILLs how many landed before the run ended by itself."""
    planned = len(outcome.scenario.kill_times)
    if not planned:
        return outcome.scenario.name
    landed = sum(run.killed_after is not None for run in outcome.runs)
    return f"{outcome.scenario.name} [{landed}/{planned} landed]"


def format_matrix(outcomes: list[Outcome]) -> str:
    """The fault matrix as a plain-text table with a totals row."""
    rows = [
        (
            _label(o),
            len(o.runs),
            o.tally.records_in,
            o.tally.delivered,
            o.tally.duplicates,
            o.tally.resent,
            o.tally.lost,
            "ok" if o.ok else "FAILED",
        )
        for o in outcomes
    ]
    total = (
        f"total ({len(outcomes)} scenarios)",
        *(sum(int(str(r[i])) for r in rows) for i in range(1, 7)),
        "ok" if all(o.ok for o in outcomes) else f"{sum(not o.ok for o in outcomes)} FAILED",
    )
    table = [_HEADER, *rows, total]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(_HEADER))]

    def line(row: tuple[object, ...]) -> str:
        cells = [
            str(v).ljust(w) if i == 0 else str(v).rjust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(_HEADER), rule, *(line(r) for r in rows), rule, line(total)]) + "\n"


def run_selftest(out: TextIO, *, quick: bool, seed: int) -> int:
    """``bulkd selftest``: run the fault matrix, print it, return 0 only when every promise held."""
    scenarios = fault_matrix(quick=quick, seed=seed)
    out.write(f"bulkd selftest: {len(scenarios)} scenarios, seed {seed}{' (quick)' if quick else ''}\n")
    started = time.monotonic()
    quiet = logging.getLogger("aiohttp")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the simulator's view of connections the daemon dropped on purpose
    workdir = Path(tempfile.mkdtemp(prefix="bulkd-selftest-"))
    try:
        outcomes = asyncio.run(run_matrix(scenarios, workdir, out))
    finally:
        quiet.setLevel(level)
    out.write("\n" + format_matrix(outcomes))
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        out.write("\n" + outcome.explain() + "\n")
    if failed:
        out.write(f"\nworking directories kept in {workdir}\n")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    resent = sum(o.tally.resent for o in outcomes)
    out.write(
        f"\n{len(outcomes) - len(failed)}/{len(outcomes)} scenarios held every promise in "
        f"{time.monotonic() - started:.0f}s (seed {seed}). "
        f"re-sent = a chunk stored again under a second upload id, which its report lists "
        f"(a kill between PUT and ledger commit, or a lost PUT answer and an expired URL): {resent} in all.\n"
    )
    return 1 if failed else 0
