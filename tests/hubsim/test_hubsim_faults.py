"""Fault knobs produce the configured failures, reproducibly, and can change while the server runs."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import aiohttp
import pytest
from simclient import Client
from yarl import URL

from bulkd.hubsim import Faults, RetryAfterForm


async def test_post_errors_answer_with_the_configured_status(client: Client) -> None:
    client.sim.set_faults(Faults(post_errors={500: 1.0}))
    status, doc = await client.create()
    assert status == 500
    assert "error" in doc
    assert client.sim.requests()[-1].fault == "http_500"


async def test_put_errors_answer_s3_style_with_retry_after_on_503(client: Client) -> None:
    url = await client.new_url()
    client.sim.set_faults(Faults(put_errors={503: 1.0}, retry_after_seconds=2))
    status, text, headers = await client.put(url, b"{}\n")
    assert status == 503
    assert "<Code>SlowDown</Code>" in text
    assert headers["Retry-After"] == "2"


async def test_throttling_sends_retry_after_as_an_http_date(client: Client) -> None:
    client.sim.set_faults(
        Faults(throttle_rate=1.0, retry_after_seconds=3, retry_after_form=RetryAfterForm.HTTP_DATE)
    )
    async with client.http.post(
        f"{client.sim.base_url}/v1/uploads", json=client.upload_body(), headers=client.auth
    ) as response:
        assert response.status == 429
        when = parsedate_to_datetime(response.headers["Retry-After"]).timestamp()
    assert 2 <= when - time.time() <= 4.5


async def test_rates_are_honoured_and_reproducible_with_a_seed(client: Client) -> None:
    faults = Faults(post_errors={500: 0.2, 503: 0.1}, throttle_rate=0.1, seed=7)

    async def run() -> list[int]:
        client.sim.set_faults(faults)
        return [(await client.create())[0] for _ in range(300)]

    first, second = await run(), await run()
    assert first == second
    assert 40 <= first.count(500) <= 80
    assert 15 <= first.count(503) <= 45
    assert 15 <= first.count(429) <= 45
    assert first.count(201) + first.count(500) + first.count(503) + first.count(429) == 300


async def test_faults_never_mask_a_real_refusal(client: Client) -> None:
    client.sim.set_faults(Faults(post_errors={500: 1.0}))
    assert (await client.create(token="wrong"))[0] == 401
    assert (await client.create(client.upload_body(record_type="nope")))[0] == 400


async def test_reset_mid_body_drops_the_connection_and_stores_nothing(client: Client) -> None:
    url = await client.new_url()
    client.sim.set_faults(Faults(reset_rate=1.0))
    body = client.ndjson([client.email_open(i) for i in range(2000)], compress=False)
    with pytest.raises(aiohttp.ClientError):
        await client.put(url, body)
    await client.sim.drain()
    assert client.sim.stats("ds1").uploads == 0
    assert not list((client.sim.config.store_dir / "objects").iterdir())
    assert not list((client.sim.config.store_dir / "tmp").iterdir())
    puts = [r for r in client.sim.requests() if r.method == "PUT"]
    assert puts
    assert all(r.status is None and r.fault == "reset" for r in puts)


async def test_reset_after_body_stores_the_object_but_the_client_sees_no_answer(client: Client) -> None:
    url = await client.new_url()
    client.sim.set_faults(Faults(reset_after_body_rate=1.0))
    body = client.ndjson([client.email_open(1)])
    with pytest.raises(aiohttp.ClientError):
        await client.put(url, body)
    client.sim.set_faults(Faults())
    assert (await client.put(url, body))[0] == 200  # the retry is idempotent
    await client.sim.drain()
    stats = client.sim.stats("ds1")
    assert (stats.uploads, stats.loaded, stats.duplicates) == (1, 1, 0)


async def test_latency_is_added_to_api_and_store_requests(client: Client) -> None:
    client.sim.set_faults(Faults(latency_seconds=0.3))
    started = time.monotonic()
    url = await client.new_url()
    await client.put(url, b"{}\n")
    assert time.monotonic() - started >= 0.6


async def test_the_api_rate_limit_answers_429_beyond_the_rate(client: Client) -> None:
    client.sim.set_faults(Faults(api_rate_limit=5))
    statuses = [(await client.create())[0] for _ in range(12)]
    assert statuses[:5] == [201] * 5
    assert 429 in statuses[5:]


async def test_presign_base_url_points_urls_elsewhere(client: Client) -> None:
    client.sim.set_faults(Faults(presign_base_url="http://169.254.169.254"))
    url = await client.new_url()
    assert URL(url).host == "169.254.169.254"


async def test_faults_can_be_read_and_replaced_over_http(client: Client) -> None:
    doc = {"put_errors": {"500": 0.5}, "retry_after_form": "http-date", "seed": 3}
    async with client.http.post(
        f"{client.sim.base_url}/v1/_sim/faults", json=doc, headers=client.auth
    ) as response:
        assert response.status == 200
    assert client.sim.faults == Faults(
        put_errors={500: 0.5}, retry_after_form=RetryAfterForm.HTTP_DATE, seed=3
    )
    assert (await client.get_json("/v1/_sim/faults"))["put_errors"] == {"500": 0.5}


@pytest.mark.parametrize(
    "doc",
    [
        {"post_errors": {"200": 0.5}},
        {"put_errors": {"500": 1.5}},
        {"post_errors": {"500": 0.7}, "throttle_rate": 0.7},
        {"no_such_knob": 1},
        {"retry_after_form": "weeks"},
        [1, 2],
    ],
)
async def test_invalid_faults_are_400(client: Client, doc: object) -> None:
    async with client.http.post(
        f"{client.sim.base_url}/v1/_sim/faults", json=doc, headers=client.auth
    ) as response:
        assert response.status == 400
    assert client.sim.faults == Faults()


async def test_sim_endpoints_require_the_token(client: Client) -> None:
    for path in ("/v1/_sim/requests", "/v1/_sim/datasets/ds1", "/v1/_sim/faults"):
        async with client.http.get(f"{client.sim.base_url}{path}") as response:
            assert response.status == 401


def test_faults_json_round_trip() -> None:
    faults = Faults(
        post_errors={500: 0.1},
        put_errors={503: 0.2, 502: 0.1},
        throttle_rate=0.05,
        reset_rate=0.1,
        url_ttl_seconds=2.5,
        retry_after_form=RetryAfterForm.NONE,
    )
    assert Faults.from_json(faults.to_json()) == faults


async def test_a_put_answered_early_does_not_leave_a_stuck_connection(client: Client) -> None:
    url = await client.new_url()
    client.sim.set_faults(Faults(put_errors={500: 1.0}))
    body = b"x" * (4 * 1024 * 1024)
    try:
        status, _, _ = await client.put(url, body)
        assert status == 500
    except aiohttp.ClientError:
        pass  # the server may close before reading the whole body; either way it is not a hang
    client.sim.set_faults(Faults())
    assert (await client.create())[0] == 201
