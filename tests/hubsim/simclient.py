"""Helpers shared by the simulator tests: records, NDJSON bodies and a small client over aiohttp."""

from __future__ import annotations

import base64
import gzip
import hashlib
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict
from yarl import URL

from bulkd.hubsim import RunningSimulator

TOKEN = "sim-token-5f1c2a9e7b"


def email_open(n: int, *, bad: bool = False) -> dict[str, Any]:
    """A valid ``email_open`` record, or one whose date does not exist on the calendar."""
    day = "2024-02-31" if bad else "2024-01-02"
    return {"link": {"email": f"user{n}@example.com"}, "action_at": f"{day}T03:04:05Z", "email_id": f"e{n}"}


def ndjson(records: list[dict[str, Any]], *, compress: bool = True) -> bytes:
    raw = b"".join(orjson.dumps(r) + b"\n" for r in records)
    return gzip.compress(raw, mtime=0) if compress else raw


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def upload_body(
    filename: str = "ds1_email_open_1.ndjson.gz", dataset_id: str = "ds1", record_type: str = "email_open"
) -> dict[str, Any]:
    return {
        "filename": filename,
        "destination": {
            "destination_type": "dataset_load",
            "dataset_id": dataset_id,
            "record_type": record_type,
        },
    }


@dataclass
class Client:
    """A thin helper over a real aiohttp session talking to the simulator."""

    http: aiohttp.ClientSession
    sim: RunningSimulator
    token = TOKEN
    email_open = staticmethod(email_open)
    ndjson = staticmethod(ndjson)
    md5_b64 = staticmethod(md5_b64)
    upload_body = staticmethod(upload_body)

    @property
    def auth(self) -> dict[str, str]:
        return {"Auth-Api-Token": TOKEN}

    async def create(self, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
        headers = {} if token is None else {"Auth-Api-Token": token}
        payload = upload_body() if body is None else body
        async with self.http.post(f"{self.sim.base_url}/v1/uploads", json=payload, headers=headers) as r:
            return r.status, orjson.loads(await r.read())

    async def new_url(self, **kwargs: str) -> str:
        status, doc = await self.create(upload_body(**kwargs))
        assert status == 201, doc
        return str(doc["url"])

    async def put(self, url: str, data: bytes, *, md5: bool = True) -> tuple[int, str, CIMultiDict[str]]:
        headers = {"Content-MD5": md5_b64(data)} if md5 else {}
        async with self.http.put(_encoded(url), data=data, headers=headers) as r:
            return r.status, await r.text(), CIMultiDict(r.headers)

    async def get_json(self, path: str) -> Any:
        async with self.http.get(f"{self.sim.base_url}{path}", headers=self.auth) as r:
            assert r.status == 200, await r.text()
            return orjson.loads(await r.read())


def _encoded(url: str) -> URL:
    """Keep the presigned query exactly as signed (aiohttp would otherwise re-quote it)."""
    return URL(url, encoded=True)
