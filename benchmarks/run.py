"""Run bulkd and its peers on the same generated files, in one invocation, and print one table.

    python -m benchmarks.run --rows 1000000 [--peers duckdb,polars,...] [--skip-upload] [--json out.json]

Why one invocation: absolute rows/s move with the machine, its load and its thermal state, so
the targets are stated as *ratios within one run* (bulkd ÷ peer, bulkd ÷ limit). Every tool
runs in its own child process, one at a time, on the same file; the parent measures wall time
from spawn to exit (interpreter start-up included, as a user would see it), CPU seconds (user +
sys of the child and the processes it waited for) and peak RSS (the larger of the child's own
``ru_maxrss`` and the sampled sum over its process tree, so a multi-process tool is not
flattered). Each output is then checked: records out against the planted count of valid rows,
and a sample of records against bulkd's schema.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import datagen
from benchmarks.peers import DESCRIPTIONS, LEXER_PYDANTIC, VALIDATES

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO / "bench-data"
ALL_PEERS = ("duckdb", "polars", "pandas", "python", "lexer")
RSS_SAMPLE_SECONDS = 0.1
CHECK_SAMPLE_RECORDS = 5_000


@dataclass(frozen=True, slots=True)
class Input:
    """One benchmark input: a workload in one file format, and which peers can convert it."""

    key: str
    workload: datagen.Workload
    fmt: str
    peers: tuple[str, ...]


INPUTS: dict[str, Input] = {
    i.key: i
    for i in (
        Input("customer_csv", datagen.CUSTOMER, "csv", ALL_PEERS),
        Input("customer_parquet", datagen.CUSTOMER, "parquet", ("duckdb", "polars", "pandas", "python")),
        Input("purchase_csv", datagen.PURCHASE, "csv", ("duckdb", "polars", "python")),
    )
}


@dataclass(slots=True)
class Measurement:
    """What the parent saw of one child process."""

    wall: float
    cpu: float
    peak_rss: int
    returncode: int
    stdout: str
    stderr: str


@dataclass(slots=True)
class Result:
    """One row of the table."""

    input: str
    tool: str
    status: str = "ok"
    """``ok``, or ``unavailable (<reason>)`` / ``failed (<reason>)``."""
    rows: int = 0
    """Input rows the figures are for (the full file; see ``sampled_rows``)."""
    wall: float = 0.0
    cpu: float = 0.0
    peak_rss: int = 0
    out_bytes: int = 0
    records_out: int = 0
    validates: bool = False
    check: str = ""
    sampled_rows: int | None = None
    """When set, the tool ran on this many rows and wall, CPU and output were scaled to ``rows``."""
    input_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        """End-to-end input rows per wall-clock second."""
        return self.rows / self.wall if self.wall > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        """Input bytes (as on disk) per wall-clock second, in MB (10^6)."""
        return self.input_bytes / self.wall / 1e6 if self.wall > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Measuring a child
# ---------------------------------------------------------------------------------------------


class _TreeRss:
    """Samples the summed RSS of a process and its descendants until stopped."""

    def __init__(self, pid: int) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pid,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self, pid: int) -> None:
        try:
            import psutil
        except ImportError:  # ru_maxrss alone then
            return
        try:
            root = psutil.Process(pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                procs = root.children(recursive=True)  # the tool and its children, not the launcher
                total = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                self.peak = max(self.peak, total)
            except psutil.Error:
                return
            self._stop.wait(RSS_SAMPLE_SECONDS)


_LAUNCHER = """
import json, os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(report, "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status), "wall": wall,
               "cpu": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss}, f)
"""
"""A minimal process between the harness and the tool.

