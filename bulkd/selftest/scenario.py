"""One reliability scenario: seeded inputs, a faulty simulator, a daemon killed and restarted until drained.

:func:`run_scenario` drops the inputs into a fresh inbox, runs ``bulkd run --once`` against an
in-process simulator with the scenario's faults, arms the first run with a crash point or kills
runs at given times, and keeps restarting until the inbox is drained (or ``max_runs`` is
reached). After every run it checks the invariants that must hold between runs, and at the end
the full oracle (:mod:`bulkd.selftest.oracle`). Everything random comes from ``seed``, which
every failure message names.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bulkd.hubsim import DatasetStats, Faults, RunningSimulator, SimulatorConfig, start_simulator
from bulkd.secret import Secret
from bulkd.selftest.daemon import RunRecord, Tuning, Workspace, run_daemon
from bulkd.selftest.inputs import (
    FORMATS,
    RECORD_TYPE,
    InputFile,
    InputSet,
    drop_into_inbox,
    generate_inputs,
)
from bulkd.selftest.oracle import (
    LedgerView,
    StoredObject,
    Tally,
    check_final,
    check_progress,
    read_store,
    tally,
)

__all__ = ["Outcome", "Rig", "Scenario", "random_scenario", "run_scenario"]

_NO_FAULTS = Faults()


@dataclass(frozen=True, slots=True)
class Scenario:
    """What to inject; every field has a quiet default, so a scenario states only its fault."""

    name: str
    seed: int = 0
    faults: Faults = _NO_FAULTS
    crashpoint: str | None = None
    """``name`` or ``name:N``: the first run dies there."""
    must_crash: bool = True
    """Whether the first run must reach ``crashpoint`` (a random N-th pass may lie beyond the work)."""
    kill_times: tuple[float, ...] = ()
    """The k-th run is SIGKILLed after ``kill_times[k]`` seconds (if still running)."""
    files: int = 3
    late_files: int = 0
    """Extra files dropped while the first run is under way."""
    rows: tuple[int, int] = (60, 160)
    invalid_ratio: float = 0.1
    formats: tuple[str, ...] = FORMATS
    record_type: str = RECORD_TYPE
    tuning: Tuning = field(default_factory=Tuning)
    max_runs: int = 12
    run_timeout: float = 120.0
    expect_delivery: bool = True
    """False when the fault must make every job fail (e.g. a presigned URL on a forbidden host)."""


@dataclass(slots=True)
class Outcome:
    """How a scenario went: the figures for the matrix, and every broken promise."""

    scenario: Scenario
    workspace: Workspace
    inputs: InputSet
    tally: Tally
    stats: DatasetStats
    problems: list[str]
    seconds: float

    @property
    def runs(self) -> list[RunRecord]:
        return self.workspace.runs

    @property
    def ok(self) -> bool:
        return not self.problems

    def explain(self) -> str:
        """A failure message: the seed to replay, each run's end, the problems, the last log lines."""
        s = self.scenario
        lines = [
            f"scenario {s.name!r} failed (seed {s.seed}; replay: Scenario(name=..., seed={s.seed}, ...))"
        ]
        for run in self.runs:
            how = f"exit {run.exit_code}"
            if run.crashed_at:
                how += f", crashed at {run.crashed_at}"
            if run.killed_after is not None:
                how += f", killed after {run.killed_after:.2f}s"
            lines.append(f"  run {run.number}: {how} ({run.seconds:.1f}s, log {run.log})")
        lines += [f"  problem: {p}" for p in self.problems[:20]]
        if self.runs and self.runs[-1].log.exists():
            tail = self.runs[-1].log.read_text(errors="replace").splitlines()[-15:]
            lines += ["  last log lines:", *(f"    {line[:300]}" for line in tail)]
        return "\n".join(lines)


