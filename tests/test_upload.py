"""The uploader against the real hub simulator on loopback: delivery, faults, refusals, limits, secrecy."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulkd.errors import ConfigError, TerminalUploadError, TransientUploadError, UploadError
from bulkd.hubsim import Faults, RetryAfterForm, RunningSimulator, SimulatorConfig, start_simulator
from bulkd.secret import Secret
from bulkd.upload import (
    ChunkUpload,
    RetryBudget,
    TokenBucket,
    Uploader,
    UploadSettings,
    backoff_delay,
    parse_retry_after,
)

TOKEN = "upl-token-9c3e51d0aa"
DATASET = "ds-upload"


def record(chunk: int, row: int) -> dict[str, Any]:
    return {
        "link": {"email": f"c{chunk}r{row}@example.com"},
        "action_at": "2024-05-06T07:08:09Z",
        "email_id": f"m{chunk}-{row}",
    }


def write_chunk(directory: Path, index: int, rows: int = 5, filename: str | None = None) -> ChunkUpload:
    body = gzip.compress(b"".join(orjson.dumps(record(index, r)) + b"\n" for r in range(rows)), mtime=0)
    path = directory / f"chunk-{index}.ndjson.gz"
    path.write_bytes(body)
    return ChunkUpload(
        path=path,
        filename=filename or f"{DATASET}_email_open_{index:05d}.ndjson.gz",
        dataset_id=DATASET,
        record_type="email_open",
        md5_b64=base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode(),
        size=len(body),
    )


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig(token=Secret(TOKEN), store_dir=tmp_path / "store"))
    try:
        yield running
    finally:
        await running.close()


def settings_for(sim: RunningSimulator, **overrides: Any) -> UploadSettings:
    base = UploadSettings(
        api_url=sim.base_url,
        token=Secret(TOKEN),
        require_https=False,
        backoff_base=0.02,
        backoff_cap=0.2,
        requests_per_second=200.0,
    )
    return replace(base, **overrides)


async def deliver_all(uploader: Uploader, chunks: list[ChunkUpload]) -> list[Any]:
    return await asyncio.gather(*(uploader.upload(c) for c in chunks), return_exceptions=True)


async def test_happy_path_delivers_every_record(sim: RunningSimulator, tmp_path: Path) -> None:
    chunks = [write_chunk(tmp_path, i) for i in range(4)]
    created: list[str] = []

    async def on_created(upload_id: str) -> None:
        created.append(upload_id)

    async with Uploader(settings_for(sim)) as uploader:
        receipts = [await uploader.upload(c, on_created) for c in chunks]
    assert [r.upload_id for r in receipts] == created
    assert all(r.attempts == 2 for r in receipts)
    records = await sim.records(DATASET)
    assert sorted(records, key=orjson.dumps) == sorted(
        (record(i, r) for i in range(4) for r in range(5)), key=orjson.dumps
    )
    stats = uploader.stats
    assert (stats.delivered, stats.failed, stats.creates, stats.puts) == (4, 0, 4, 4)
    assert stats.bytes_sent == sum(c.size for c in chunks)
    assert stats.in_flight == 0
    puts = [e for e in sim.requests() if e.method == "PUT"]
    assert all(e.status == 200 for e in puts)


async def test_mixed_faults_and_short_url_ttl_deliver_each_chunk_exactly_once(
    sim: RunningSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim.set_faults(
        Faults(
            post_errors={500: 0.05, 503: 0.05},
            put_errors={500: 0.05, 503: 0.05},
            throttle_rate=0.05,
            reset_rate=0.05,
            retry_after_seconds=1,
            url_ttl_seconds=1,
            seed=11,
        )
    )
    chunks = [write_chunk(tmp_path, i, rows=20) for i in range(40)]
    async with Uploader(settings_for(sim, url_refresh_limit=6), rng=random.Random(5)) as uploader:
        results = await deliver_all(uploader, chunks)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    await sim.drain()
    stats = sim.stats(DATASET)
    assert (stats.uploads, stats.loaded, stats.rejected, stats.duplicates) == (40, 800, 0, 0)
    injected = {e.fault for e in sim.requests() if e.fault}
    assert {"http_500", "http_503", "http_429", "reset"} <= injected
    assert sum(uploader.stats.retries.values()) > 0
    assert uploader.stats.retries.get("url_expired", 0) > 0
    _assert_no_secrets(caplog, errors)


async def test_ambiguous_put_outcomes_retry_the_same_url_so_nothing_is_loaded_twice(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    sim.set_faults(Faults(reset_after_body_rate=0.4, seed=3))
    chunks = [write_chunk(tmp_path, i) for i in range(12)]
    async with Uploader(settings_for(sim)) as uploader:
        results = await deliver_all(uploader, chunks)
    assert not [r for r in results if isinstance(r, BaseException)]
    await sim.drain()
    stats = sim.stats(DATASET)
    assert (stats.uploads, stats.loaded, stats.duplicates) == (12, 60, 0)
    assert any(e.fault == "reset_after_body" for e in sim.requests())
    assert uploader.stats.creates == 12


async def test_401_is_terminal_and_pauses_every_upload(sim: RunningSimulator, tmp_path: Path) -> None:
    chunks = [write_chunk(tmp_path, i) for i in range(3)]
    async with Uploader(settings_for(sim, token=Secret("not-the-token"))) as uploader:
        with pytest.raises(TerminalUploadError) as caught:
            await uploader.upload(chunks[0])
        assert caught.value.status == 401
        assert uploader.paused
        assert uploader.paused_event.is_set()
        seen = len(sim.requests())
        with pytest.raises(TerminalUploadError, match="paused"):
            await uploader.upload(chunks[1])
        assert len(sim.requests()) == seen  # no request while paused
        uploader.resume()
        assert not uploader.paused_event.is_set()
    assert "not-the-token" not in str(caught.value)


async def test_a_pause_wakes_uploads_that_are_backing_off(sim: RunningSimulator, tmp_path: Path) -> None:
    sim.set_faults(Faults(post_errors={503: 1.0}, retry_after_seconds=30))
    async with Uploader(settings_for(sim, retry_after_cap=30)) as uploader:
        waiting = asyncio.create_task(uploader.upload(write_chunk(tmp_path, 1)))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        uploader.pause("the token was revoked")  # what a 401 on another upload does
        with pytest.raises(TerminalUploadError, match="paused"):
            await waiting
        assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("filename", "status", "fragment"),
    [
        ("bad name.ndjson.gz", 400, "filename"),
        ("report.csv", 400, "filename"),
    ],
)
async def test_400_is_terminal_with_the_reason(
    sim: RunningSimulator, tmp_path: Path, filename: str, status: int, fragment: str
) -> None:
    async with Uploader(settings_for(sim)) as uploader:
        with pytest.raises(TerminalUploadError) as caught:
            await uploader.upload(write_chunk(tmp_path, 1, filename=filename))
    assert caught.value.status == status
    assert fragment in str(caught.value)
    assert uploader.stats.creates == 1  # no retry of a terminal answer


async def test_413_is_terminal(tmp_path: Path) -> None:
    config = SimulatorConfig(token=Secret(TOKEN), store_dir=tmp_path / "store", max_object_bytes=64)
    async with await start_simulator(config) as small, Uploader(settings_for(small)) as uploader:
        with pytest.raises(TerminalUploadError) as caught:
            await uploader.upload(write_chunk(tmp_path, 1, rows=50))
    assert caught.value.status == 413
    assert "EntityTooLarge" in str(caught.value)
    assert uploader.stats.puts == 1


async def test_404_unknown_dataset_is_terminal(tmp_path: Path) -> None:
    config = SimulatorConfig(token=Secret(TOKEN), store_dir=tmp_path / "s", known_datasets=frozenset({"x"}))
    async with await start_simulator(config) as other, Uploader(settings_for(other)) as uploader:
        with pytest.raises(TerminalUploadError) as caught:
            await uploader.upload(write_chunk(tmp_path, 1))
    assert caught.value.status == 404


async def test_a_url_on_a_host_not_allow_listed_is_refused(sim: RunningSimulator, tmp_path: Path) -> None:
    sim.set_faults(Faults(presign_base_url="http://169.254.169.254"))
    async with Uploader(settings_for(sim)) as uploader:
        with pytest.raises(TerminalUploadError, match=r"169\.254\.169\.254"):
            await uploader.upload(write_chunk(tmp_path, 1))
    assert not [e for e in sim.requests() if e.method == "PUT"]
    assert uploader.stats.puts == 0


async def test_https_is_required_for_upload_urls_when_configured(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    host = sim.base_url.split("//")[1].split(":")[0]
    settings = settings_for(sim, allowed_url_hosts=(host,))
    object.__setattr__(settings, "require_https", True)  # the API itself is plain http on loopback
    async with Uploader(settings) as uploader:
        with pytest.raises(TerminalUploadError, match="non-https"):
            await uploader.upload(write_chunk(tmp_path, 1))


async def test_concurrency_cap_is_respected(sim: RunningSimulator, tmp_path: Path) -> None:
    sim.set_faults(Faults(latency_seconds=0.1))
    chunks = [write_chunk(tmp_path, i) for i in range(12)]
    async with Uploader(settings_for(sim, concurrency=3)) as uploader:
        results = await deliver_all(uploader, chunks)
    assert not [r for r in results if isinstance(r, BaseException)]
    assert uploader.stats.max_in_flight == 3
    intervals = [(e.started_at, e.started_at + e.seconds) for e in sim.requests()]
    assert _max_overlap(intervals) <= 3


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1])
    )
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


async def test_request_rate_limit_is_respected(sim: RunningSimulator, tmp_path: Path) -> None:
    chunks = [write_chunk(tmp_path, i) for i in range(21)]
    async with Uploader(settings_for(sim, requests_per_second=20.0, concurrency=8)) as uploader:
        results = await deliver_all(uploader, chunks)
    assert not [r for r in results if isinstance(r, BaseException)]
    posts = sorted(e.started_at for e in sim.requests() if e.method == "POST")
    assert len(posts) == 21
    assert posts[-1] - posts[0] >= 0.8  # 20 gaps at 20/s is 1 s; generous for clock jitter
    for start in posts:
        assert sum(1 for t in posts if start <= t < start + 0.5) <= 13


@pytest.mark.parametrize("form", [RetryAfterForm.SECONDS, RetryAfterForm.HTTP_DATE])
async def test_retry_after_is_honoured(sim: RunningSimulator, tmp_path: Path, form: RetryAfterForm) -> None:
    sim.set_faults(Faults(throttle_rate=1.0, retry_after_seconds=1, retry_after_form=form))
    async with Uploader(settings_for(sim)) as uploader:
        started = time.monotonic()
        task = asyncio.create_task(uploader.upload(write_chunk(tmp_path, 1)))
        await asyncio.sleep(0.2)
        sim.set_faults(Faults())
        await task
        elapsed = time.monotonic() - started
    assert elapsed >= 0.9
    throttled = [e for e in sim.requests() if e.status == 429]
    assert len(throttled) == 1  # without the hint, 20 ms backoffs would have hit 429 again and again
    assert uploader.stats.retries == {"http_429": 1}


async def test_one_retry_budget_per_host_caps_traffic_in_an_outage(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    sim.set_faults(Faults(put_errors={503: 1.0}, retry_after_form=RetryAfterForm.NONE))
    chunks = [write_chunk(tmp_path, i) for i in range(10)]
    async with Uploader(settings_for(sim, retry_budget=20, max_attempts=8)) as uploader:
        results = await deliver_all(uploader, chunks)
    assert all(isinstance(r, TransientUploadError) for r in results)
    puts = [e for e in sim.requests() if e.method == "PUT"]
    # First tries, plus what the shared budget paid for: 20 tokens, plus 1 refunded per clean create
    # (API and store share the loopback host here), at 5 tokens a retry.
    assert len(puts) <= 10 + (20 + 10) // 5
    assert uploader.stats.retries_denied >= 6
    assert any("retry budget" in str(r) for r in results)


async def test_attempts_are_bounded(sim: RunningSimulator, tmp_path: Path) -> None:
    sim.set_faults(Faults(post_errors={500: 1.0}))
    async with Uploader(settings_for(sim, max_attempts=3)) as uploader:
        with pytest.raises(TransientUploadError, match="gave up after 3 attempts"):
            await uploader.upload(write_chunk(tmp_path, 1))
    assert uploader.stats.creates == 3
    assert uploader.stats.retries == {"http_500": 2}


async def test_expired_urls_are_refreshed_but_not_forever(sim: RunningSimulator, tmp_path: Path) -> None:
    sim.set_faults(Faults(url_ttl_seconds=0))
    created: list[str] = []

    async def on_created(upload_id: str) -> None:
        created.append(upload_id)

    async with Uploader(settings_for(sim, url_refresh_limit=2)) as uploader:
        with pytest.raises(TerminalUploadError, match="refused 3 times") as caught:
            await uploader.upload(write_chunk(tmp_path, 1), on_created)
    assert caught.value.status == 403
    assert len(created) == 3
    assert uploader.stats.retries == {"url_expired": 3}


async def test_connection_refused_is_transient(tmp_path: Path) -> None:
    config = SimulatorConfig(token=Secret(TOKEN), store_dir=tmp_path / "s")
    async with await start_simulator(config) as gone:
        settings = settings_for(gone, max_attempts=2)
    async with Uploader(settings) as uploader:
        with pytest.raises(TransientUploadError, match="connection failed"):
            await uploader.upload(write_chunk(tmp_path, 1))
    assert uploader.stats.retries == {"connection": 1}


async def test_a_chunk_file_that_changed_size_is_terminal(sim: RunningSimulator, tmp_path: Path) -> None:
    chunk = write_chunk(tmp_path, 1)
    chunk.path.write_bytes(b"short")
    async with Uploader(settings_for(sim)) as uploader:
        with pytest.raises(TerminalUploadError, match="recorded"):
            await uploader.upload(chunk)


async def test_a_wrong_md5_is_refused_by_the_store(sim: RunningSimulator, tmp_path: Path) -> None:
    chunk = replace(write_chunk(tmp_path, 1), md5_b64=base64.b64encode(b"0" * 16).decode())
    async with Uploader(settings_for(sim)) as uploader:
        with pytest.raises(TerminalUploadError, match="BadDigest") as caught:
            await uploader.upload(chunk)
    assert caught.value.status == 400


def _assert_no_secrets(caplog: pytest.LogCaptureFixture, errors: list[BaseException]) -> None:
    texts = [caplog.text, *(r.getMessage() for r in caplog.records), *(str(e) for e in errors)]
    for text in texts:
        assert TOKEN not in text
        assert "X-Amz-Signature" not in text


async def test_no_token_or_signature_in_logs_or_errors(
    sim: RunningSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    async with Uploader(settings_for(sim, max_attempts=2)) as uploader:
        for index, faults in enumerate(
            [
                Faults(reset_rate=1.0),
                Faults(put_errors={503: 1.0}, retry_after_seconds=0),
                Faults(url_ttl_seconds=0),
                Faults(put_errors={500: 1.0}),
            ]
        ):
            sim.set_faults(faults)
            try:
                await uploader.upload(write_chunk(tmp_path, index))
            except UploadError as exc:
                errors.append(exc)
        assert len(errors) == 4
    assert uploader.stats.retries.get("connection", 0) >= 1
    sim.set_faults(Faults())
    async with Uploader(settings_for(sim, token=Secret(TOKEN + "x"))) as bad:
        with pytest.raises(TerminalUploadError) as caught:
            await bad.upload(write_chunk(tmp_path, 9))
    errors.append(caught.value)
    _assert_no_secrets(caplog, errors)
    assert "pausing all uploads" in caplog.text
    assert repr(settings_for(sim)).count(TOKEN) == 0


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="api_url"):
        UploadSettings(api_url="ftp://x", token=Secret("t"))
    with pytest.raises(ConfigError, match="https"):
        UploadSettings(api_url="http://api.example", token=Secret("t"))
    with pytest.raises(ConfigError, match="concurrency"):
        UploadSettings(api_url="https://api.example", token=Secret("t"), concurrency=0)
    assert UploadSettings(api_url="https://API.example", token=Secret("t")).url_hosts == {"api.example"}


def test_parse_retry_after_both_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-3") is None


def test_backoff_is_full_jitter_with_a_cap() -> None:
    rng = random.Random(1)
    samples = [backoff_delay(10, 0.5, 4.0, rng) for _ in range(500)]
    assert max(samples) <= 4.0
    assert min(samples) < 0.5
    assert all(0 <= backoff_delay(1, 0.5, 30, rng) <= 0.5 for _ in range(100))


def test_retry_budget_spends_and_refunds() -> None:
    budget = RetryBudget(12)
    assert budget.spend(5)
    assert budget.spend(5)
    assert not budget.spend(5)
    assert budget.tokens == 2
    budget.refund(100)
    assert budget.tokens == 12


async def test_token_bucket_spaces_requests() -> None:
    bucket = TokenBucket(rate=50.0)
    started = time.monotonic()
    for _ in range(11):
        await bucket.acquire()
    assert time.monotonic() - started >= 0.18


async def test_a_slow_server_hits_the_per_chunk_deadline_and_is_retried(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    sim.set_faults(Faults(latency_seconds=0.6))
    settings = settings_for(sim, deadline_slack=0.2, min_throughput_bytes_per_s=10**9, max_attempts=2)
    async with Uploader(settings) as uploader:
        with pytest.raises(TransientUploadError, match="timed out"):
            await uploader.upload(write_chunk(tmp_path, 1))
    assert uploader.stats.retries == {"timeout": 1}
