"""Command line: ``bulkd run`` (the daemon), ``convert``, ``validate``, ``hub-sim`` and ``demo``.

With ``--json`` the last line printed is one JSON summary object, so scripts can read the
outcome without parsing prose. Exit status is 0 only when every input converted within the
reject threshold.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bulkd import __version__
from bulkd.chunk import ChunkLimits
from bulkd.errors import BulkdError
from bulkd.manifest import write_manifest
from bulkd.pipeline import ConvertSettings, FileResult, Progress, convert_file, summary_json
from bulkd.profile import Profile, load_profile
from bulkd.read import ReadOptions
from bulkd.schemas import RECORD_TYPES, load_record_type

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
_DEFAULT_LIMITS = ChunkLimits()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bulkd`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except BulkdError as exc:
        print(f"bulkd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bulkd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bulkd {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    convert = sub.add_parser("convert", help="convert files into validated gzip NDJSON chunks")
    _input_options(convert)
    convert.add_argument("--dataset-id", required=True, help="Lexer dataset id (used in chunk names)")
    convert.add_argument("--out", required=True, type=Path, help="directory for chunks, rejects and manifest")
    convert.add_argument(
        "--max-records", type=int, default=_DEFAULT_LIMITS.max_records, help="records per chunk"
    )
    convert.add_argument(
        "--max-bytes", type=int, default=_DEFAULT_LIMITS.max_ndjson_bytes, help="uncompressed bytes per chunk"
    )
    convert.add_argument(
        "--gzip-level",
        type=int,
        default=_DEFAULT_LIMITS.gzip_level,
        help="0-2 ISA-L (fastest), 3 ISA-L 2 and zlib-ng 5 block by block (default)",
    )
    convert.set_defaults(handler=_convert)

    validate = sub.add_parser("validate", help="validate files against a record type (writes no chunks)")
    _input_options(validate)
    validate.add_argument("--rejects", type=Path, help="directory for reject files (default: none written)")
    validate.set_defaults(handler=_validate)

    sim = sub.add_parser("hub-sim", help="run the local Lexer File Upload API simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8787)
    sim.add_argument("--store", type=Path, default=Path("var/hub-sim"), help="object store directory")
    sim.add_argument("--url-ttl", type=float, default=900.0, help="presigned URL lifetime in seconds")
    sim.add_argument(
        "--public-url",
        type=_public_url,
        help="base of the presigned upload URLs, as clients reach the simulator (e.g. http://hubsim:8787;"
        " default: the address it listens on)",
    )
    sim.set_defaults(handler=_hub_sim)

    run = sub.add_parser("run", help="run the daemon: watch the inbox, convert, upload")
    run.add_argument(
        "--config", type=Path, help="TOML config (default: built-in defaults and BULKD_* variables)"
    )
    run.add_argument("--once", action="store_true", help="drain the inbox, then exit (cron-style)")
    run.add_argument(
        "--sample", action="store_true", help="drop the bundled sample CSV into the inbox at start"
    )
    run.set_defaults(handler=_run)

    status = sub.add_parser("status", help="show what the daemon is doing (its status API, else the ledger)")
    status.add_argument(
        "--config", type=Path, help="TOML config (default: built-in defaults and BULKD_* variables)"
    )
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.add_argument("--limit", type=int, default=20, help="jobs shown, most recently updated first")
    status.add_argument(
        "--healthz", action="store_true", help="exit 0 when the daemon's /healthz answers (health checks)"
    )
    status.set_defaults(handler=_status)

    selftest = sub.add_parser(
        "selftest", help="prove the promises: run the fault matrix (crashes, faults) and print it"
    )
    selftest.add_argument("--quick", action="store_true", help="a smaller matrix (about a minute)")
    selftest.add_argument("--seed", type=int, default=1, help="seed for inputs, faults and kill times")
    selftest.set_defaults(handler=_selftest)

    demo = sub.add_parser("demo", help="convert the bundled sample customers into var/demo (a dry run)")
    demo.add_argument("--out", type=Path, default=Path("var/demo"), help="output directory")
    demo.set_defaults(handler=_demo)
    return parser


def _input_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    cmd.add_argument("--record-type", required=True, choices=RECORD_TYPES)
    cmd.add_argument("--schema", type=Path, help="custom JSON Schema file for the record type")
    cmd.add_argument("--profile", type=Path, help="mapping profile (TOML)")
    cmd.add_argument("--delimiter", help="CSV field delimiter (default , or tab for .tsv)")
    cmd.add_argument("--quote-char", default='"')
    cmd.add_argument("--encoding", help="input encoding (default: UTF-8, or as its BOM says)")
    cmd.add_argument("--max-reject-ratio", type=float, help="fail an input whose rejected share exceeds this")
    cmd.add_argument("--json", action="store_true", help="print a JSON summary as the last line")


def _settings(
    args: argparse.Namespace, dataset_id: str, write_chunks: bool, limits: ChunkLimits
) -> ConvertSettings:
    profile = load_profile(args.profile) if args.profile else Profile()
    return ConvertSettings(
        record_type=load_record_type(args.record_type, args.schema),
        dataset_id=dataset_id,
        timestamp=str(int(time.time())),
        profile=profile,
        read=ReadOptions(delimiter=args.delimiter, quote_char=args.quote_char, encoding=args.encoding),
        limits=limits,
        max_reject_ratio=args.max_reject_ratio,
        write_chunks=write_chunks,
    )


def _convert(args: argparse.Namespace) -> int:
    limits = ChunkLimits(
        max_records=args.max_records, max_ndjson_bytes=args.max_bytes, gzip_level=args.gzip_level
    )
    settings = _settings(args, args.dataset_id, True, limits)
    args.out.mkdir(parents=True, exist_ok=True)
    results = _run_inputs(args, settings, args.out)
    write_manifest(args.out, settings, results)
    return _report(args, results)


def _validate(args: argparse.Namespace) -> int:
    settings = _settings(args, "validate", False, ChunkLimits())
    out = args.rejects
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results = _run_inputs(args, settings, out)
    if args.max_reject_ratio is None and any(r.rejected for r in results):
        return _report(args, results, failed=True)
    return _report(args, results)


def _run_inputs(args: argparse.Namespace, settings: ConvertSettings, out: Path | None) -> list[FileResult]:
    results: list[FileResult] = []
    many = len(args.inputs) > 1
    with _progress_reporter(not args.json) as progress:
        for number, path in enumerate(args.inputs, start=1):
            prefix = f"f{number:04d}" if many else ""
            if out is None:
                results.append(_check_only(path, settings, progress(path), prefix))
            else:
                results.append(convert_file(path, out, settings, progress(path), prefix))
    return results


def _check_only(path: Path, settings: ConvertSettings, progress: Progress, prefix: str) -> FileResult:
    """``bulkd validate`` without a rejects directory: rejects go to a throwaway directory."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bulkd-validate-") as scratch:
        result = convert_file(path, Path(scratch), settings, progress, prefix)
        if result.rejects_path is not None:
            _print_rejects(result.rejects_path)
        return dataclasses.replace(result, rejects_path=None)


