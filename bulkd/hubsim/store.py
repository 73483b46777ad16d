"""The object store behind the presigned URLs: S3-style signing, expiry and crash-safe writes to disk.

The presigned URL is a capability (one key, until expiry), so the simulator signs exactly what
S3 would check for a PUT: method, path, issue time and lifetime. Bodies stream to a temp file
that is fsynced and renamed into place, so a dropped connection never leaves a partial object
and a large upload never sits in memory.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import hmac
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "KEY_RE",
    "ObjectStore",
    "PresignCheck",
    "Presigner",
    "PutOutcome",
    "StoreRefusal",
    "parse_content_md5",
]

KEY_RE = re.compile(r"[0-9]+-[A-Za-z0-9_-]+\.ndjson(?:\.gz)?", re.ASCII)
"""Object keys are ``<upload id>-<filename>``: flat, and safe to use as a file name."""

_AMZ_DATE = "%Y%m%dT%H%M%SZ"


class PresignCheck(enum.Enum):
    """Result of checking a presigned URL's query string."""

    OK = "ok"
    MISSING = "missing"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"


class Presigner:
    """Issues and checks HMAC-signed PUT URLs; the key is random per simulator unless given."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def query(self, object_key: str, ttl_seconds: float, now: float | None = None) -> str:
        """The query string that makes ``/_store/<object_key>`` writable for ``ttl_seconds``."""
        issued = datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime(_AMZ_DATE)
        expires = _format_seconds(ttl_seconds)
        signature = self._sign(object_key, issued, expires)
        return f"X-Amz-Expires={expires}&X-Amz-Date={issued}&X-Amz-Signature={signature}"

    def check(self, object_key: str, params: Mapping[str, str], now: float | None = None) -> PresignCheck:
        """Signature first (a forged URL learns nothing about expiry), then the lifetime."""
        issued, expires, signature = (
            params.get(k) for k in ("X-Amz-Date", "X-Amz-Expires", "X-Amz-Signature")
        )
        if not issued or not expires or not signature:
            return PresignCheck.MISSING
        if not hmac.compare_digest(signature, self._sign(object_key, issued, expires)):
            return PresignCheck.BAD_SIGNATURE
        try:
            start = datetime.strptime(issued, _AMZ_DATE).replace(tzinfo=UTC).timestamp()
            lifetime = float(expires)
        except ValueError:
            return PresignCheck.BAD_SIGNATURE
        current = time.time() if now is None else now
        return PresignCheck.EXPIRED if current >= start + lifetime else PresignCheck.OK

    def _sign(self, object_key: str, issued: str, expires: str) -> str:
        message = f"PUT\n/_store/{object_key}\n{issued}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


def _format_seconds(value: float) -> str:
    """Whole seconds as S3 writes them; fractions are kept for sub-second test lifetimes."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def parse_content_md5(header: str) -> bytes | None:
    """Decode a ``Content-MD5`` header (RFC 1864: base64 of the 16-byte digest); None if malformed."""
    try:
        digest = base64.b64decode(header.strip(), validate=True)
    except ValueError:
        return None
    return digest if len(digest) == 16 else None


class StoreRefusal(Exception):
    """An S3-style refusal of a PUT body (``code`` is the S3 error code)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class PutOutcome:
    """What a completed PUT did: ``changed`` is False for a re-PUT of identical bytes."""

    key: str
    etag: str
    size: int
    changed: bool
    path: Path


class ObjectStore:
    """Objects under ``<root>/objects``, partial bodies under ``<root>/tmp`` (cleared at start)."""

    def __init__(self, root: Path) -> None:
        self._objects = root / "objects"
        self._tmp = root / "tmp"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)
        self._etags: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def path_for(self, key: str) -> Path:
        """Where the object lives; the key was checked against :data:`KEY_RE` by the caller."""
        return self._objects / key

    def etag(self, key: str) -> str | None:
        """The MD5 hex of the stored object, or None when the key was never written."""
        return self._etags.get(key)

    async def put(
        self, key: str, body: AsyncIterator[bytes], length: int, content_md5: bytes | None
    ) -> PutOutcome:
        """Stream ``body`` to disk and commit it; one writer per key so re-PUTs cannot interleave."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            tmp = self._tmp / f"{uuid.uuid4().hex}.part"
            try:
                digest, size = await _spool(body, tmp)
                _check_body(digest, size, length, content_md5)
                etag = digest.hex()
                if self._etags.get(key) == etag:
                    tmp.unlink()
                    return PutOutcome(key, etag, size, changed=False, path=self.path_for(key))
                final = self.path_for(key)
                await asyncio.to_thread(_commit, tmp, final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._etags[key] = etag
            return PutOutcome(key, etag, size, changed=True, path=final)


async def _spool(body: AsyncIterator[bytes], tmp: Path) -> tuple[bytes, int]:
    """Write the body to ``tmp`` as it arrives (page-cache writes are short; fsync happens off-loop)."""
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    with tmp.open("wb") as out:
        async for piece in body:
            md5.update(piece)
            size += len(piece)
            out.write(piece)
    return md5.digest(), size


def _check_body(digest: bytes, size: int, length: int, content_md5: bytes | None) -> None:
    if size != length:
        raise StoreRefusal(
            400, "IncompleteBody", "You did not provide the number of bytes specified by the Content-Length"
        )
    if content_md5 is not None and not hmac.compare_digest(digest, content_md5):
        raise StoreRefusal(400, "BadDigest", "The Content-MD5 you specified did not match what we received.")


def _commit(tmp: Path, final: Path) -> None:
    """fsync the data, rename over the old object, fsync the directory: durable and atomic."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
