"""Issue 6, part 6: secrets and cell values stay in, and presigned URLs cannot send bulkd elsewhere.

Every scenario of the other suites already sweeps its logs, reports, rejects and the ledger for
the token, URL signatures and the markers in invalid cells (:func:`bulkd.selftest.find_leaks`).
Here the sweep runs where leaks are likeliest: debug logging, a refused token, errors that carry
URLs (expired and refused presigned URLs, resets, 5xx with S3 XML bodies), and invalid rows whose
every cell is a distinctive value.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from pathlib import Path

import orjson
import pytest

from bulkd.hubsim import Faults
from bulkd.selftest import Rig, Tuning, drop_into_inbox, find_leaks, generate_inputs, run_daemon
from bulkd.selftest.oracle import LedgerView

DEBUG = Tuning(extra={"service": {"log_level": "debug"}})
NOISY = Faults(
    post_errors={500: 0.1, 503: 0.1},
    put_errors={500: 0.1, 403: 0.1},
    reset_rate=0.1,
    reset_after_body_rate=0.1,
    url_ttl_seconds=1.0,
    latency_seconds=0.05,
)


async def test_no_token_signature_or_cell_value_leaks_through_faults_and_a_refused_token(
    tmp_path: Path,
) -> None:
    async with await Rig.start(tmp_path / "rig", faults=NOISY, tuning=DEBUG) as rig:
        inputs = generate_inputs(random.Random(61), dataset_id="dssec", files=3, invalid_ratio=0.3)
        drop_into_inbox(rig.ws.inbox, inputs.files)
        wrong = f"wrong-{secrets.token_hex(8)}-token-value"
        refused = await run_daemon(rig.ws, extra_env={"BULKD_API_TOKEN": wrong})
        assert refused.exit_code == 1
        assert b"401" in refused.log.read_bytes()
        for _ in range(8):
            if (await run_daemon(rig.ws)).exit_code == 0:
                break
        problems = await rig.final_problems(inputs)
        assert not problems, problems
        leaks = find_leaks(rig.ws, inputs, extra=[wrong.encode()])
        requests = orjson.dumps([entry.to_json() for entry in rig.sim.requests()])
    assert not leaks, leaks
    assert rig.ws.token.reveal().encode() not in requests
    assert b"X-Amz" not in requests


def _hostile_csv() -> tuple[bytes, list[bytes]]:
    """Invalid rows of every kind whose every cell is a distinctive value; returns data and values."""
    markers: list[bytes] = []

    def mark(kind: str) -> bytes:
        value = f"CELL{kind}{len(markers):03d}Z".encode()
        markers.append(value)
        return value

    rows = [
        b"%s,2024-01-01T00:00:00Z,%s,%s" % (mark("email"), mark("id"), mark("campaign")),  # pattern
        b"v1@example.com,%s-02-31T00:00:00Z,%s,%s" % (mark("date")[:4], mark("id"), mark("campaign")),
        b"v2@example.com,%s,%s,%s" % (mark("when"), mark("id"), mark("campaign")),  # format
        b"v3@example.com,2024-01-01T00:00:00Z,,%s" % mark("campaign"),  # required
        b"v4@example.com,2024-01-01T00:00:00Z,%s,%s,%s"
        % (mark("id"), mark("campaign"), mark("extra")),  # ragged
        b"v5@example.com,2024-01-01T00:00:00Z,%s,%s\xff\xfe" % (mark("id"), mark("utf8")),  # invalid UTF-8
        b"v6@example.com,2024-01-01T00:00:00Z,%s,%s\x00" % (mark("id"), mark("nul")),  # NUL byte
        b"v7@example.com,2024-01-01T00:00:00Z,%s,%s" % (mark("id"), mark("big") * 100_000),  # over 1 MiB
        b'"%s\n%s",2024-01-01T00:00:00Z,%s,x' % (mark("multi"), mark("line"), mark("id")),  # newline in cell
    ]
    markers[1] = markers[1][:4]  # only the year part of that marker is in the data
    good = b"ok@example.com,2024-01-01T00:00:00Z,ok1,fine"
    data = b"link.email,action_at,email_id,campaign_id\n" + b"\n".join([good, *rows]) + b"\n"
    return data, [m for m in markers if len(m) > 4]


async def test_reject_files_hold_no_cell_values(tmp_path: Path) -> None:
    data, markers = _hostile_csv()
    async with await Rig.start(tmp_path / "rig", tuning=DEBUG) as rig:
        path = rig.ws.inbox / "dscells" / "email_open" / "cells.csv"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        run = await run_daemon(rig.ws)
        assert run.exit_code == 0, run.log.read_text()[-2000:]
        rejects = b"".join(p.read_bytes() for p in rig.ws.done.glob("*.rejects.ndjson"))
        report = orjson.loads(next(rig.ws.done.glob("*.report.json")).read_bytes())
        leaks = find_leaks(rig.ws, extra=markers)
    assert (report["rows"], report["records"], report["rejected"]) == (10, 1, 9), report
    assert len(rejects.splitlines()) == 9
    assert not leaks, leaks


class _Listener:
    """A TCP listener that counts connections: proof that no PUT was even attempted on its host."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self, host: str) -> int:
        async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(accept, host, 0)
        return int(self.server.sockets[0].getsockname()[1])


@pytest.mark.parametrize("target", ["link-local", "other-loopback"])
async def test_presigned_urls_on_hosts_off_the_allow_list_are_refused(tmp_path: Path, target: str) -> None:
    listener = _Listener()
    if target == "link-local":
        base = "http://169.254.169.254"  # the cloud metadata service: the classic SSRF target
    else:
        base = f"http://127.0.0.2:{await listener.start('127.0.0.2')}"  # reachable, but not the API's host
    async with await Rig.start(tmp_path / "rig", faults=Faults(presign_base_url=base)) as rig:
        inputs = generate_inputs(random.Random(67), dataset_id="dsssrf", files=2)
        drop_into_inbox(rig.ws.inbox, inputs.files)
        run = await run_daemon(rig.ws, timeout=60)
        assert run.exit_code == 1
        problems = await rig.final_problems(inputs, expect_delivery=False)
        assert not problems, problems
        jobs = LedgerView.read(rig.ws.state).jobs.values()
        assert rig.sim.stats("dsssrf").uploads == 0
        puts = [r for r in rig.sim.requests() if r.method == "PUT"]
    assert puts == []
    assert listener.connections == 0
    if listener.server is not None:
        listener.server.close()
    assert [j.state.value for j in jobs] == ["failed"] * len(inputs.files)
    assert all("not allow-listed" in (j.error or "") for j in jobs), [j.error for j in jobs]
    for report in rig.ws.failed.glob("*.report.json"):
        assert "not allow-listed" in orjson.loads(report.read_bytes())["error"]
