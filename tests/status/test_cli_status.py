"""``bulkd status``: the daemon's API when it runs, the ledger when it does not."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from running import BULKD, STATUS_TOKEN, Daemon, customers_csv, start_daemon, write_config

from bulkd.ledger import DB_NAME, SCHEMA_VERSION, Ledger, ReadOnlyLedger


def bulkd(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run the console script with only the given ``BULKD_*`` variables set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKD_")}
    env.update({f"BULKD_{name.upper()}": value for name, value in variables.items()})
    return subprocess.run(
        [str(BULKD), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def bulkd_status(config: Path, *args: str, port: int | None = None, token: str | None = None) -> Any:
    variables = {"status_port": str(port)} if port is not None else {}
    if token is not None:
        variables["status_token"] = token
    return bulkd("status", "--config", str(config), *args, **variables)


def port_of(daemon: Daemon) -> int:
    port = urlsplit(daemon.url).port
    assert port is not None
    return port


def test_json_from_the_running_daemon(finished_run: Daemon) -> None:
    done = bulkd_status(finished_run.config, "--json", port=port_of(finished_run), token=STATUS_TOKEN)
    assert done.returncode == 0, done.stderr
    doc = orjson.loads(done.stdout)
    assert doc["source"] == "daemon"
    assert doc["overview"]["uploader"]["delivered"] == 15
    assert {j["job_id"] for j in doc["jobs"]} == {j["job_id"] for j in finished_run.jobs()}


def test_table_from_the_running_daemon(finished_run: Daemon) -> None:
    done = bulkd_status(finished_run.config, port=port_of(finished_run), token=STATUS_TOKEN)
    assert done.returncode == 0, done.stderr
    assert "intake open" in done.stdout
    assert "ds1/customer_record/alpha.csv" in done.stdout
    assert "archived" in done.stdout
    assert "format 25" in done.stdout


def test_a_missing_token_is_explained(finished_run: Daemon) -> None:
    done = bulkd_status(finished_run.config, "--json", port=port_of(finished_run))
    assert done.returncode == 2
    assert "401" in done.stderr
    assert "BULKD_STATUS_TOKEN" in done.stderr


def test_healthz_exit_status(finished_run: Daemon, tmp_path: Path) -> None:
    assert bulkd_status(finished_run.config, "--healthz", port=port_of(finished_run)).returncode == 0
    nothing = write_config(tmp_path)
    assert bulkd_status(nothing, "--healthz", port=1).returncode == 1


def test_the_ledger_answers_when_no_daemon_runs(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    try:
        daemon.drop("one.csv", customers_csv(20, bad_every=10))
        [job] = daemon.wait_finished(1)
    finally:
        assert daemon.stop() == 0
    done = bulkd_status(daemon.config, "--json", port=port_of(daemon), token=STATUS_TOKEN)
    assert done.returncode == 0, done.stderr
    doc = orjson.loads(done.stdout)
    assert doc["source"] == "ledger"
    assert doc["overview"] is None
    [seen] = doc["jobs"]
    assert {k: seen[k] for k in ("job_id", "state", "rows", "rejected")} == {
        "job_id": job["job_id"],
        "state": "archived",
        "rows": 20,
        "rejected": 2,
    }


def test_the_ledger_answers_while_a_daemon_holds_it_but_its_api_is_unreachable(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    try:
        daemon.drop("one.csv", customers_csv(20, bad_every=10))
        [job] = daemon.wait_finished(1)
        # Port 1: nothing answers there, so the command reads the ledger the daemon has locked.
        done = bulkd_status(daemon.config, "--json", port=1, token=STATUS_TOKEN)
        assert done.returncode == 0, done.stderr
        doc = orjson.loads(done.stdout)
        assert doc["source"] == "ledger"
        assert [(j["job_id"], j["state"], j["rows"]) for j in doc["jobs"]] == [
            (job["job_id"], "archived", 20)
        ]
        table = bulkd_status(daemon.config, port=1)
        assert table.returncode == 0, table.stderr
        assert "read from the ledger" in table.stdout
        assert "ds1/customer_record/one.csv" in table.stdout
        # The daemon did not notice: it still takes and finishes work.
        daemon.drop("two.csv", customers_csv(10, seed=11))
        assert len(daemon.wait_finished(2)) == 2
    finally:
        assert daemon.stop() == 0


def test_a_daemon_starts_while_a_status_reader_has_the_ledger_open(tmp_path: Path) -> None:
    state = tmp_path / "data" / "state"
    Ledger(state).close()  # the ledger a previous run left behind
    reader = ReadOnlyLedger(state)  # what `bulkd status` opens for its ledger fallback
    try:
        with reader.snapshot():
            assert reader.list_jobs() == []
            daemon = start_daemon(tmp_path)  # not refused as a "second instance"
            try:
                daemon.drop("one.csv", customers_csv(20, bad_every=10))
                [job] = daemon.wait_finished(1)
                assert reader.list_jobs() == [], "the reader's snapshot is one moment"
            finally:
                assert daemon.stop() == 0
        [seen] = reader.list_jobs()
        assert (seen.job_id, seen.state.value, seen.rows) == (job["job_id"], "archived", 20)
    finally:
        reader.close()
    assert not any("second instance" in line or "another bulkd" in line for line in daemon.logs)


def test_no_ledger_yet_means_no_jobs(tmp_path: Path) -> None:
    done = bulkd_status(write_config(tmp_path), "--json", port=1)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == {"source": "ledger", "overview": None, "jobs": []}


def test_a_ledger_it_cannot_read_is_named_and_left_alone(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    state = tmp_path / "data" / "state"
    Ledger(state).close()
    raw = sqlite3.connect(state / DB_NAME)
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")  # written by a newer bulkd
    raw.close()
    done = bulkd_status(config, "--json", port=1)
    assert done.returncode == 2
    assert f"state directory {state}" in done.stderr
    assert "newer than this bulkd" in done.stderr
    raw = sqlite3.connect(state / DB_NAME)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1, "not migrated back"
    raw.close()


def test_binding_beyond_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    done = bulkd("run", "--once", "--config", str(write_config(tmp_path)), status_host="0.0.0.0")
    assert done.returncode == 2
    assert "status.host" in done.stderr
    assert "BULKD_STATUS_TOKEN" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was touched
