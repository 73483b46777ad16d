"""Shared pieces of the daemon tests: inputs with known answers, a real simulator on its own thread,
``bulkd run`` as a real subprocess, and the end-state oracle.

Everything is real: the daemon is ``python -m bulkd run`` in a child process, the simulator is the
aiohttp server of :mod:`bulkd.hubsim` on loopback (on a thread of the test process, so it outlives
a daemon killed with SIGKILL), the ledger is the SQLite file the daemon wrote.

The oracle never trusts the daemon's own accounting: each input is generated together with the
records it must produce and the line numbers it must reject, and the simulator's object store is
read back byte for byte.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from bulkd.hubsim import Faults, RequestLogEntry, RunningSimulator, SimulatorConfig, start_simulator
from bulkd.hubsim.loader import DatasetStats
from bulkd.ledger import JobState, Ledger
from bulkd.secret import MASK, Secret

TOKEN = "bulkd-test-token-5f0c2e9a71d4"
"""The API token of every external simulator; swept for in every captured text."""

Record = dict[str, Any]
_T = TypeVar("_T")

CUSTOMER_HEADER = ["link.email", "first_name", "date_of_birth", "employee_flag"]
SIDE_FILES = (".report.json", ".rejects.ndjson")
"""What the daemon writes beside an archived source."""
TERMINAL_STATES = (JobState.ARCHIVED, JobState.DUPLICATE, JobState.FAILED)
_ACTIVE_STATES = tuple(s for s in JobState if s not in TERMINAL_STATES)


# -- inputs with known answers ------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """One inbox file and what must become of it: ``valid`` records and rejected ``bad_lines``."""

    rel: str
    """Path under the inbox: ``<dataset_id>/<record_type>/<name>``."""
    data: bytes
    valid: tuple[Record, ...]
    bad_lines: tuple[int, ...]
    bad_values: tuple[str, ...] = ()
    """Cell values of rejected rows; none may appear in rejects, reports or logs."""
    shown: str | None = None
    """The source name reports give when ``rel`` needs escaping (control characters)."""

    @property
    def source(self) -> str:
        return self.shown or self.rel

    @property
    def dataset_id(self) -> str:
        return self.rel.split("/")[0]

    @property
    def record_type(self) -> str:
        return self.rel.split("/")[1]

    @property
    def rows(self) -> int:
        return len(self.valid) + len(self.bad_lines)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def write(self, inbox: Path) -> Path:
        """Put the file into the inbox the careful way: written as ``.part``, renamed into place."""
        path = inbox / self.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        partial.write_bytes(self.data)
        partial.rename(path)
        return path


def _customer_cells(tag: str, i: int, bad_every: int) -> tuple[list[str], Record | None, str | None]:
    """Cells of customer row ``i``; every ``bad_every``-th row is invalid (a bad date or boolean)."""
    email = f"{tag}-{i}@example.com"
    flag = i % 2 == 0
    dob = f"{1950 + i % 50}-{1 + i % 12:02d}-{1 + i % 28:02d}"
    cells = [email.upper() if i % 5 == 0 else email, f"N{i}", dob, "yes" if flag else "no"]
    if bad_every and i % bad_every == bad_every // 2:
        if (i // bad_every) % 2:
            bad = f"{1950 + i % 50}-02-31"
            cells[2] = bad
        else:
            bad = f"maybe-{tag}-{i}"
            cells[3] = bad
        return cells, None, bad
    record: Record = {"link": {"email": email}, "first_name": f"N{i}", "date_of_birth": dob}
    record["employee_flag"] = flag
    return cells, record, None


def customer_csv(rel: str, rows: int, *, bad_every: int = 7, tag: str | None = None) -> InputFile:
    """A customer_record CSV (rows start on line 2); ``.gz`` in ``rel`` gzips it."""
    tag = tag or _tag(rel)
    lines = [",".join(CUSTOMER_HEADER)]
    valid: list[Record] = []
    bad_lines: list[int] = []
    bad_values: list[str] = []
    for i in range(rows):
        cells, record, bad = _customer_cells(tag, i, bad_every)
        lines.append(",".join(cells))
        if record is None:
            bad_lines.append(i + 2)
            bad_values.append(str(bad))
        else:
            valid.append(record)
    data = ("\n".join(lines) + "\n").encode()
    if rel.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    return InputFile(rel, data, tuple(valid), tuple(bad_lines), tuple(bad_values))


def customer_parquet(rel: str, rows: int, *, bad_every: int = 9, tag: str | None = None) -> InputFile:
    """The same customer rows as Parquet string columns (rejects count rows from 1)."""
    tag = tag or _tag(rel)
    columns: list[list[str]] = [[] for _ in CUSTOMER_HEADER]
    valid: list[Record] = []
    bad_lines: list[int] = []
    bad_values: list[str] = []
    for i in range(rows):
        cells, record, bad = _customer_cells(tag, i, bad_every)
        for column, cell in zip(columns, cells, strict=True):
            column.append(cell)
        if record is None:
            bad_lines.append(i + 1)
            bad_values.append(str(bad))
        else:
            valid.append(record)
    sink = io.BytesIO()
    table = pa.table(
        {name: pa.array(col, pa.string()) for name, col in zip(CUSTOMER_HEADER, columns, strict=True)}
    )
    pq.write_table(table, sink)
    return InputFile(rel, sink.getvalue(), tuple(valid), tuple(bad_lines), tuple(bad_values))


def email_ndjson(rel: str, rows: int, *, bad_every: int = 8, tag: str | None = None) -> InputFile:
    """email_send documents; every ``bad_every``-th line lacks ``email_id`` or is not JSON."""
    tag = tag or _tag(rel)
    lines: list[bytes] = []
    valid: list[Record] = []
    bad_lines: list[int] = []
    bad_values: list[str] = []
    for i in range(rows):
        doc: Record = {
            "link": {"email": f"{tag}-{i}@example.com"},
            "action_at": f"2024-05-{1 + i % 28:02d}T07:08:09Z",
            "email_id": f"{tag}-m{i}",
        }
        if i % bad_every == bad_every // 2:
            bad_lines.append(i + 1)
            if (i // bad_every) % 2:
                del doc["email_id"]
                lines.append(orjson.dumps(doc))
                bad_values.append(f"{tag}-{i}@example.com")
            else:
                lines.append(f'{{"link": broken-{tag}-{i}'.encode())
                bad_values.append(f"broken-{tag}-{i}")
            continue
        lines.append(orjson.dumps(doc))
        valid.append(doc)
    return InputFile(rel, b"\n".join(lines) + b"\n", tuple(valid), tuple(bad_lines), tuple(bad_values))


def _tag(rel: str) -> str:
    """A per-file marker (letters and digits) so that no two files produce the same record."""
    return re.sub(r"[^a-z0-9]", "", rel.lower())[-24:]


def canonical(record: Mapping[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def write_slowly(
    path: Path, data: bytes, pieces: int, interval: float
) -> tuple[threading.Thread, list[float]]:
    """Write ``data`` to ``path`` in ``pieces`` (cut mid-line), one every ``interval`` seconds.

    The first piece is written before this returns. Returns the writer thread and a list that
    receives the wall-clock time of the last write.
    """
    size = -(-len(data) // pieces)
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("wb")
    handle.write(parts[0])
    handle.flush()
    finished: list[float] = []

    def writer() -> None:
        with handle:
            for part in parts[1:]:
                time.sleep(interval)
                handle.write(part)
                handle.flush()
        finished.append(time.time())

    thread = threading.Thread(target=writer, name="slow-writer", daemon=True)
    thread.start()
    return thread, finished


# -- the simulator on its own thread ------------------------------------------------------------


class SimThread:
    """A real hub simulator served from a private event loop on a background thread.

    Tests stay synchronous (they wait on ``bulkd run`` subprocesses) while the simulator keeps
    serving, and it survives the daemon being killed.
    """

    def __init__(self, store_dir: Path, *, token: str = TOKEN, **options: Any) -> None:
        """``options`` are further :class:`SimulatorConfig` fields (faults, known_datasets...)."""
        self.store_dir = store_dir
        self.token = token
        self._config = SimulatorConfig(token=Secret(token), store_dir=store_dir, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hubsim", daemon=True)
        self._sim: RunningSimulator | None = None

    def __enter__(self) -> SimThread:
        self._thread.start()
        self._sim = self.call(start_simulator(self._config))
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()

    async def _shutdown(self) -> None:
        """Close the simulator, then end handlers of connections whose client was killed."""
        await self.sim.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def sim(self) -> RunningSimulator:
        assert self._sim is not None, "use SimThread as a context manager"
        return self._sim

    @property
    def base_url(self) -> str:
        return self.sim.base_url

    def call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=120)

    def _on_loop(self, fn: Any, *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return self.call(run())

    def set_faults(self, faults: Faults) -> None:
        self._on_loop(self.sim.set_faults, faults)

    def requests(self) -> list[RequestLogEntry]:
        result: list[RequestLogEntry] = self._on_loop(self.sim.requests)
        return result

    def stats(self, dataset_id: str) -> DatasetStats:
        self.call(self.sim.drain())
        result: DatasetStats = self._on_loop(self.sim.stats, dataset_id)
        return result

    def records(self, dataset_id: str) -> list[Record]:
        return self.call(self.sim.records(dataset_id))

    def objects(self) -> dict[str, bytes]:
        """Every stored object, by key (``<upload id>-<filename>``)."""
        self.call(self.sim.drain())
        return {p.name: p.read_bytes() for p in sorted((self.store_dir / "objects").iterdir())}


# -- the daemon as a subprocess -----------------------------------------------------------------


def dump_toml(doc: Mapping[str, Any]) -> str:
    """Just enough TOML for bulkd's config: scalars, string lists, tables and arrays of tables."""
    out: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str | Path):
            return orjson.dumps(str(v)).decode()
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    def table(name: str, body: Mapping[str, Any]) -> None:
        nested = []
        for key, v in body.items():
            if isinstance(v, Mapping):
                nested.append((f"{name}.{key}" if name else key, v))
            elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
                nested.extend((f"[{name}.{key}]", item) for item in v)
            else:
                out.append(f"{key} = {value(v)}")
        for sub, sub_body in nested:
            out.append(f"\n[{sub}]")
            table(sub.strip("[]"), sub_body)

    table("", doc)
    return "\n".join(out) + "\n"


def merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``overrides``, tables merged key by key."""
    out = dict(base)
    for key, v in overrides.items():
        if isinstance(v, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), v)
        else:
            out[key] = v
    return out


def base_settings(data_dir: Path, api_url: str | None = None) -> dict[str, Any]:
    """A fast test config: quick settle and polls, tiny backoffs, no status server, JSON debug logs."""
    doc: dict[str, Any] = {
        "data_dir": str(data_dir),
        "inbox": {"settle_seconds": 0.3, "poll_interval": 0.05},
        "convert": {"chunk_max_records": 1000},
        "upload": {
            "backoff_base": 0.01,
            "backoff_cap": 0.1,
            "retry_after_cap": 0.2,
            "requests_per_second": 500.0,
            "retry_delivery_after": 0.5,
        },
        "simulator": {"port": 0},
        "status": {"enabled": False},
        "service": {"log_format": "json", "log_level": "debug", "shutdown_grace_seconds": 5.0},
    }
    if api_url is not None:
        doc["upload"] |= {"api_url": api_url, "require_https": False}
    return doc


class _DataDir:
    """A directory under the daemon's data_dir (the config leaves every directory at its default)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, daemon: Daemon, owner: type[Daemon]) -> Path:
        return daemon.data_dir / self.name


@dataclass
class Daemon:
    """One daemon's directories and config; every run's output is kept in ``logs``."""

    root: Path
    settings: dict[str, Any]
    token: str | None = TOKEN
    """Put into ``BULKD_API_TOKEN`` for every run (None: not set)."""
    logs: list[str] = field(default_factory=list)

    @classmethod
    def create(
        cls, root: Path, sim: SimThread | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Daemon:
        settings = merge(base_settings(root / "data", sim.base_url if sim else None), overrides or {})
        daemon = cls(root, settings)
        daemon.write_config()
        return daemon

    def write_config(self) -> None:
        self.config_path.write_text(dump_toml(self.settings))

    @property
    def config_path(self) -> Path:
        return self.root / "bulkd.toml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    inbox = _DataDir("inbox")
    work = _DataDir("work")
    done = _DataDir("done")
    failed = _DataDir("failed")
    spool = _DataDir("spool")
    state = _DataDir("state")

    def env(self, crashpoint: str | None = None, token: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULKD_")}
        token = token if token is not None else self.token
        if token is not None:
            env["BULKD_API_TOKEN"] = token
        if crashpoint is not None:
            env["BULKD_CRASHPOINT"] = crashpoint
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bulkd", "run", "--config", str(self.config_path), *args]

    def run(
        self, *args: str, crashpoint: str | None = None, token: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``bulkd run --config ... ARGS`` to completion."""
        proc = subprocess.run(
            self.command(*args),
            env=self.env(crashpoint, token),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.logs.append(proc.stdout + proc.stderr)
        return proc

    def start(self, *args: str, crashpoint: str | None = None, token: str | None = None) -> Running:
        """``bulkd run`` in the background; use the result as a context manager."""
        number = len(self.logs)
        out = (self.root / f"run-{number}.log").open("wb")
        proc = subprocess.Popen(
            self.command(*args), env=self.env(crashpoint, token), cwd=self.root, stdout=out, stderr=out
        )
        out.close()
        self.logs.append("")
        return Running(self, proc, self.root / f"run-{number}.log", number)


@dataclass
class Running:
    """A daemon started in the background; its log lands in ``daemon.logs`` when it ends."""

    daemon: Daemon
    proc: subprocess.Popen[bytes]
    log_path: Path
    slot: int

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self.daemon.logs[self.slot] = self.log()
        return code

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        wait_until(lambda: text in self.log() or self.proc.poll() is not None, timeout, f"log line {text!r}")
        assert text in self.log(), f"the daemon ended (code {self.proc.returncode}) before logging {text!r}"


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def killed_by_sigkill(proc: subprocess.CompletedProcess[str] | int, crashpoint: str) -> None:
    code = proc if isinstance(proc, int) else proc.returncode
    assert code == -signal.SIGKILL, f"expected death by SIGKILL at {crashpoint}, got exit {code}"


# -- the oracle -------------------------------------------------------------------------------


def load_reports(directory: Path) -> dict[str, Record]:
    """Reports in ``directory`` by source name (an error if two reports name one source)."""
    reports: dict[str, Record] = {}
    for path in sorted(directory.glob("*.report.json")):
        doc = orjson.loads(path.read_bytes())
        assert doc["source"] not in reports, f"two reports for {doc['source']}"
        reports[doc["source"]] = doc
    return reports


def check_reports(files: Iterable[InputFile], done: Path) -> dict[str, Record]:
    """Every file archived in ``done`` with a report and rejects that account for every row."""
    reports = load_reports(done)
    for f in files:
        assert f.source in reports, f"no report for {f.source} (have {sorted(reports)})"
        r = reports[f.source]
        assert r["state"] == "archived", (f.rel, r["state"], r["error"])
        assert (r["dataset_id"], r["record_type"]) == (f.dataset_id, f.record_type)
        assert (r["rows"], r["records"], r["rejected"]) == (f.rows, len(f.valid), len(f.bad_lines)), f.rel
        assert r["rows"] == r["records_delivered"] + r["rejected"], f.rel
        assert r["content_sha256"] == f.sha256
        assert r["error"] is None
        assert r["chunks"], f.rel
        assert all(c["state"] == "delivered" and c["upload_id"] in c["upload_ids"] for c in r["chunks"])
        assert sum(c["records"] for c in r["chunks"]) == len(f.valid)
        assert sum(r["rejects_by_rule"].values()) == len(f.bad_lines)
        archived = [p for p in done.glob(f"{r['job_id']}*") if not p.name.endswith(SIDE_FILES)]
        assert [p.read_bytes() for p in archived] == [f.data], f"source of {f.rel} not archived intact"
        check_rejects(f, done, r)
    return reports


def check_rejects(f: InputFile, directory: Path, report: Record) -> None:
    """The rejects file names exactly the invalid lines, once each, with a rule and no cell value."""
    if not f.bad_lines:
        assert report["rejects_file"] is None
        return
    assert report["rejects_file"] == f"{report['job_id']}.rejects.ndjson"
    text = (directory / report["rejects_file"]).read_text()
    rejects = [orjson.loads(line) for line in text.splitlines()]
    assert sorted(r["line"] for r in rejects) == list(f.bad_lines), f"rejects of {f.rel}"
    assert all(r["rule"] and r["message"] for r in rejects)
    leaked = [v for v in f.bad_values if v in text]
    assert not leaked, f"cell values in the rejects of {f.rel}: {leaked[:3]}"


def check_store(
    sim: SimThread, files: Iterable[InputFile], reports: Mapping[str, Record], *, reput_ok: bool
) -> None:
    """The simulator holds every delivered chunk, nothing else, and exactly the valid records once.

    ``reput_ok``: the same chunk bytes may sit under several upload ids (a crash or lost reply after
    the store accepted a PUT forces a fresh upload); records are then counted once per chunk.
    """
    files = list(files)
    objects = sim.objects()
    # Object keys are "<upload id>-<chunk filename>"; equal bytes may belong to two datasets'
    # chunks, so objects are matched to chunks by name, then checked by hash.
    keys_by_chunk: dict[str, list[str]] = {}
    for key, body in objects.items():
        name = key.split("-", 1)[1]
        keys_by_chunk.setdefault(f"{name}:{hashlib.sha256(body).hexdigest()}", []).append(key)
    chunks = {f"{c['filename']}:{c['sha256']}": (r, c) for r in reports.values() for c in r["chunks"]}
    stray = set(keys_by_chunk) - set(chunks)
    assert not stray, f"objects that are no delivered chunk: {[keys_by_chunk[s] for s in stray]}"
    assert set(chunks) <= set(keys_by_chunk), "a delivered chunk is missing from the store"
    got: dict[str, Counter[bytes]] = {}
    for ident, keys in keys_by_chunk.items():
        report, chunk = chunks[ident]
        assert f"{chunk['upload_id']}-{chunk['filename']}" in keys
        assert {k.split("-", 1)[0] for k in keys} <= set(chunk["upload_ids"])
        if not reput_ok:
            assert len(keys) == 1, f"chunk {chunk['filename']} stored {len(keys)} times: {keys}"
        with gzip.open(io.BytesIO(objects[keys[0]])) as fh:
            records = [canonical(orjson.loads(line)) for line in fh]
        assert len(records) == chunk["records"]
        got.setdefault(report["dataset_id"], Counter()).update(records)
    datasets = {f.dataset_id for f in files}
    for ds in datasets:
        expected = Counter(canonical(r) for f in files if f.dataset_id == ds for r in f.valid)
        assert got.get(ds, Counter()) == expected, f"dataset {ds}: records differ from the valid rows"
        stats = sim.stats(ds)
        assert (stats.rejected, stats.failed_loads) == (0, 0), stats
        if not reput_ok:
            assert (stats.loaded, stats.duplicates) == (sum(expected.values()), 0), stats


def check_clean(daemon: Daemon, inbox_left: Iterable[str] = ()) -> None:
    """No temp files, empty work area and spool, only ``inbox_left`` in the inbox, a healthy ledger
    with every job finished."""
    inbox_left = sorted(inbox_left)
    ours = {daemon.inbox / name for name in inbox_left}
    temps = [p for p in daemon.data_dir.rglob("*") if p.name.endswith((".tmp", ".part")) and p not in ours]
    assert not temps, f"temp files left: {temps}"
    assert sorted(daemon.work.iterdir()) == [], "work area not empty"
    assert sorted(daemon.spool.iterdir()) == [], "spool not empty"
    assert inbox_entries(daemon.inbox) == inbox_left
    ledger = Ledger(daemon.state)
    try:
        assert ledger.integrity_check() == []
        unfinished = ledger.jobs_in_state(*_ACTIVE_STATES)
        assert unfinished == [], [(j.source_name, j.state) for j in unfinished]
    finally:
        ledger.close()


_SIGNED_VALUE = re.compile(r"(?i)(x-amz-[a-z-]+|signature)=(?!\*{8}|<redacted>)[^&\s'\"<>\\]+")


def secret_leaks(texts: Iterable[tuple[str, str]], tokens: Iterable[str]) -> list[str]:
    """Where a token or a URL signature (or any signed query value) appears, if anywhere."""
    tokens = [t for t in tokens if t and t != MASK]
    found: list[str] = []
    for where, text in texts:
        found += [f"{where}: the token" for token in tokens if token in text]
        found += [f"{where}: {m.group(0)[:40]}" for m in _SIGNED_VALUE.finditer(text)]
    return found


def swept_texts(daemon: Daemon, sim: SimThread | None = None) -> list[tuple[str, str]]:
    """Everything the token sweep reads: daemon output, reports, rejects, the ledger, the request log."""
    texts = [(f"daemon run {n}", log) for n, log in enumerate(daemon.logs)]
    for directory in (daemon.done, daemon.failed):
        texts += [(str(p), p.read_text(errors="replace")) for p in directory.glob("*.json")]
        texts += [(str(p), p.read_text(errors="replace")) for p in directory.glob("*.ndjson")]
    texts += [(str(p), p.read_bytes().decode("latin-1")) for p in daemon.state.glob("ledger.sqlite3*")]
    if sim is not None:
        log = orjson.dumps([e.to_json() for e in sim.requests()]).decode()
        texts.append(("simulator request log", log))
    return texts


def assert_no_secrets(daemon: Daemon, sim: SimThread | None = None, extra_tokens: Iterable[str] = ()) -> None:
    leaks = secret_leaks(swept_texts(daemon, sim), [TOKEN, *extra_tokens])
    assert not leaks, leaks


def check_end_state(
    daemon: Daemon,
    sim: SimThread,
    files: Iterable[InputFile],
    *,
    reput_ok: bool = False,
    inbox_left: Iterable[str] = (),
    extra_tokens: Iterable[str] = (),
) -> dict[str, Record]:
    """The whole oracle after a run: reports and rejects, the store, a clean tree, no secrets."""
    files = list(files)
    reports = check_reports(files, daemon.done)
    check_store(sim, files, reports, reput_ok=reput_ok)
    check_clean(daemon, inbox_left)
    assert_no_secrets(daemon, sim, extra_tokens)
    return reports


def json_log_lines(daemon: Daemon) -> list[Record]:
    """Every log line of every run, each of which must be one JSON object (no injected newlines)."""
    lines: list[Record] = []
    for log in daemon.logs:
        for line in log.splitlines():
            if line.startswith("bulkd: crash point"):
                continue
            lines.append(orjson.loads(line))
    return lines


def inbox_entries(inbox: Path) -> list[str]:
    """Everything under ``inbox`` that is not a directory (symlinks not followed), relative, sorted."""
    found: list[str] = []
    for top, dirs, names in os.walk(inbox):
        found += [os.path.relpath(os.path.join(top, n), inbox) for n in names]
        found += [
            os.path.relpath(os.path.join(top, d), inbox) for d in dirs if os.path.islink(os.path.join(top, d))
        ]
    return sorted(found)