def _print_rejects(path: Path, limit: int = 50) -> None:
    """Show the first rejects on stderr, as Lexer's validate script shows its errors."""
    import orjson

    with path.open("rb") as fh:
        for number, line in enumerate(fh):
            if number >= limit:
                print(f"... more rejects not shown (limit {limit})", file=sys.stderr)
                break
            item = orjson.loads(line)
            where = f"{item['input']}:{item['line']}"
            field = f" [{item['field']}]" if item["field"] else ""
            print(f"{where}{field} {item['rule']}: {item['message']}", file=sys.stderr)


def _report(args: argparse.Namespace, results: list[FileResult], failed: bool = False) -> int:
    for result in results:
        status = f"error: {result.error}" if result.error else "ok"
        rate = result.rows / result.seconds if result.seconds > 0 else 0.0
        print(
            f"{result.input}: {result.rows} rows in = {result.rows_delivered} delivered + "
            f"{result.rejected} rejected; {result.records} records in {len(result.chunks)} chunks "
            f"({rate:,.0f} rows/s) {status}",
            file=sys.stderr,
        )
        for warning in result.warnings:
            print(f"{result.input}: warning: {warning}", file=sys.stderr)
        if result.rejects_path:
            print(f"{result.input}: rejects in {result.rejects_path}", file=sys.stderr)
    if args.json:
        sys.stdout.write(summary_json(results).decode() + "\n")
    failed = failed or any(not r.ok for r in results)
    return EXIT_FAILED if failed else EXIT_OK