Linux carries a process's RSS high-water mark across ``exec``: a tool forked straight from
the harness would report the harness's own RSS as its peak. This launcher is a bare
interpreter (``-I -S``, a few MB), so the tool's ``ru_maxrss`` is its own.
"""


@dataclass(slots=True)
class Planned:
    """One tool's run on one input, measured ``repeat`` times: its command, the directory emptied
    before each run, and how a measurement becomes the table's row."""

    cmd: list[str]
    fresh: Path
    finish: Callable[[Measurement], Result]
    runs: list[Measurement] = field(default_factory=list)
    failed: Measurement | None = None

    def run_once(self, timeout: float) -> None:
        if self.failed is not None:
            return  # a failed run ends the series
        _fresh(self.fresh)
        m = _measure_once(self.cmd, timeout)
        if m.returncode != 0:
            self.failed = m
        else:
            self.runs.append(m)

    def result(self) -> Result:
        """The row from the run with the median wall time (its CPU and output); the peak RSS is
        the highest of all runs, so a tool's memory is never flattered."""
        if self.failed is not None:
            return self.finish(self.failed)
        runs = sorted(self.runs, key=lambda m: m.wall)
        kept = runs[len(runs) // 2]
        kept.peak_rss = max(m.peak_rss for m in runs)
        return self.finish(kept)


def measure_rounds(steps: list[Planned], timeout: float, repeat: int) -> list[Result]:
    """Run every step ``repeat`` times in rounds, each round every step once, and odd rounds in
    reverse order; the results come back in the steps' order.

    The shared machine's speed drifts over minutes. Runs of one tool back to back would put that
    drift between tools, and into the very ratios the targets are stated in (the Parquet run came
    minutes after the CSV run it is compared with); in alternating rounds it falls on every tool
    alike. One run can also land on a busy second: the median of a few is steadier.
    """
    for r in range(max(1, repeat)):
        for step in steps if r % 2 == 0 else steps[::-1]:
            step.run_once(timeout)
    return [step.result() for step in steps]


def _measure_once(cmd: list[str], timeout: float) -> Measurement:
    """Run ``cmd`` to completion (killing its process group after ``timeout``) and measure it."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with tempfile.TemporaryDirectory(prefix="bulkd-bench-") as tmp:
        report = Path(tmp) / "rusage.json"
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report), *cmd]
            proc = subprocess.Popen(
                launcher,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO,
                start_new_session=True,
            )
            sampler = _TreeRss(proc.pid)
            sampler.start()
            try:
                proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            sampler.stop()
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
        if timed_out or not report.exists():
            return Measurement(0.0, 0.0, 0, -9, stdout, stderr + f"\ntimed out after {timeout:.0f} s")
        ru = json.loads(report.read_text())
        return Measurement(
            wall=ru["wall"],
            cpu=ru["cpu"],
            peak_rss=max(ru["maxrss_kb"] * 1024, sampler.peak),
            returncode=ru["code"],
            stdout=stdout,
            stderr=stderr,
        )


def _reason(m: Measurement) -> str:
    lines = [ln.strip() for ln in m.stderr.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else f"exit code {m.returncode}")[:160]


def _last_json(text: str) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        doc = json.loads(text)
        if isinstance(doc, dict):
            return doc
    for line in reversed(text.strip().splitlines()):
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                return doc
    return {}


# ---------------------------------------------------------------------------------------------
# Checking an output directory
# ---------------------------------------------------------------------------------------------


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


@dataclass(slots=True)
class OutputCheck:
    """Records in a tool's gzip NDJSON output and how a sample of them fares against bulkd's schema."""

    files: int = 0
    out_bytes: int = 0
    records: int = 0
    sampled: int = 0
    invalid: int = 0
    """Sampled records that fail the schema even with null fields dropped: invalid rows passed through."""
    with_nulls: int = 0
    """Sampled records carrying ``null`` fields, which the strict schema refuses (``"type": "string"``)."""


def check_output(out_dir: Path, record_type: str, expected: int) -> OutputCheck:
    """Count records in the ``*.gz`` data files under ``out_dir`` (not reject files); validate a sample."""
    import fastjsonschema
    from isal import igzip

    validate = datagen.compiled_schema(record_type)
    every = max(1, expected // CHECK_SAMPLE_RECORDS)
    res = OutputCheck()
    files = sorted(p for p in out_dir.rglob("*.gz") if "reject" not in str(p.relative_to(out_dir)).lower())
    for path in files:
        res.files += 1
        res.out_bytes += path.stat().st_size
        with igzip.open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                res.records += 1
                if res.records % every:
                    continue
                res.sampled += 1
                rec = json.loads(line)
                stripped = _drop_nulls(rec)
                if stripped != rec:
                    res.with_nulls += 1
                try:
                    validate(stripped)
                except fastjsonschema.JsonSchemaValueException:
                    res.invalid += 1
    return res


def _check_text(c: OutputCheck, expected: int) -> str:
    """Short verdict: ``ok`` only if the record count is exact and every sampled record is valid."""
    notes = []
    if c.records != expected:
        notes.append(f"{c.records - expected:+d} recs")
    if c.invalid:
        notes.append(f"{100 * c.invalid / max(c.sampled, 1):.1f}% invalid")
    if c.with_nulls:
        notes.append(f"nulls in {100 * c.with_nulls / max(c.sampled, 1):.0f}%")
    if c.files == 0:
        notes.append("no output")
    return "; ".join(notes) if notes else "ok"


# ---------------------------------------------------------------------------------------------
# Running the tools
# ---------------------------------------------------------------------------------------------


def bulkd_gzip_level() -> tuple[int, str]:
    """bulkd's default gzip level, read from bulkd itself so the limit row tracks it."""
    try:
        from bulkd.chunk import ChunkLimits

        return int(ChunkLimits().gzip_level), "bulkd.chunk.ChunkLimits"
    except Exception as exc:  # any import failure: fall back and say so
        return 3, f"fallback ({type(exc).__name__})"


def _codec(level: int) -> str:
    """The library and level bulkd's ``gzip_level`` names (``bulkd.chunk.codec_name``)."""
    try:
        from bulkd.chunk import codec_name

        return codec_name(level)
    except Exception as exc:  # any import failure: say so rather than guess
        return f"unknown codec ({type(exc).__name__})"


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@dataclass(frozen=True, slots=True)
class Job:
    """One input file and everything a tool run needs to know about it."""

    inp: Input
    src: Path
    ds: datagen.DataSet
    out_root: Path
    args: argparse.Namespace

    def result(self, tool: str, validates: bool) -> Result:
        """An empty row for ``tool`` on this input."""
        return Result(
            input=self.inp.key,
            tool=tool,
            rows=self.ds.rows,
            input_bytes=self.src.stat().st_size,
            validates=validates,
        )


def plan_bulkd(job: Job) -> Planned:
    """``python -m bulkd convert SRC --record-type T --dataset-id bench --out DIR --json``."""
    out = job.out_root / "bulkd"
    cmd = [
        sys.executable, "-m", "bulkd", "convert", str(job.src),
        "--record-type", job.inp.workload.record_type, "--dataset-id", "bench", "--out", str(out), "--json",
        *job.args.bulkd_arg,
    ]  # fmt: skip

    def finish(m: Measurement) -> Result:
        res = job.result("bulkd", validates=True)
        if m.returncode != 0:
            res.status = f"unavailable ({_reason(m)})"
            return res
        res.wall, res.cpu, res.peak_rss = m.wall, m.cpu, m.peak_rss
        res.extra["report"] = _last_json(m.stdout)
        _fill_check(res, out, job.ds.workload.record_type, job.ds.records_valid)
        return res

    return Planned(cmd, out, finish)


def plan_peer(peer: str, job: Job) -> Planned:
    """One peer in its own process; the Lexer re-creation runs on a sample and is scaled.

    Scaling keeps start-up (interpreter, imports) out of the multiplication: wall = start-up +
    the peer's own processing seconds × (rows ÷ sample rows); CPU likewise.
    """
    ds, args = job.ds, job.args
    out = job.out_root / peer
    sample = args.lexer_sample if peer == "lexer" and args.lexer_sample < ds.rows else None
    cmd = [sys.executable, "-m", "benchmarks.peers", peer, job.inp.workload.name, str(job.src), str(out)]
    if sample is not None:
        cmd += ["--max-rows", str(sample)]
    if peer == "lexer" and args.lexer_engine is not None:
        cmd += ["--lexer-engine", str(args.lexer_engine)]

    def finish(m: Measurement) -> Result:
        res = job.result(peer, validates=VALIDATES[peer])
        if m.returncode != 0:
            res.status = f"failed ({_reason(m)})"
            return res
        report = _last_json(m.stdout)
        res.extra["report"] = report
        res.wall, res.cpu, res.peak_rss = m.wall, m.cpu, m.peak_rss
        expected = ds.records_valid
        if sample is not None:
            scale = ds.rows / sample
            own = min(float(report.get("seconds", m.wall)), m.wall)
            startup = m.wall - own
            res.sampled_rows = sample
            res.wall = startup + own * scale
            res.cpu = min(startup, m.cpu) + max(m.cpu - startup, 0.0) * scale
            expected = datagen.valid_records_in_first_rows(ds.workload, sample, args.seed)
        _fill_check(res, out, ds.workload.record_type, expected)
        if sample is not None:
            res.out_bytes = round(res.out_bytes * ds.rows / sample)
        return res

    return Planned(cmd, out, finish)


def _fill_check(res: Result, out: Path, record_type: str, expected: int) -> None:
    c = check_output(out, record_type, expected)
    res.out_bytes = c.out_bytes
    res.records_out = c.records
    res.check = _check_text(c, expected)
    res.extra["output_check"] = asdict(c)


def plan_limit(job: Job) -> Planned:
    """Arrow parse of the input + bulkd's deflate (its default level) of the expected NDJSON, one core."""
    out = job.out_root / "limit"
    cmd = [
        sys.executable, "-m", "benchmarks.peers", "limit", job.inp.workload.name, str(job.src),
        str(out), "--ref", str(job.ds.ref_ndjson), "--gzip-level", str(job.args.gzip_level),
    ]  # fmt: skip

    def finish(m: Measurement) -> Result:
        res = job.result("limit", validates=False)
        if m.returncode != 0:
            res.status = f"failed ({_reason(m)})"
            return res
        report = _last_json(m.stdout)
        res.wall = float(report["seconds"])
        res.cpu = res.wall
        res.peak_rss = m.peak_rss
        res.out_bytes = int(report["gzip_bytes"])
        res.records_out = job.ds.records_valid
        res.check = f"parse {report['parse_seconds']:.2f}s + gzip {report['gzip_seconds']:.2f}s"
        res.extra["report"] = report
        return res

    return Planned(cmd, out, finish)


def _ratio(a: Result | None, b: Result) -> str:
    if a is None or a.status != "ok" or b.status != "ok" or b.rows_per_s == 0:
        return "-"
    return f"{a.rows_per_s / b.rows_per_s:.2f}x"


def render_table(results: list[Result]) -> str:
    """The one table: a block per input, bulkd first, peers, then the limit."""
    head = (
        "input",
        "tool",
        "rows/s",
        "MB/s",
        "CPU s",
        "RSS MB",
        "out MB",
        "validates",
        "bulkd ÷",
        "output check",
    )
    lines = []
    rows: list[tuple[str, ...]] = [head]
    by_input: dict[str, list[Result]] = {}
    for r in results:
        by_input.setdefault(r.input, []).append(r)
    for key, group in by_input.items():
        bulkd = next((r for r in group if r.tool == "bulkd"), None)
        for r in group:
            tool = r.tool + ("*" if r.sampled_rows else "")
            if r.status != "ok":
                rows.append((key, tool, r.status, "", "", "", "", "", "", ""))
                continue
            rows.append(
                (
                    key,
                    tool,
                    f"{r.rows_per_s:,.0f}",
                    f"{r.mb_per_s:.1f}",
                    f"{r.cpu:.1f}",
                    f"{r.peak_rss / 2**20:.0f}",
                    f"{r.out_bytes / 1e6:.1f}",
                    "-" if r.tool == "limit" else ("yes" if r.validates else "no"),
                    "" if r.tool == "bulkd" else _ratio(bulkd, r),
                    r.check,
                )
            )
    widths = [max(len(row[i]) for row in rows if len(row[2]) < 40 or i != 2) for i in range(len(head))]
    for row in rows:
        if len(row[2]) >= 40:  # an unavailable/failed row: one message across the figure columns
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}")
            continue
        cells = [
            f"{c:<{w}}" if i in (0, 1, 7, 9) else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _get(results: list[Result], inp: str, tool: str) -> Result | None:
    r = next((r for r in results if r.input == inp and r.tool == tool), None)
    return r if r is not None and r.status == "ok" else None


def target_checks(results: list[Result], flat_rss: tuple[int, int, int] | None) -> list[tuple[str, str, str]]:
    """Issue #4's targets as ``(verdict, target, figure)``, computed from this run's ratios."""
    out: list[tuple[str, str, str]] = []
    csv_b = _get(results, "customer_csv", "bulkd")

    def add(
        name: str, ok: Callable[[], bool] | None, figure: Callable[[], str], needs: list[Result | None]
    ) -> None:
        if ok is None or any(n is None for n in needs):
            out.append(("SKIP", name, "not measured in this run"))
        else:
            out.append(("PASS" if ok() else "FAIL", name, figure()))

    def ratio(a: Result | None, b: Result | None) -> float:
        assert a is not None
        assert b is not None
        return a.rows_per_s / b.rows_per_s

    add(
        "customer CSV ≥ 400k validated rows/s",
        lambda: csv_b.rows_per_s >= 400_000,
        lambda: f"{csv_b.rows_per_s:,.0f} rows/s on {os.cpu_count()} cores",
        [csv_b],
    )  # type: ignore[union-attr]
    for peer, need in (("polars", 2.2), ("duckdb", 4.5), ("lexer", 100.0)):
        p = _get(results, "customer_csv", peer)
        add(
            f"customer CSV ≥ {need:g}x {peer}",
            lambda p=p, need=need: ratio(csv_b, p) >= need,
            lambda p=p: f"{ratio(csv_b, p):.2f}x",
            [csv_b, p],
        )
    lim = _get(results, "customer_csv", "limit")
    add(
        "customer CSV within 2x of the limit",
        lambda: ratio(csv_b, lim) >= 0.5,
        lambda: f"bulkd ÷ limit = {ratio(csv_b, lim):.2f}x",
        [csv_b, lim],
    )
    bulkd_runs = [r for r in results if r.tool == "bulkd" and r.status == "ok"]
    peak = max((r.peak_rss for r in bulkd_runs), default=0)
    add(
        "peak RSS ≤ 256 MB (all bulkd runs)",
        lambda: peak <= 256 * 2**20,
        lambda: f"{peak / 2**20:.0f} MB",
        [bulkd_runs[0] if bulkd_runs else None],
    )
    if flat_rss is None:
        out.append(
            (
                "SKIP",
                "RSS flat: 10 M rows ≤ 1.1x 1 M rows",
                "run with --rss-rows 10000000 (and --rows 1000000)",
            )
        )
    else:
        small, big, big_rows = flat_rss
        verdict = "PASS" if big <= 1.1 * small else "FAIL"
        out.append(
            (
                verdict,
                f"RSS flat: {big_rows:,} rows ≤ 1.1x {csv_b.rows if csv_b else 0:,} rows",
                f"{big / 2**20:.0f} MB vs {small / 2**20:.0f} MB = {big / max(small, 1):.2f}x",
            )
        )
    add(
        "output ≤ 1.25x zlib-6 size of the same NDJSON",
        lambda: csv_b.out_bytes <= 1.25 * lim.extra["report"]["zlib6_bytes"],
        lambda: f"{csv_b.out_bytes / lim.extra['report']['zlib6_bytes']:.2f}x",
        [csv_b, lim],
    )  # type: ignore[union-attr]
    pq_b = _get(results, "customer_parquet", "bulkd")
    add(
        "Parquet input at least as fast as CSV",
        lambda: ratio(pq_b, csv_b) >= 1.0,
        lambda: f"Parquet ÷ CSV = {ratio(pq_b, csv_b):.2f}x",
        [pq_b, csv_b],
    )
    po_b = _get(results, "purchase_csv", "bulkd")
    add(
        "purchase order lines ≥ 200k rows/s",
        lambda: po_b.rows_per_s >= 200_000,
        lambda: f"{po_b.rows_per_s:,.0f} rows/s",
        [po_b],
    )  # type: ignore[union-attr]
    return out


def environment() -> dict[str, Any]:
    """What the figures were measured on, so a reader can compare runs."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in (
        "pyarrow", "isal", "zlib-ng", "orjson", "fastjsonschema", "duckdb", "polars", "pandas", "pydantic",
    ):  # fmt: skip
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "load_average_1m": os.getloadavg()[0],
        "packages": versions,
    }


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; every default keeps a 1 M-row run within a few minutes."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="input rows per data set (default 1,000,000)")
    p.add_argument(
        "--peers",
        default=",".join(ALL_PEERS),
        help=f"comma list of peers, or 'none' (default {','.join(ALL_PEERS)})",
    )
    p.add_argument(
        "--inputs", default=",".join(INPUTS), help=f"comma list of inputs (default {','.join(INPUTS)})"
    )
    p.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="generated files and outputs (gitignored)"
    )
    p.add_argument("--seed", type=int, default=datagen.DEFAULT_SEED)
    p.add_argument(
        "--lexer-sample", type=int, default=20_000, help="rows the Lexer re-creation runs on (scaled up)"
    )
    p.add_argument(
        "--gzip-level", type=int, help="bulkd gzip level (0-3) for the limit row (default: bulkd's default)"
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a tool's process is killed")
    p.add_argument(
        "--rss-rows", type=int, help="also run bulkd on this many customer CSV rows to check RSS flatness"
    )
    p.add_argument(
        "--bulkd-arg", action="append", default=[], help="extra argument passed to 'bulkd convert'"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds, each running every tool once; median wall kept, highest peak RSS (default 1)",
    )
    p.add_argument("--skip-upload", action="store_true", help="skip the upload benchmark")
    p.add_argument("--json", type=Path, dest="json_out", help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    args.peer_list = [] if args.peers == "none" else [x for x in args.peers.split(",") if x]
    unknown = set(args.peer_list) - set(ALL_PEERS)
    if unknown:
        p.error(f"unknown peers: {', '.join(sorted(unknown))}")
    args.input_list = [x for x in args.inputs.split(",") if x]
    if set(args.input_list) - set(INPUTS):
        p.error(f"unknown inputs: {', '.join(sorted(set(args.input_list) - set(INPUTS)))}")
    return args


def run_inputs(args: argparse.Namespace) -> tuple[list[Result], dict[str, datagen.DataSet]]:
    """Every selected input: make (or reuse) the file; then bulkd, the peers and the limit on all
    of them, in rounds (:func:`measure_rounds`). bulkd's runs on the inputs come first in a round,
    side by side, as Parquet ÷ CSV compares two of them."""
    datasets: dict[str, datagen.DataSet] = {}
    jobs: list[Job] = []
    for key in args.input_list:
        inp = INPUTS[key]
        t0 = time.perf_counter()
        ds = datagen.ensure(inp.workload, args.rows, args.data_dir, args.seed)
        datasets[key] = ds
        src = ds.parquet if inp.fmt == "parquet" else ds.csv
        assert src is not None
        print(
            f"[{key}] {src.name}: {src.stat().st_size / 1e6:.1f} MB, {ds.rows:,} rows, "
            f"{ds.records_valid:,} valid records (data ready in {time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        jobs.append(Job(inp, src, ds, args.data_dir / "out" / key, args))
    steps = [plan_bulkd(job) for job in jobs]
    for job in jobs:
        steps += [plan_peer(p, job) for p in job.inp.peers if p in args.peer_list]
        steps.append(plan_limit(job))
    print(f"{len(steps)} runs a round, {max(1, args.repeat)} round(s)", flush=True)
    results = measure_rounds(steps, args.timeout, args.repeat)
    for r in results:
        figure = f"{r.rows_per_s:,.0f} rows/s, {r.peak_rss / 2**20:.0f} MB" if r.status == "ok" else r.status
        print(f"  {r.input:<16} {r.tool:<7} {figure}", flush=True)
    for job in jobs:
        shutil.rmtree(job.out_root, ignore_errors=True)
    return results, datasets


def run_flat_rss(args: argparse.Namespace, results: list[Result]) -> tuple[int, int, int] | None:
    """bulkd alone on ``--rss-rows`` customer CSV rows: (peak at --rows, peak at --rss-rows, rows)."""
    small = _get(results, "customer_csv", "bulkd")
    if not args.rss_rows or small is None:
        return None
    ds = datagen.ensure(datagen.CUSTOMER, args.rss_rows, args.data_dir, args.seed)
    job = Job(INPUTS["customer_csv"], ds.csv, ds, args.data_dir / "out" / "rss", args)
    (big,) = measure_rounds([plan_bulkd(job)], args.timeout, args.repeat)
    shutil.rmtree(job.out_root, ignore_errors=True)
    if big.status != "ok":
        return None
    big.input = f"customer_csv@{ds.rows}"
    results.append(big)
    return small.peak_rss, big.peak_rss, ds.rows


def print_report(args: argparse.Namespace, results: list[Result], checks: list[tuple[str, str, str]]) -> None:
    """The table, its legend and the PASS/FAIL lines."""
    print()
    print(render_table(results))
    print()
    print("validates: the tool checks every record against the record type's schema and drops failures.")
    print("output check: records out vs the planted valid count; a sample checked against bulkd's schema")
    print("  ('invalid' = planted bad rows passed through; 'nulls' = null fields the strict schema refuses).")
    print(
        f"limit: Arrow parse alone + bulkd's deflate at level {args.gzip_level} ({_codec(args.gzip_level)},"
        f" {args.level_source}) alone, 1 core."
    )
    if any(r.sampled_rows for r in results):
        print(
            f"*: ran on the first {args.lexer_sample:,} rows; time, CPU and output bytes scaled to the file."
        )
    engines = {r.extra["report"].get("engine") for r in results if r.tool == "lexer" and r.status == "ok"}
    for name, text in DESCRIPTIONS.items():
        if name in args.peer_list:
            on = f" ({', '.join(sorted(e for e in engines if e))})" if name == "lexer" and engines else ""
            print(f"  {name:<7} {text}{on}")
    print()
    for verdict, name, figure in checks:
        print(f"{verdict:<4}  {name}: {figure}")


def lexer_engine(data_dir: Path) -> Path | None:
    """A directory holding the pydantic Lexer's converter pins (:data:`LEXER_PYDANTIC`), installed
    there on first use; None, after saying why, where it cannot be (offline, or no wheel for this
    Python), and the Lexer re-creation then runs on pydantic 2's ``pydantic.v1``.

    Kept apart from the bench extra, which bulkd's own pydantic 2 shares. Only the lexer peer's
    process puts it on its path. pydantic 1.10's one dependency, typing-extensions, comes from
    this environment.
    """
    target = data_dir / f"lexer-pydantic-{LEXER_PYDANTIC}"
    if (target / "pydantic").is_dir():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".lexer-pydantic-", dir=data_dir))
    spec = f"pydantic=={LEXER_PYDANTIC}"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    pip += ["--no-deps", "--only-binary=:all:", "--target", str(staging), spec]
    done = subprocess.run(pip, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        why = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        print(f"lexer: could not install {spec} ({why}); the re-creation runs on pydantic.v1", flush=True)
        return None
    staging.rename(target)
    return target


def compile_sources() -> None:
    """Byte-compile bulkd and the peers' own modules before anything is timed, as ``pip install``
    does for an installed package.

    An editable install (this checkout) leaves them as source, and where
    ``PYTHONDONTWRITEBYTECODE`` is set, as on these machines, every run compiled ~30 modules
    again: ~45 ms of each bulkd start-up that an installed bulkd does not pay.
    """
    import bulkd

    for package in (Path(bulkd.__file__).parent, Path(__file__).parent):
        compileall.compile_dir(package, quiet=1)


def main(argv: list[str] | None = None) -> int:
    """Generate (or reuse) the data, run every tool on it, print the table and the target checks."""
    args = parse_args(argv)
    level, args.level_source = bulkd_gzip_level()
    if args.gzip_level is None:
        args.gzip_level = level
    else:
        args.level_source = "--gzip-level"
    env = environment()
    print(f"bulkd benchmark: {args.rows:,} rows, {env['cpus']} CPUs ({env['cpu']}), Python {env['python']}")
    if env["load_average_1m"] > 0.5:
        # Every tool shares the cores with whatever else runs: ratios survive that, absolutes do not.
        print(f"warning: load average {env['load_average_1m']:.2f} before start; the machine is not idle")
    compile_sources()
    for w in {INPUTS[k].workload.name: INPUTS[k].workload for k in args.input_list}.values():
        problems = datagen.check(w, sample=5_000, seed=args.seed)
        if problems:
            print("datagen disagrees with bulkd's schemas:\n  " + "\n  ".join(problems[:10]), file=sys.stderr)
            return 2

    args.lexer_engine = lexer_engine(args.data_dir) if "lexer" in args.peer_list else None
    results, datasets = run_inputs(args)
    flat = run_flat_rss(args, results)
    checks = target_checks(results, flat)
    upload: dict[str, Any] = {}
    if not args.skip_upload:
        from benchmarks import upload_bench

        upload = upload_bench.run_all(timeout=min(args.timeout, 300.0))
        checks += upload.get("checks", [])
    print_report(args, results, checks)
    if upload:
        print()
        print(upload.get("text", ""))

    if args.json_out:
        doc = {
            "environment": env,
            "rows": args.rows,
            "seed": args.seed,
            "gzip_level": args.gzip_level,
            "datasets": {k: d.manifest for k, d in datasets.items()},
            "results": [{**asdict(r), "rows_per_s": r.rows_per_s, "mb_per_s": r.mb_per_s} for r in results],
            "checks": [{"verdict": v, "target": n, "figure": f} for v, n, f in checks],
            "upload": {k: v for k, v in upload.items() if k != "text"},
        }
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nfigures written to {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
