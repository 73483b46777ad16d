"""The status server's life in the daemon: started as a service addon, stopped before the ledger closes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import TYPE_CHECKING

from aiohttp import web

from bulkd.errors import ConfigError
from bulkd.ledger import JobState
from bulkd.status.app import build_app
from bulkd.status.metrics import Metrics
from bulkd.status.throughput import Reading, Throughput

if TYPE_CHECKING:
    from bulkd.service import Service

__all__ = ["StatusServer", "status_addon"]

log = logging.getLogger("bulkd.status")


class StatusServer:
    """Serves the status API, metrics and dashboard for one running :class:`~bulkd.service.Service`.

    An async context manager: entering binds the socket, registers the metrics listener and
    starts the throughput sampler; leaving undoes all three. ``url`` is the bound address (with
    ``status.port = 0`` the OS picks the port).
    """

    def __init__(self, service: Service, *, sample_interval: float = 2.0) -> None:
        self.service = service
        self.metrics = Metrics(service)
        self.sample_interval = sample_interval
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StatusServer:
        config = self.service.config
        host, port = config.status.host, config.status.port
        # load_config already refuses a non-loopback status.host without a status token.
        throughput = Throughput(self._reading, interval=self.sample_interval)
        self._runner = web.AppRunner(
            build_app(self.service, self.metrics, throughput), access_log=None, handle_signals=False
        )
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                "status.port", f"the status server cannot listen on {host}:{port} ({exc.strerror or exc})"
            ) from None
        self.service.parts.runner.listeners.append(self.metrics.on_event)
        self._sampler = asyncio.create_task(self._sample(throughput), name="status-sampler")
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"
        log.info(
            "status server on %s (dashboard /, metrics /metrics, API /api/jobs)%s",
            self.url,
            "; bearer token required" if config.status_token is not None else "",
            extra={"event": "status", "state": "listening", "url": self.url},
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(ValueError):
            self.service.parts.runner.listeners.remove(self.metrics.on_event)
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self._runner is not None:
            await self._runner.cleanup()
        await self.metrics.settle()

    def _reading(self) -> Reading:
        parts = self.service.parts
        running = (JobState.CLAIMED, JobState.CONVERTING)
        return Reading(
            rows=self.metrics.totals.rows_converted
            + sum(live.rows for live in parts.runner.live.values() if live.phase in running),
            records_delivered=self.metrics.totals.records_delivered,
            bytes_delivered=self.metrics.totals.bytes_delivered,
            retries=sum(parts.uploader.stats.retries.values()),
        )

    async def _sample(self, throughput: Throughput) -> None:
        while True:
            await asyncio.sleep(throughput.interval)
            throughput.tick()


def status_addon(service: Service) -> StatusServer:
    """The service addon that runs the status server (``bulkd run`` adds it when ``status.enabled``)."""
    return StatusServer(service)
