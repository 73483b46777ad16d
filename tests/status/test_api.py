"""The status API of a real daemon after a real run: documents, auth, read-only, probes."""

from __future__ import annotations

import orjson
import pytest
from running import FILES, Daemon


def by_source(daemon: Daemon) -> dict[str, dict[str, object]]:
    return {str(job["source"]).rsplit("/", 1)[-1]: job for job in daemon.jobs()}


def test_jobs_list_the_run_with_counts_progress_and_state(finished_run: Daemon) -> None:
    jobs = by_source(finished_run)
    assert set(jobs) == {*FILES, "alpha-again.csv"}
    alpha = jobs["alpha.csv"]
    assert alpha["state"] == "archived"
    assert (alpha["rows"], alpha["records"], alpha["rejected"]) == (1000, 975, 25)
    assert alpha["rejects_by_rule"] == {"format": 25}
    assert alpha["chunks"] == {"total": 10, "delivered": 10, "failed": 0}
    assert alpha["records_delivered"] == 975
    assert alpha["progress"] == {"stage": "done", "fraction": 1.0}
    assert alpha["rows_per_second"] > 0
    assert jobs["mostly-bad.csv"]["state"] == "failed"
    assert "reject" in str(jobs["mostly-bad.csv"]["error"])
    assert jobs["alpha-again.csv"]["state"] == "duplicate"


def test_jobs_filter_by_state_and_page(finished_run: Daemon) -> None:
    failed = finished_run.get("/api/jobs?state=failed").json()["jobs"]
    assert [j["state"] for j in failed] == ["failed"]
    page = finished_run.get("/api/jobs?limit=1&offset=1").json()
    assert len(page["jobs"]) == 1
    assert page["jobs"][0]["job_id"] == finished_run.jobs()[1]["job_id"]
    assert finished_run.get("/api/jobs?state=nonsense").status == 400
    assert finished_run.get("/api/jobs?limit=0").status == 400
    assert finished_run.get("/api/jobs?limit=x").status == 400


def test_job_detail_has_chunks_and_every_upload_id(finished_run: Daemon) -> None:
    alpha = by_source(finished_run)["alpha.csv"]
    detail = finished_run.get(f"/api/jobs/{alpha['job_id']}").json()
    chunks = detail["chunk_list"]
    assert [c["index"] for c in chunks] == list(range(1, 11))
    assert all(c["state"] == "delivered" and c["upload_ids"] for c in chunks)
    assert sum(c["records"] for c in chunks) == 975
    assert set(detail["upload_ids"]) == {u for c in chunks for u in c["upload_ids"]}
    assert detail["report"].endswith(f"{alpha['job_id']}.report.json")


def test_rejects_are_grouped_by_field_and_rule_with_lines(finished_run: Daemon) -> None:
    alpha = by_source(finished_run)["alpha.csv"]
    doc = finished_run.get(f"/api/jobs/{alpha['job_id']}/rejects").json()
    assert doc["total"] == doc["rejected"] == 25
    [group] = doc["groups"]
    assert (group["field"], group["rule"], group["count"]) == ("date_of_birth", "format", 25)
    assert group["lines"] == [1 + n for n in range(40, 1001, 40)]  # row n sits on line n + 1
    assert not group["lines_truncated"]
    assert "-02-31" not in orjson.dumps(doc).decode()  # the bad value itself is never shown


def test_unknown_jobs_and_routes_are_404(finished_run: Daemon) -> None:
    assert finished_run.get("/api/jobs/nosuchjob").status == 404
    assert finished_run.get("/api/jobs/nosuchjob/rejects").status == 404
    assert finished_run.get("/api/jobs/..%2f..%2fetc").status == 404
    assert finished_run.get("/static/../../bulkd.toml").status == 404
    assert finished_run.get("/nothing-here").status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_the_server_is_read_only(finished_run: Daemon, method: str) -> None:
    for path in ("/api/jobs", "/healthz", "/", "/metrics"):
        assert finished_run.get(path, method=method).status == 405


@pytest.mark.parametrize("path", ["/api/jobs", "/api/overview", "/metrics"])
def test_data_needs_the_bearer_token(finished_run: Daemon, path: str) -> None:
    refused = finished_run.get(path, token=None)
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert finished_run.get(path, token="wrong-token").status == 401
    assert finished_run.get(path, token=finished_run.token + "x").status == 401
    assert finished_run.get(path).status == 200


def test_probes_and_the_page_need_no_token(finished_run: Daemon) -> None:
    assert finished_run.get("/healthz", token=None).json() == {"status": "ok"}
    ready = finished_run.get("/readyz", token=None)
    assert ready.status == 200
    assert ready.json() == {
        "ready": True,
        "checks": {"service": "ok", "ledger": "ok", "spool": "ok", "api": "ok"},
    }
    page = finished_run.get("/", token=None)
    assert page.status == 200
    assert b"/static/dashboard.js" in page.body
    script = finished_run.get("/static/dashboard.js", token=None)
    assert script.headers["Content-Type"].startswith("application/javascript")


def test_every_answer_carries_security_headers(finished_run: Daemon) -> None:
    for path in ("/", "/api/jobs", "/nothing-here"):
        headers = finished_run.get(path).headers
        assert headers["Cache-Control"] == "no-store"
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_overview_shows_uploader_intake_and_throughput(finished_run: Daemon) -> None:
    doc = finished_run.get("/api/overview").json()
    up = doc["uploader"]
    assert up["paused"] is False
    assert up["target"] == "embedded simulator"
    assert up["delivered"] == 15  # alpha 10 + beta 5 chunks
    assert up["retries"].get("http_503", 0) >= 1
    assert doc["intake"] == {"paused": None, "queue_depth": 0, "stopping": False}
    assert doc["spool"]["pending_bytes"] == 0
    assert doc["throughput"]["interval"] > 0
