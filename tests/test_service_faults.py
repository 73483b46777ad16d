"""The daemon against a misbehaving API: transient faults, quickly expiring URLs and a refused token.

Everything must still be delivered exactly once per chunk (a PUT whose answer was lost may be
repeated; the oracle counts each chunk's records once), nothing may be lost, and no log, report
or request log may carry the token or a URL signature.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import (
    Daemon,
    SimThread,
    check_end_state,
    customer_csv,
    customer_parquet,
    email_ndjson,
    inbox_entries,
    json_log_lines,
    load_reports,
)

from bulkd.hubsim import Faults, RetryAfterForm
from bulkd.ledger import ChunkState, JobState, Ledger

FLAKY = Faults(
    post_errors={500: 0.05, 503: 0.05},
    put_errors={500: 0.04, 503: 0.03},
    throttle_rate=0.05,
    retry_after_seconds=1.0,
    reset_rate=0.04,
    reset_after_body_rate=0.03,
    url_ttl_seconds=1.0,
    seed=20240506,
)
"""About 20 % of POSTs and PUTs fail: 500, 503 and 429 (with Retry-After), connections reset mid-body
and after the body was stored; presigned URLs live about a second (issue times are whole seconds)."""


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimThread]:
    with SimThread(tmp_path / "hubsim") as running:
        yield running


def inputs() -> list:  # type: ignore[type-arg]
    return [
        customer_csv("dsflaky/customer_record/a.csv", 900),
        customer_csv("dsflaky/customer_record/b.csv.gz", 500, bad_every=10),
        customer_parquet("dsflakypq/customer_record/c.parquet", 400),
        email_ndjson("dsflakyev/email_send/d.ndjson", 500),
    ]


def test_transient_faults_and_expiring_urls_still_deliver_everything(tmp_path: Path, sim: SimThread) -> None:
    sim.set_faults(FLAKY)
    daemon = Daemon.create(
        tmp_path,
        sim,
        {
            "convert": {"chunk_max_records": 25},
            "upload": {
                "concurrency": 6,
                "max_attempts": 12,
                "retry_budget": 10_000,
                "url_refresh_limit": 20,
                # Retry-After 1 s is honoured: a throttled PUT then finds its URL expired.
                "retry_after_cap": 1.5,
            },
        },
    )
    files = inputs()
    for f in files:
        f.write(daemon.inbox)

    proc = daemon.run("--once", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    reports = check_end_state(daemon, sim, files, reput_ok=True)

    requests = sim.requests()
    faults = Counter(e.fault for e in requests if e.fault)
    assert {"http_500", "http_503", "http_429"} <= set(faults), faults
    assert {"reset", "reset_after_body"} & set(faults), faults
    assert sum(faults.values()) >= 0.1 * len(requests), (faults, len(requests))
    expired = [e for e in requests if e.method == "PUT" and e.status == 403]
    assert expired, "no presigned URL expired: the TTL part of the test did not happen"
    chunks = sum(len(r["chunks"]) for r in reports.values())
    assert chunks >= 60
    refreshed = [c for r in reports.values() for c in r["chunks"] if len(c["upload_ids"]) > 1]
    assert refreshed, "no chunk needed a second upload id"


def test_retry_after_as_http_date_is_honoured(tmp_path: Path, sim: SimThread) -> None:
    sim.set_faults(Faults(throttle_rate=0.3, retry_after_form=RetryAfterForm.HTTP_DATE, seed=7))
    daemon = Daemon.create(
        tmp_path, sim, {"convert": {"chunk_max_records": 20}, "upload": {"max_attempts": 10}}
    )
    files = [customer_csv("dsdate/customer_record/a.csv", 150)]
    files[0].write(daemon.inbox)
    assert daemon.run("--once").returncode == 0
    check_end_state(daemon, sim, files)
    assert any(e.fault == "http_429" for e in sim.requests())


def test_refused_token_pauses_uploads_and_a_restart_with_the_right_token_finishes(
    tmp_path: Path, sim: SimThread
) -> None:
    daemon = Daemon.create(
        tmp_path, sim, {"convert": {"chunk_max_records": 30}, "upload": {"concurrency": 4}}
    )
    files = inputs()[:3]
    for f in files:
        f.write(daemon.inbox)
    wrong = "not-the-token-3b9d0a"

    proc = daemon.run("--once", token=wrong)
    assert proc.returncode == 1, "--once exits 1 while deliveries remain"
    requests = sim.requests()
    assert not [e for e in requests if e.method == "PUT"], "nothing may be sent with a refused token"
    refused = [e for e in requests if e.method == "POST"]
    assert refused
    assert all(e.status == 401 for e in refused)
    assert len(refused) <= 4, f"{len(refused)} create requests after the first 401: uploads did not pause"
    assert any("paus" in line["message"] for line in json_log_lines(daemon) if line["level"] == "error")
    # Nothing lost, nothing given up: the sources wait in the work area, the jobs in the ledger.
    assert inbox_entries(daemon.inbox) == []
    assert len(list(daemon.work.iterdir())) == len(files)
    assert load_reports(daemon.done) == {}
    assert load_reports(daemon.failed) == {}
    ledger = Ledger(daemon.state)
    try:
        jobs = ledger.jobs_in_state(*JobState)
        assert sorted(j.state for j in jobs) == [JobState.DELIVERING] * len(files)
        chunk_states = {c.state for j in jobs for c in ledger.chunks_of(j.job_id)}
        assert ChunkState.FAILED not in chunk_states
        assert ChunkState.DELIVERED not in chunk_states
    finally:
        ledger.close()

    proc = daemon.run("--once")
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_end_state(daemon, sim, files, extra_tokens=[wrong])


def test_a_chunk_refused_for_good_fails_its_job_and_nothing_else(tmp_path: Path) -> None:
    """An unknown dataset answers 404: terminal, so the job fails at once (no retry storm) with a
    report in failed/, while other datasets' files are delivered."""
    with SimThread(tmp_path / "hubsim", known_datasets=frozenset({"dsknown"})) as sim:
        daemon = Daemon.create(tmp_path, sim, {"convert": {"chunk_max_records": 30}})
        good = customer_csv("dsknown/customer_record/a.csv", 100)
        lost = customer_csv("dsunknown/customer_record/b.csv", 100)
        good.write(daemon.inbox)
        lost.write(daemon.inbox)
        assert daemon.run("--once").returncode == 1, "--once exits 1 when a job failed"
        check_end_state(daemon, sim, [good])
        report = load_reports(daemon.failed)[lost.rel]
        assert report["state"] == "failed"
        assert "HTTP 404" in report["error"]
        assert report["records_delivered"] == 0
        assert report["chunks"]
        assert {c["state"] for c in report["chunks"]} <= {"failed", "creating", "written"}
        assert any("404" in (c["error"] or "") for c in report["chunks"])
        posts = [e for e in sim.requests() if e.method == "POST" and e.status == 404]
        assert len(posts) <= len(report["chunks"]), "a 404 was retried"