def _public_url(text: str) -> str:
    """argparse type for ``--public-url``: a refusal there names the option and exits 2."""
    from bulkd.hubsim import public_base_url

    try:
        return public_base_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _hub_sim(args: argparse.Namespace) -> int:
    from bulkd.hubsim import RunningSimulator, SimulatorConfig, run_simulator
    from bulkd.secret import Secret

    token = os.environ.get("BULKD_API_TOKEN", "")
    if not token:
        print("bulkd hub-sim: set BULKD_API_TOKEN to the token the simulator should accept", file=sys.stderr)
        return EXIT_USAGE
    config = SimulatorConfig(
        token=Secret(token),
        store_dir=args.store,
        host=args.host,
        port=args.port,
        url_ttl_seconds=args.url_ttl,
        public_url=args.public_url,
    )

    def ready(sim: RunningSimulator) -> None:
        urls = f" (upload URLs on {sim.public_url})" if sim.public_url != sim.base_url else ""
        print(f"hub-sim listening on {sim.base_url}{urls}", flush=True)

    run_simulator(config, on_ready=ready)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from bulkd.config import load_config
    from bulkd.logs import setup_logging
    from bulkd.service import run_service

    config = load_config(args.config)
    secrets = (config.api_token, config.status_token)
    setup_logging(config.service.log_format, config.service.log_level, secrets=secrets)
    addons = []
    if config.status.enabled:
        from bulkd.status import status_addon

        addons.append(status_addon)
    return run_service(config, once=args.once, sample=args.sample, addons=addons)


def _status(args: argparse.Namespace) -> int:
    from bulkd.config import load_config
    from bulkd.status.client import check_health, fetch_report, render

    config = load_config(args.config)
    if args.healthz:
        return EXIT_OK if check_health(config) else EXIT_FAILED
    report = fetch_report(config, limit=args.limit)
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(report.as_json()).decode() + "\n")
    else:
        render(report)
    return EXIT_OK


def _selftest(args: argparse.Namespace) -> int:
    from bulkd.selftest import run_selftest

    return run_selftest(sys.stdout, quick=args.quick, seed=args.seed)


def _demo(args: argparse.Namespace) -> int:
    """Show the whole conversion on bundled data: chunks, a manifest and a reject file."""
    from importlib import resources

    sample = resources.files("bulkd").joinpath("samples/customers.csv")
    with resources.as_file(sample) as path:
        code = main(
            [
                "convert",
                str(path),
                "--record-type",
                "customer_record",
                "--dataset-id",
                "demo",
                "--out",
                str(args.out),
            ]
        )
    print(f"chunks, manifest.json and the reject file are in {args.out}", file=sys.stderr)
    return EXIT_OK if code in (EXIT_OK, EXIT_FAILED) else code


class _progress_reporter:
    """A rich progress bar on a terminal (rows/s, MB/s); silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._progress: object | None = None

    def __enter__(self) -> _progress_reporter:
        if self.enabled:
            from rich.progress import Progress as RichProgress
            from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

            bar = RichProgress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                transient=True,
            )
            bar.start()
            self._progress = bar
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            from rich.progress import Progress as RichProgress

            assert isinstance(self._progress, RichProgress)
            self._progress.stop()

    def __call__(self, path: Path) -> Progress:
        if self._progress is None:
            return lambda rows, nbytes: None
        from rich.progress import Progress as RichProgress

        bar = self._progress
        assert isinstance(bar, RichProgress)
        task = bar.add_task(str(path), rate="")
        started = time.monotonic()

        def update(rows: int, nbytes: int) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            bar.update(
                task, rate=f"{rows:,} rows  {rows / elapsed:,.0f} rows/s  {nbytes / elapsed / 1e6:,.1f} MB/s"
            )

        return update
