"""The dataset load validates every record, counts per dataset and record type, and spots duplicates."""

from __future__ import annotations

import gzip

import orjson
from simclient import Client


async def test_load_counts_valid_and_invalid_records(client: Client) -> None:
    records = [client.email_open(i) for i in range(7)] + [client.email_open(99, bad=True)]
    records.append({"link": {"email": "x@example.com"}})  # missing action_at and email_id
    url = await client.new_url()
    body = client.ndjson(records) + gzip.compress(b"\n", mtime=0)  # a blank line is skipped, not rejected
    assert (await client.put(url, body))[0] == 200

    await client.sim.drain()
    stats = await client.get_json("/v1/_sim/datasets/ds1")
    assert stats["uploads"] == 1
    assert stats["loaded"] == 7
    assert stats["rejected"] == 2
    assert stats["by_record_type"] == {"email_open": {"uploads": 1, "loaded": 7, "rejected": 2}}
    rules = [r["rule"] for r in stats["rejects_sample"]]
    assert rules == ["format", "required"]
    assert all("value" not in r for r in stats["rejects_sample"])
    assert [r["line"] for r in stats["rejects_sample"]] == [8, 9]


async def test_plain_ndjson_and_non_object_lines(client: Client) -> None:
    url = await client.new_url(filename="plain.ndjson")
    body = orjson.dumps(client.email_open(1)) + b"\n[1, 2]\nnot json\n"
    assert (await client.put(url, body))[0] == 200
    await client.sim.drain()
    stats = client.sim.stats("ds1")
    assert (stats.loaded, stats.rejected) == (1, 2)
    assert {r["rule"] for r in stats.rejects_sample} == {"type", "json"}


async def test_records_endpoint_returns_only_loaded_records_in_order(client: Client) -> None:
    first = [client.email_open(i) for i in range(3)]
    second = [client.email_open(3), client.email_open(4, bad=True)]
    for index, batch in enumerate((first, second)):
        url = await client.new_url(filename=f"part-{index}.ndjson.gz")
        assert (await client.put(url, client.ndjson(batch)))[0] == 200
    assert await client.sim.records("ds1") == [*first, second[0]]
    async with client.http.get(
        f"{client.sim.base_url}/v1/_sim/datasets/ds1/records", headers=client.auth
    ) as response:
        lines = (await response.read()).splitlines()
    assert [orjson.loads(line) for line in lines] == [*first, second[0]]


async def test_counts_are_kept_per_dataset_and_record_type(client: Client) -> None:
    product = {"product_id": "p1", "name": "Widget"}
    url = await client.new_url(filename="p.ndjson.gz", dataset_id="ds2", record_type="product")
    assert (await client.put(url, client.ndjson([product])))[0] == 200
    url = await client.new_url(dataset_id="ds2")
    assert (await client.put(url, client.ndjson([client.email_open(1)])))[0] == 200
    await client.sim.drain()
    stats = client.sim.stats("ds2")
    assert stats.by_record_type == {
        "product": {"uploads": 1, "loaded": 1, "rejected": 0},
        "email_open": {"uploads": 1, "loaded": 1, "rejected": 0},
    }
    assert client.sim.stats("ds1").uploads == 0


async def test_records_loaded_again_by_another_object_are_duplicates(client: Client) -> None:
    records = [client.email_open(i) for i in range(4)]
    for name in ("a.ndjson.gz", "b.ndjson.gz"):
        url = await client.new_url(filename=name)
        assert (await client.put(url, client.ndjson(records)))[0] == 200
    await client.sim.drain()
    stats = client.sim.stats("ds1")
    assert (stats.uploads, stats.loaded, stats.duplicates) == (2, 8, 4)


async def test_key_order_does_not_hide_a_duplicate(client: Client) -> None:
    record = client.email_open(1)
    reordered = dict(reversed(list(record.items())))
    for name, rec in (("a.ndjson.gz", record), ("b.ndjson.gz", reordered)):
        url = await client.new_url(filename=name)
        assert (await client.put(url, client.ndjson([rec])))[0] == 200
    await client.sim.drain()
    assert client.sim.stats("ds1").duplicates == 1


async def test_a_corrupt_gzip_object_is_a_failed_load(client: Client) -> None:
    url = await client.new_url()
    body = client.ndjson([client.email_open(i) for i in range(50)])[:-20]
    assert (await client.put(url, body))[0] == 200
    await client.sim.drain()
    stats = client.sim.stats("ds1")
    assert (stats.uploads, stats.failed_loads, stats.loaded) == (1, 1, 0)


async def test_a_large_object_streams_through(client: Client) -> None:
    records = [client.email_open(i) for i in range(20_000)]
    body = client.ndjson(records, compress=False)
    assert len(body) > 1024 * 1024
    url = await client.new_url(filename="big.ndjson")
    assert (await client.put(url, body))[0] == 200
    await client.sim.drain()
    assert client.sim.stats("ds1").loaded == 20_000
