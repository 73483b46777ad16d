"""``bulkd hub-sim --public-url``: presigned URLs on the name clients use (a compose service name),
not on the address the simulator listens on, and still signed for the PUT that comes through it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from simclient import TOKEN, Client, email_open, md5_b64, ndjson, upload_body
from yarl import URL

from bulkd.hubsim import Faults, SimulatorConfig, start_simulator
from bulkd.secret import Secret

BULKD = Path(sys.executable).with_name("bulkd")


def free_port() -> int:
    """A port nothing listens on right now (the simulator binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def hub_sim_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKD_")}
    env["BULKD_API_TOKEN"] = TOKEN
    return env


@dataclass
class CliSimulator:
    proc: asyncio.subprocess.Process
    listening: str
    """The line ``bulkd hub-sim`` printed when ready."""


@pytest.fixture
async def cli_sim(tmp_path: Path) -> AsyncIterator[tuple[CliSimulator, int]]:
    """``bulkd hub-sim`` on 127.0.0.1, handing out URLs on ``localhost``: the same host, another name."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(BULKD),
        "hub-sim",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--store",
        str(tmp_path / "store"),
        "--public-url",
        f"http://localhost:{port}/",
        env=hub_sim_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert line.startswith("hub-sim listening"), line
        yield CliSimulator(proc, line), port
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_cli_hands_out_urls_on_the_public_url_and_the_put_through_it_is_stored(
    cli_sim: tuple[CliSimulator, int],
) -> None:
    sim, port = cli_sim
    assert (
        sim.listening
        == f"hub-sim listening on http://127.0.0.1:{port} (upload URLs on http://localhost:{port})"
    )
    api = f"http://127.0.0.1:{port}"
    auth = {"Auth-Api-Token": TOKEN}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api}/v1/uploads", json=upload_body(), headers=auth) as created:
            assert created.status == 201
            doc = orjson.loads(await created.read())
        url = str(doc["url"])
        assert url.startswith(f"http://localhost:{port}/_store/{doc['id']}-"), url
        body = ndjson([email_open(i) for i in range(3)])
        # encoded=True: the query goes out exactly as signed (aiohttp would re-quote it otherwise).
        async with http.put(URL(url, encoded=True), data=body, headers={"Content-MD5": md5_b64(body)}) as put:
            assert put.status == 200, await put.text()  # the signature verified through the other name
            assert put.headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        stats = await wait_for_load(http, f"{api}/v1/_sim/datasets/ds1", auth)
        assert (stats["uploads"], stats["loaded"], stats["rejected"]) == (1, 3, 0)
    sim.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(sim.proc.wait(), 30) == 0


async def wait_for_load(http: aiohttp.ClientSession, url: str, auth: dict[str, str]) -> Any:
    """The dataset's counts once the load the PUT started has finished (it runs in the background)."""
    for _ in range(300):
        async with http.get(url, headers=auth) as answer:
            assert answer.status == 200
            stats = orjson.loads(await answer.read())
        if stats["loaded"] + stats["rejected"] >= 3:
            return stats
        await asyncio.sleep(0.1)
    raise AssertionError(f"the load did not finish: {stats}")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("hubsim:8787", "http:// or https://"),
        ("ftp://hubsim:8787", "http:// or https://"),
        ("http://", "needs a host"),
        ("http://:8787", "needs a host"),
        ("http://hubsim:8787/?x=1", "query or fragment"),
        ("http://hubsim:8787#top", "query or fragment"),
        ("http://hubsim:8787/prefix", "must not have a path"),
        ("http://hubsim:port", "invalid port"),
        ("http://user:s3cret-pw@hubsim:8787", "credentials"),
    ],
)
async def test_cli_refuses_a_bad_public_url(tmp_path: Path, value: str, reason: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(BULKD),
        "hub-sim",
        "--port",
        "0",
        "--store",
        str(tmp_path / "store"),
        "--public-url",
        value,
        env=hub_sim_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"listening" not in out
    message = err.decode()
    assert "argument --public-url:" in message
    assert reason in message
    assert "s3cret-pw" not in message
    assert not (tmp_path / "store").exists(), "refused before anything was set up"


async def test_config_normalises_and_checks_the_public_url(tmp_path: Path) -> None:
    config = SimulatorConfig(Secret(TOKEN), tmp_path / "s", public_url="HTTPS://hubsim:8443/")
    assert config.public_url == "https://hubsim:8443"
    with pytest.raises(ValueError, match="public_url must not have a query"):
        SimulatorConfig(Secret(TOKEN), tmp_path / "s", public_url="http://hubsim?x=1")


async def test_the_ssrf_fault_knob_still_overrides_the_public_url(tmp_path: Path) -> None:
    config = SimulatorConfig(Secret(TOKEN), tmp_path / "s", public_url="http://hubsim:8787")
    async with await start_simulator(config) as running, aiohttp.ClientSession() as http:
        client = Client(http, running)
        assert running.public_url == "http://hubsim:8787"
        assert running.base_url.startswith("http://127.0.0.1:")
        assert (await client.new_url()).startswith("http://hubsim:8787/_store/")
        running.set_faults(Faults(presign_base_url="http://169.254.169.254"))
        assert (await client.new_url()).startswith("http://169.254.169.254/_store/")