class Rig:
    """A simulator in this process plus one daemon workspace: what scenarios and hand-written tests drive."""

    def __init__(self, sim: RunningSimulator, ws: Workspace, store: Path) -> None:
        self.sim = sim
        self.ws = ws
        self.store = store

    @classmethod
    async def start(
        cls,
        root: Path,
        *,
        faults: Faults = _NO_FAULTS,
        tuning: Tuning | None = None,
        data: Path | None = None,
        token: Secret | None = None,
    ) -> Rig:
        """Start the simulator and write the daemon's config under ``root`` (a fresh directory)."""
        token = token or Secret(f"tok{secrets.token_hex(12)}")
        store = root / "hubsim"
        sim = await start_simulator(SimulatorConfig(token=token, store_dir=store, faults=faults))
        ws = Workspace(root / "daemon", api_url=sim.base_url, token=token, tuning=tuning, data=data)
        ws.prepare()
        return cls(sim, ws, store)

    async def __aenter__(self) -> Rig:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sim.close()

    async def objects(self, dataset_id: str) -> list[StoredObject]:
        """What the simulator holds for the dataset, once every load in flight is merged."""
        await self.sim.drain()
        return read_store(self.store, dataset_id)

    async def progress_problems(self, inputs: InputSet) -> list[str]:
        """:func:`check_progress` now (no daemon may be running: the ledger read takes its lock)."""
        return check_progress(
            self.ws, inputs, await self.objects(inputs.dataset_id), LedgerView.read(self.ws.state)
        )

    async def final_problems(self, inputs: InputSet, *, expect_delivery: bool = True) -> list[str]:
        """:func:`check_final` plus the simulator's own view: it refused nothing bulkd sent."""
        objects = await self.objects(inputs.dataset_id)
        view = LedgerView.read(self.ws.state)
        problems = check_final(self.ws, inputs, objects, view, expect_delivery=expect_delivery)
        stats = self.sim.stats(inputs.dataset_id)
        if stats.rejected or stats.failed_loads:
            problems.append(
                f"the simulator rejected {stats.rejected} record(s), {stats.failed_loads} load(s)"
            )
        return problems


async def run_scenario(scenario: Scenario, root: Path) -> Outcome:
    """Run ``scenario`` in ``root`` (a fresh directory) and check the oracle."""
    started = time.monotonic()
    rng = random.Random(scenario.seed)
    token = Secret(f"tok{rng.getrandbits(96):024x}")
    async with await Rig.start(root, faults=scenario.faults, tuning=scenario.tuning, token=token) as rig:
        inputs = generate_inputs(
            rng,
            dataset_id=f"st{scenario.seed % 10**8}",
            files=scenario.files + scenario.late_files,
            rows=scenario.rows,
            invalid_ratio=scenario.invalid_ratio,
            formats=scenario.formats,
            record_type=scenario.record_type,
        )
        drop_into_inbox(rig.ws.inbox, inputs.files[: scenario.files])
        problems = await _drive(scenario, rig, inputs, late_delay=rng.uniform(0.3, 1.5))
        if not problems:
            problems = await rig.final_problems(inputs, expect_delivery=scenario.expect_delivery)
        counts = tally(inputs, await rig.objects(inputs.dataset_id))
        stats = rig.sim.stats(inputs.dataset_id)
    return Outcome(scenario, rig.ws, inputs, counts, stats, problems, time.monotonic() - started)


async def _drive(scenario: Scenario, rig: Rig, inputs: InputSet, *, late_delay: float) -> list[str]:
    """Run, check, restart until drained; returns the problems seen between runs."""
    ws = rig.ws
    late_drop: asyncio.Task[None] | None = None
    if scenario.late_files:
        late = inputs.files[scenario.files :]
        late_drop = asyncio.create_task(_drop_later(ws.inbox, late, late_delay))
    try:
        for index in range(scenario.max_runs):
            crash = scenario.crashpoint if index == 0 else None
            kill = scenario.kill_times[index] if index < len(scenario.kill_times) else None
            run = await run_daemon(ws, crashpoint=crash, kill_after=kill, timeout=scenario.run_timeout)
            if index == 0 and late_drop is not None:
                await late_drop
            problems = _run_problems(run, crash if scenario.must_crash else None)
            problems += await rig.progress_problems(inputs)
            if problems:
                return [f"after run {run.number}: {p}" for p in problems]
            drained = _drained(ws)
            if run.exit_code in (0, 1) and drained:
                return []
            if run.exit_code == 0 and (index > 0 or not scenario.late_files):
                return [f"run {run.number} exited 0 (--once: all delivered) but left work behind"]
        return [f"not drained after {scenario.max_runs} runs"]
    finally:
        if late_drop is not None and not late_drop.done():
            late_drop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await late_drop


async def _drop_later(inbox: Path, files: tuple[InputFile, ...], delay: float) -> None:
    await asyncio.sleep(delay)
    await asyncio.to_thread(drop_into_inbox, inbox, files)


