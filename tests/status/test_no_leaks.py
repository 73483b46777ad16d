"""Invariant 4 over a full run: no token, presigned-URL signature or cell value in any status
response, log line, report or reject file."""

from __future__ import annotations

import re

import pytest
from running import API_TOKEN, STATUS_TOKEN, Daemon

FORBIDDEN = [
    re.compile(re.escape(API_TOKEN)),
    re.compile(re.escape(STATUS_TOKEN)),
    re.compile(r"(?i)x-amz-(signature|credential|security-token|date|expires)"),
    re.compile(r"(?i)[?&](signature|sig|expires|token)="),
    re.compile(r"https?://[^\s\"'<>]*\?(?!<redacted>)"),  # any URL that still has a query string
    re.compile(r"person\d+\.\d+@example\.com"),  # a cell value of the test files
]


def leaks(text: str) -> list[str]:
    return [match.group(0) for pattern in FORBIDDEN for match in pattern.finditer(text)]


def test_the_patterns_catch_what_they_are_for() -> None:
    signed = "PUT http://127.0.0.1:1/_store/1-a.ndjson.gz?X-Amz-Signature=abc&X-Amz-Date=1 failed"
    assert leaks(signed)
    assert leaks(f"Authorization: Bearer {STATUS_TOKEN}")
    assert leaks("row person12.7@example.com")
    assert not leaks("upload to http://127.0.0.1:1/_store/1-a.ndjson.gz?<redacted> failed")


def every_route(daemon: Daemon) -> None:
    """Ask for everything the server offers, with and without the token, plus refusals."""
    for job in daemon.jobs():
        for path in (f"/api/jobs/{job['job_id']}", f"/api/jobs/{job['job_id']}/rejects"):
            daemon.get(path)
            daemon.get(path, token=None)
            daemon.get(path, token="not-the-token")
    for path in ("/", "/static/dashboard.js", "/static/dashboard.css", "/healthz", "/readyz"):
        daemon.get(path)
    for path in ("/metrics", "/api/overview", "/api/jobs", "/api/jobs?state=failed", "/api/jobs?state=x"):
        daemon.get(path)
        daemon.get(path, token=None)
    daemon.get("/api/jobs", method="POST")
    daemon.get("/nothing")


def test_no_response_body_or_header_leaks(finished_run: Daemon) -> None:
    every_route(finished_run)
    assert len(finished_run.responses) > 40
    for response in finished_run.responses:
        text = response.body.decode("utf-8", "replace") + "\n".join(
            f"{k}: {v}" for k, v in response.headers.items()
        )
        assert not leaks(text), text[:500]


def test_no_log_line_leaks(finished_run: Daemon) -> None:
    assert len(finished_run.logs) > 20
    for line in finished_run.logs:
        assert not leaks(line), line


def test_no_report_or_reject_file_leaks(finished_run: Daemon) -> None:
    files = [*finished_run.data.glob("done/*.json"), *finished_run.data.glob("*/*.rejects.ndjson")]
    files += list(finished_run.data.glob("failed/*.json"))
    assert files
    for path in files:
        assert not leaks(path.read_text(encoding="utf-8")), path


@pytest.mark.parametrize("kind", ["job", "chunk"])
def test_logs_have_one_structured_event_per_transition(finished_run: Daemon, kind: str) -> None:
    events = [e for e in finished_run.log_events() if e.get("event") == kind]
    if kind == "chunk":
        delivered = [e for e in events if e["state"] == "delivered"]
        assert len(delivered) == 15
        assert all(e["job_id"] and e["upload_id"] and e["seconds"] >= 0 for e in delivered)
        return
    alpha = next(j for j in finished_run.jobs() if j["source"].endswith("/alpha.csv"))
    states = [e["state"] for e in events if e["job_id"] == alpha["job_id"]]
    assert states[:6] == ["claimed", "converting", "converted", "delivering", "delivered", "archived"]
