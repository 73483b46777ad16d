"""/metrics after a real run: it parses with prometheus-client's parser and agrees with the job reports."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families
from running import Daemon


def scrape(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = daemon.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def reports(daemon: Daemon) -> list[dict[str, Any]]:
    found = sorted([*daemon.data.glob("done/*.report.json"), *daemon.data.glob("failed/*.report.json")])
    return [orjson.loads(Path(p).read_bytes()) for p in found]


def test_counters_agree_with_the_job_reports(finished_run: Daemon) -> None:
    metrics = scrape(finished_run)
    docs = reports(finished_run)
    assert len(docs) == 4

    def value(name: str, **labels: str) -> float:
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("bulkd_rows_total") == sum(d["rows"] or 0 for d in docs) == 1480
    assert value("bulkd_records_total") == sum(d["records"] or 0 for d in docs) == 1425
    assert value("bulkd_rejected_rows_total") == sum(d["rejected"] or 0 for d in docs) >= 25
    by_rule: Counter[str] = Counter()
    for doc in docs:
        by_rule.update(doc["rejects_by_rule"])
    for rule, count in by_rule.items():
        assert value("bulkd_rejects_total", rule=rule) == count
    states = Counter(d["state"] for d in docs)
    assert states == {"archived": 2, "failed": 1, "duplicate": 1}
    for state, count in states.items():
        assert value("bulkd_files_finished_total", state=state) == count

    delivered = [c for d in docs for c in d["chunks"] if c["state"] == "delivered"]
    written = [c for d in docs for c in d["chunks"]]
    assert value("bulkd_chunks_total", state="delivered") == len(delivered) == 15
    assert value("bulkd_chunks_total", state="written") == len(written)
    assert value("bulkd_chunks_total", state="failed") == 0
    assert value("bulkd_records_delivered_total") == sum(d["records_delivered"] for d in docs)
    assert value("bulkd_chunk_bytes_total", state="delivered") == sum(c["bytes"] for c in delivered)
    assert value("bulkd_chunk_bytes_total", state="written") == sum(c["bytes"] for c in written)
    assert value("bulkd_upload_seconds_count") == len(delivered)
    assert value("bulkd_upload_seconds_bucket", le="+Inf") == len(delivered)
    assert value("bulkd_upload_seconds_sum") > 0


def test_uploader_counters_match_its_own_statistics(finished_run: Daemon) -> None:
    metrics = scrape(finished_run)
    up = finished_run.get("/api/overview").json()["uploader"]
    retries = {
        dict(labels)["cause"]: value
        for (name, labels), value in metrics.items()
        if name == "bulkd_upload_retries_total"
    }
    assert retries == up["retries"]
    assert retries["http_503"] >= 1
    assert metrics[("bulkd_upload_requests_total", ())] == up["requests"]
    assert metrics[("bulkd_uploads_in_flight", ())] == 0
    assert metrics[("bulkd_uploads_paused", ())] == 0


def test_gauges_show_an_idle_daemon(finished_run: Daemon) -> None:
    metrics = scrape(finished_run)
    for state in ("claimed", "converting", "converted", "delivering", "delivered"):
        assert metrics[("bulkd_files", (("state", state),))] == 0
    assert metrics[("bulkd_spool_bytes", ())] == 0
    assert metrics[("bulkd_queue_depth", ())] == 0
    assert metrics[("bulkd_intake_paused", ())] == 0
    assert metrics[("bulkd_start_time_seconds", ())] > 0
