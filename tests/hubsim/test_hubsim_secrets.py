"""No token or URL signature in the request log, the simulator's logs or its config repr."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from simclient import TOKEN, Client

from bulkd.hubsim import Faults


async def test_request_log_and_logs_carry_no_secrets(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client.sim.set_faults(Faults(put_errors={503: 0.3}, reset_rate=0.2, seed=1))
    for index in range(10):
        url = await client.new_url(filename=f"f{index}.ndjson.gz")
        with contextlib.suppress(aiohttp.ClientError):  # resets are part of the mix
            await client.put(url, client.ndjson([client.email_open(index)]))
        await client.put(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"), b"{}\n")
    await client.sim.drain()

    async with client.http.get(f"{client.sim.base_url}/v1/_sim/requests", headers=client.auth) as response:
        text = await response.text()
    entries = client.sim.requests()
    assert len(entries) >= 30
    assert all("?" not in e.path for e in entries)
    texts = [text, caplog.text, *(r.getMessage() for r in caplog.records), repr(client.sim.config)]
    for blob in texts:
        assert TOKEN not in blob
        assert "X-Amz-Signature" not in blob
        assert "X-Amz-Date" not in blob


def test_run_simulator_serves_until_sigterm(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from bulkd.hubsim import SimulatorConfig, run_simulator
        from bulkd.secret import Secret

        config = SimulatorConfig(token=Secret("t"), store_dir=Path({str(tmp_path)!r}))
        run_simulator(config, on_ready=lambda sim: print(sim.base_url, flush=True))
        print("stopped", flush=True)
        """
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        request = urllib.request.Request(f"{base_url}/v1/_sim/datasets/x", headers={"Auth-Api-Token": "t"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert out.strip() == "stopped"
