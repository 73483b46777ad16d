"""Throughput over the last minutes for the dashboard's chart: rows converted, records delivered per second.

A sampler ticks every ``interval`` seconds and keeps a bounded window of rates. Rows are those of
finished conversions plus the live progress of running ones, so the chart moves while a single
large file converts, not only when it finishes; delivered records and bytes come from the metrics'
running totals, retries from the uploader's counters.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Sample", "Throughput"]


@dataclass(frozen=True, slots=True)
class Sample:
    """Rates over one interval ending at ``t`` (Unix time)."""

    t: float
    rows_per_second: float
    records_per_second: float
    bytes_per_second: float
    retries: int
    """Upload retries started during the interval."""

    def as_json(self) -> dict[str, float]:
        return {
            "t": round(self.t, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "records_per_second": round(self.records_per_second, 1),
            "bytes_per_second": round(self.bytes_per_second, 1),
            "retries": self.retries,
        }


@dataclass(frozen=True, slots=True)
class Reading:
    """Cumulative figures at one instant."""

    rows: int
    """Rows read: finished conversions plus running ones (may dip while a job changes hands)."""
    records_delivered: int
    bytes_delivered: int
    retries: int


class Throughput:
    """A rolling window of :class:`Sample`; call :meth:`tick` every ``interval`` seconds."""

    def __init__(
        self,
        read: Callable[[], Reading],
        *,
        interval: float = 2.0,
        window_seconds: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=max(int(window_seconds / interval), 1))
        self._read = read
        self._clock = clock
        self._last = read()
        self._last_t = clock()
        self._rows_high = self._last.rows

    def tick(self) -> Sample:
        """Take a reading and append the rates since the previous one."""
        now, reading = self._clock(), self._read()
        seconds = max(now - self._last_t, 1e-9)
        # A finished conversion's rows move from "running" to "finished" in two steps; counting
        # only what exceeds the highest reading so far keeps that hand-over from counting twice.
        rows = max(reading.rows - self._rows_high, 0)
        self._rows_high = max(self._rows_high, reading.rows)
        sample = Sample(
            t=now,
            rows_per_second=rows / seconds,
            records_per_second=(reading.records_delivered - self._last.records_delivered) / seconds,
            bytes_per_second=(reading.bytes_delivered - self._last.bytes_delivered) / seconds,
            retries=max(reading.retries - self._last.retries, 0),
        )
        self.samples.append(sample)
        self._last, self._last_t = reading, now
        return sample

    def recent_retries(self, seconds: float = 60.0) -> int:
        """Retries started within the last ``seconds``."""
        since = self._clock() - seconds
        return sum(s.retries for s in self.samples if s.t >= since)

    def as_json(self) -> dict[str, object]:
        return {"interval": self.interval, "samples": [s.as_json() for s in self.samples]}
