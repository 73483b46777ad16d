"""A local, faithful stand-in for Lexer's File Upload API and the object store behind its presigned URLs.

It exists so that bulkd's tests, benchmarks and users' dry runs exercise the real protocol:
token check, create-upload validation, signed and expiring URLs, S3's refusals (chunked
bodies, missing length, bad digest, oversize), the dataset load with per-record validation,
and injectable faults. Everything is real: an aiohttp server on a socket, objects on disk.

Routes::

    POST /v1/uploads                         create an upload → 201 {"id", "url"}
    PUT  /_store/{key}?X-Amz-...             presigned object PUT → 200 + ETag
    GET  /v1/_sim/datasets/{id}              load counts (token required)
    GET  /v1/_sim/datasets/{id}/records      loaded records as NDJSON (token required)
    GET  /v1/_sim/requests                   request log, paths only (token required)
    GET|POST /v1/_sim/faults                 read or replace the fault knobs (token required)
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bulkd.hubsim.config import DEFAULT_MAX_OBJECT_BYTES, SimulatorConfig, public_base_url
from bulkd.hubsim.faults import Faults, RetryAfterForm
from bulkd.hubsim.loader import DatasetStats, read_loaded_records
from bulkd.hubsim.server import RequestLogEntry, SimState, build_app

__all__ = [
    "DEFAULT_MAX_OBJECT_BYTES",
    "DatasetStats",
    "Faults",
    "RequestLogEntry",
    "RetryAfterForm",
    "RunningSimulator",
    "SimulatorConfig",
    "public_base_url",
    "run_simulator",
    "start_simulator",
]

log = logging.getLogger("bulkd.hubsim")


class RunningSimulator:
    """A started simulator: its address, its counters and its fault knobs, readable from Python."""

    def __init__(self, state: SimState, runner: web.AppRunner) -> None:
        self._state = state
        self._runner = runner

    @property
    def base_url(self) -> str:
        """``http://host:port``; also the ``api_url`` a client should use."""
        return self._state.base_url

    @property
    def public_url(self) -> str:
        """The base of the presigned URLs it hands out: ``config.public_url``, else :attr:`base_url`."""
        return self._state.public_url

    @property
    def config(self) -> SimulatorConfig:
        """The settings it was started with (fault knobs may have changed since; see :attr:`faults`)."""
        return self._state.config

    @property
    def faults(self) -> Faults:
        """The fault knobs in force."""
        return self._state.injector.faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the fault knobs; takes effect for the next request."""
        self._state.injector.set(faults)

    def stats(self, dataset_id: str) -> DatasetStats:
        """Counts for a dataset as of now; call :meth:`drain` first to include loads still running."""
        return self._state.loader.stats(dataset_id)

    def requests(self) -> list[RequestLogEntry]:
        """The request log, oldest first (paths only, never query strings)."""
        return list(self._state.requests)

    async def drain(self) -> None:
        """Wait for every dataset load triggered by a PUT so far."""
        await self._state.drain()

    async def records(self, dataset_id: str) -> list[dict[str, Any]]:
        """Every record the dataset accepted, in load order (after the loads in flight finish)."""
        await self.drain()
        loop = asyncio.get_running_loop()
        out: list[dict[str, Any]] = []
        for path, rejected in self._state.loader.objects(dataset_id):
            out.extend(await loop.run_in_executor(self._state.executor, read_loaded_records, path, rejected))
        return out

    async def close(self) -> None:
        """Stop listening, let running loads finish, release the worker threads."""
        await self._runner.cleanup()
        await self.drain()
        self._state.executor.shutdown(wait=True)

    async def __aenter__(self) -> RunningSimulator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_simulator(config: SimulatorConfig) -> RunningSimulator:
    """Bind and start serving; with ``port=0`` the OS picks a free port (see ``base_url``)."""
    state = SimState(config)
    # access_log=None: aiohttp's access log prints the request line, query string (signature) included.
    runner = web.AppRunner(build_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    state.base_url = f"http://{shown}:{port}"
    log.info("hub simulator listening on %s (objects in %s)", state.base_url, config.store_dir)
    if config.public_url is not None:
        log.info("hub simulator hands out upload URLs on %s", config.public_url)
    return RunningSimulator(state, runner)


def run_simulator(
    config: SimulatorConfig, on_ready: Callable[[RunningSimulator], None] | None = None
) -> None:
    """Serve until SIGINT or SIGTERM (for ``bulkd hub-sim``); ``on_ready`` can print the address."""
    asyncio.run(_serve(config, on_ready))


async def _serve(config: SimulatorConfig, on_ready: Callable[[RunningSimulator], None] | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        sim = await start_simulator(config)
        try:
            if on_ready is not None:
                on_ready(sim)
            await stop.wait()
            log.info("hub simulator stopping")
        finally:
            await sim.close()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
