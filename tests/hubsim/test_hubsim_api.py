"""The create-upload API and the presigned store refuse exactly what Lexer and S3 refuse."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from simclient import Client
from yarl import URL

from bulkd.hubsim import Faults, SimulatorConfig, start_simulator
from bulkd.secret import Secret


async def test_happy_path_creates_an_upload_and_stores_the_object(client: Client) -> None:
    status, doc = await client.create()
    assert status == 201
    assert isinstance(doc["id"], int)
    parts = urlsplit(doc["url"])
    assert parts.path == f"/_store/{doc['id']}-ds1_email_open_1.ndjson.gz"
    assert {"X-Amz-Expires", "X-Amz-Date", "X-Amz-Signature"} <= {
        q.split("=")[0] for q in parts.query.split("&")
    }

    body = client.ndjson([client.email_open(i) for i in range(3)])
    put_status, _, headers = await client.put(doc["url"], body)
    assert put_status == 200
    assert headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    await client.sim.drain()
    stats = client.sim.stats("ds1")
    assert (stats.uploads, stats.loaded, stats.rejected) == (1, 3, 0)


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
async def test_create_without_the_right_token_is_401(client: Client, token: str | None) -> None:
    status, doc = await client.create(token=token)
    assert status == 401
    assert "error" in doc


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"filename": "a b.ndjson"}, "filename"),
        ({"filename": "data.csv"}, "filename"),
        ({"filename": "../etc.ndjson"}, "filename"),
        ({"filename": "x.ndjson.gz.tmp"}, "filename"),
        ({"filename": "ünï.ndjson"}, "filename"),
        ({"destination_type": "manual"}, "destination_type"),
        ({"dataset_id": ""}, "dataset_id"),
        ({"record_type": "category"}, "record_type"),
    ],
)
async def test_create_with_a_bad_body_is_400_with_a_reason(
    client: Client, body: dict[str, str], fragment: str
) -> None:
    doc = client.upload_body()
    for key, value in body.items():
        (doc if key == "filename" else doc["destination"])[key] = value
    status, answer = await client.create(doc)
    assert status == 400
    assert fragment in answer["error"]


@pytest.mark.parametrize(
    "body", [[], "text", {"filename": "a.ndjson"}, {"filename": "a.ndjson", "destination": 1}]
)
async def test_create_with_a_malformed_document_is_400(client: Client, body: Any) -> None:
    status, _ = await client.create(body)
    assert status == 400


async def test_create_with_invalid_json_is_400(client: Client) -> None:
    async with client.http.post(
        f"{client.sim.base_url}/v1/uploads", data=b"{not json", headers=client.auth
    ) as response:
        assert response.status == 400


async def test_unknown_dataset_is_404_when_datasets_are_declared(tmp_path: Path) -> None:
    config = SimulatorConfig(token=Secret("t"), store_dir=tmp_path, known_datasets=frozenset({"known"}))
    async with await start_simulator(config) as sim, aiohttp.ClientSession() as http:
        body = Client.upload_body(dataset_id="other")
        async with http.post(f"{sim.base_url}/v1/uploads", json=body, headers={"Auth-Api-Token": "t"}) as r:
            assert r.status == 404
        body = Client.upload_body(dataset_id="known")
        async with http.post(f"{sim.base_url}/v1/uploads", json=body, headers={"Auth-Api-Token": "t"}) as r:
            assert r.status == 201


def _tamper(url: str) -> str:
    head, _, signature = url.rpartition("X-Amz-Signature=")
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    return f"{head}X-Amz-Signature={flipped}"


async def test_put_with_a_wrong_signature_is_403_signature_does_not_match(client: Client) -> None:
    url = await client.new_url()
    status, text, _ = await client.put(_tamper(url), b"{}\n")
    assert status == 403
    assert "<Code>SignatureDoesNotMatch</Code>" in text


async def test_put_to_another_key_with_a_valid_signature_is_403(client: Client) -> None:
    url = await client.new_url()
    other = url.replace("ds1_email_open_1", "ds1_email_open_2")
    status, text, _ = await client.put(other, b"{}\n")
    assert status == 403
    assert "SignatureDoesNotMatch" in text


async def test_put_without_a_signature_is_403(client: Client) -> None:
    url = await client.new_url()
    status, text, _ = await client.put(url.split("?")[0], b"{}\n")
    assert status == 403
    assert "<Code>AccessDenied</Code>" in text


async def test_an_expired_url_is_403_request_has_expired(sim_config: SimulatorConfig) -> None:

    config = replace(sim_config, url_ttl_seconds=1)
    async with await start_simulator(config) as sim, aiohttp.ClientSession() as http:
        client = Client(http, sim)
        url = await client.new_url()
        await asyncio.sleep(1.1)
        status, text, _ = await client.put(url, client.ndjson([client.email_open(1)]))
        assert status == 403
        assert "<Code>AccessDenied</Code><Message>Request has expired</Message>" in text
        await sim.drain()
        assert sim.stats("ds1").uploads == 0


async def test_a_url_with_zero_lifetime_is_expired_at_once(client: Client) -> None:

    client.sim.set_faults(Faults(url_ttl_seconds=0))
    url = await client.new_url()
    status, text, _ = await client.put(url, b"{}\n")
    assert status == 403
    assert "Request has expired" in text


async def test_chunked_transfer_encoding_is_501(client: Client) -> None:
    url = await client.new_url()

    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"a": 1}\n'

    async with client.http.put(URL(url, encoded=True), data=pieces()) as response:
        assert response.status == 501
        assert "<Code>NotImplemented</Code>" in await response.text()


async def _raw_put(base_url: str, url: str, headers: str) -> bytes:
    """A hand-written request, for what aiohttp will not send (a PUT with neither length nor chunking)."""
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    target = urlsplit(url)
    writer.write(f"PUT {target.path}?{target.query} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    await writer.drain()
    answer = await reader.read(4096)
    writer.close()
    return answer


async def test_missing_content_length_is_411(client: Client) -> None:
    url = await client.new_url()
    answer = await _raw_put(client.sim.base_url, url, "Connection: close\r\n")
    assert answer.startswith(b"HTTP/1.1 411")
    assert b"MissingContentLength" in answer


async def test_body_over_the_size_limit_is_413(sim_config: SimulatorConfig) -> None:

    async with (
        await start_simulator(replace(sim_config, max_object_bytes=1000)) as sim,
        aiohttp.ClientSession() as http,
    ):
        client = Client(http, sim)
        url = await client.new_url()
        status, text, _ = await client.put(url, b"x" * 1001)
        assert status == 413
        assert "EntityTooLarge" in text


async def test_content_md5_mismatch_is_400_bad_digest_and_nothing_is_stored(client: Client) -> None:
    url = await client.new_url()
    body = client.ndjson([client.email_open(1)])
    async with client.http.put(
        URL(url, encoded=True),
        data=body,
        headers={"Content-MD5": client.md5_b64(b"other")},
    ) as response:
        assert response.status == 400
        assert "<Code>BadDigest</Code>" in await response.text()
    await client.sim.drain()
    assert client.sim.stats("ds1").uploads == 0
    assert not list((client.sim.config.store_dir / "objects").iterdir())
    assert not list((client.sim.config.store_dir / "tmp").iterdir())


async def test_malformed_content_md5_is_400_invalid_digest(client: Client) -> None:
    url = await client.new_url()
    async with client.http.put(
        URL(url, encoded=True), data=b"{}\n", headers={"Content-MD5": "not-base64!"}
    ) as response:
        assert response.status == 400
        assert "InvalidDigest" in await response.text()


async def test_put_without_content_md5_is_accepted(client: Client) -> None:
    url = await client.new_url()
    status, _, _ = await client.put(url, client.ndjson([client.email_open(1)]), md5=False)
    assert status == 200


async def test_re_put_of_the_same_bytes_is_idempotent(client: Client) -> None:
    url = await client.new_url()
    body = client.ndjson([client.email_open(i) for i in range(5)])
    first = await client.put(url, body)
    second = await client.put(url, body)
    assert first[0] == second[0] == 200
    assert first[2]["ETag"] == second[2]["ETag"]
    await client.sim.drain()
    stats = client.sim.stats("ds1")
    assert (stats.uploads, stats.loaded, stats.duplicates) == (1, 5, 0)


async def test_re_put_of_different_bytes_replaces_the_object_and_loads_again(client: Client) -> None:
    url = await client.new_url()
    assert (await client.put(url, client.ndjson([client.email_open(1)])))[0] == 200
    assert (await client.put(url, client.ndjson([client.email_open(2)])))[0] == 200
    await client.sim.drain()
    assert client.sim.stats("ds1").uploads == 2
    assert len(list((client.sim.config.store_dir / "objects").iterdir())) == 1