def _run_problems(run: RunRecord, crash: str | None) -> list[str]:
    if run.timed_out:
        return [f"run {run.number} did not finish within its timeout (hung?)"]
    if run.exit_code == 2:
        return [f"run {run.number} refused to start (exit 2)"]
    if crash is not None and run.crashed_at != crash.split(":")[0]:
        return [f"run {run.number} never reached crash point {crash} (exit {run.exit_code})"]
    if run.exit_code not in (0, 1) and not run.killed:
        return [f"run {run.number} ended with exit status {run.exit_code}"]
    log = run.log.read_bytes() if run.log.exists() else b""
    if not run.killed and b"bulkd running" not in log:
        last = (log.strip().splitlines()[-1:] or [b"(no output)"])[0][:300].decode(errors="replace")
        return [f"run {run.number} exited {run.exit_code} without starting: {last}"]
    if run.killed and run.crashed_at is None and run.killed_after is None:
        return [f"run {run.number} was killed by something else"]
    return []


def _drained(ws: Workspace) -> bool:
    """No candidate left in the inbox and nothing claimed in the work area."""
    for root in (ws.inbox, ws.work):
        for path in root.rglob("*"):
            if path.is_file() and not path.name.startswith(".") and not path.name.endswith(".part"):
                return False
    return True


_FAULT_MENU: tuple[tuple[str, Faults], ...] = (
    ("none", _NO_FAULTS),
    ("5xx", Faults(post_errors={500: 0.1, 503: 0.1}, put_errors={500: 0.1, 503: 0.1})),
    ("429", Faults(throttle_rate=0.2)),
    ("reset", Faults(reset_rate=0.2)),
    ("reset-after-body", Faults(reset_after_body_rate=0.2)),
    ("expiring-urls", Faults(url_ttl_seconds=1.0, latency_seconds=0.1)),
)


def random_scenario(seed: int, crashpoints: tuple[str, ...] = ()) -> Scenario:
    """A soak case: random inputs × random simulator faults × random kill times (or a crash point)."""
    rng = random.Random(seed)
    picked = rng.sample(_FAULT_MENU, rng.randint(1, 2))
    faults = _NO_FAULTS
    for _, extra in picked:
        faults = _merge(faults, extra)
    faults = replace(faults, seed=seed)
    crash = None
    kills: tuple[float, ...] = tuple(round(rng.uniform(0.3, 1.5), 2) for _ in range(rng.randint(0, 3)))
    if crashpoints and rng.random() < 0.3:
        crash = f"{rng.choice(crashpoints)}:{rng.randint(1, 3)}"
        kills = ()
    record_type = rng.choice(("email_open", "email_open", "purchase"))
    tuning = Tuning(
        chunk_max_records=rng.choice((25, 60, 150)),
        upload_concurrency=rng.choice((1, 4, 8)),
        parallel_files=rng.choice((1, 2)),
    )
    label = "+".join(name for name, _ in picked)
    label += ", purchases" if record_type == "purchase" else ""
    label += f", crash {crash}" if crash else f", {len(kills)} kill(s)"
    return Scenario(
        name=f"soak {seed}: {label}",
        seed=seed,
        faults=faults,
        crashpoint=crash,
        must_crash=False,
        kill_times=kills,
        files=rng.randint(2, 4),
        late_files=rng.randint(0, 2),
        rows=(20, rng.choice((80, 200))),
        record_type=record_type,
        invalid_ratio=rng.choice((0.0, 0.05, 0.3)),
        tuning=tuning,
        max_runs=20,
    )


def _merge(a: Faults, b: Faults) -> Faults:
    """Both sets of knobs at once (rates of the same status add up)."""
    post = {
        k: a.post_errors.get(k, 0.0) + b.post_errors.get(k, 0.0) for k in {*a.post_errors, *b.post_errors}
    }
    put = {k: a.put_errors.get(k, 0.0) + b.put_errors.get(k, 0.0) for k in {*a.put_errors, *b.put_errors}}
    return replace(
        a,
        post_errors=post,
        put_errors=put,
        throttle_rate=a.throttle_rate + b.throttle_rate,
        reset_rate=a.reset_rate + b.reset_rate,
        reset_after_body_rate=a.reset_after_body_rate + b.reset_after_body_rate,
        url_ttl_seconds=b.url_ttl_seconds if b.url_ttl_seconds is not None else a.url_ttl_seconds,
        latency_seconds=max(a.latency_seconds, b.latency_seconds),
    )
