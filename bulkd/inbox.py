"""The watched inbox: find settled files, claim them safely, archive them when done.

Anyone who can write to the inbox is untrusted, so: entries are listed with ``os.scandir``
without following symlinks, and only regular files with a single link are taken. Files are
opened through directory fds with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO cannot block us, a swapped
symlink cannot redirect us), and the ``fstat`` of the open fd must match what the scan saw.
File names are bytes and are never used to build a path: work and archive names derive from the
job id, and the original name survives only as escaped text (:func:`escape_name`) for logs and
reports.

A file is taken only once its ``(size, mtime_ns, dev, ino)`` stayed unchanged for
``settle_seconds`` across rescans (writers that cannot rename into place still get a chance to
finish). A full periodic rescan is the source of truth; no change notification is needed.

Claiming is crash-safe: hash the open fd, write a durable claim record (``<job>.claim.json``),
then rename the file into the work area and sync both directories. After a crash,
:func:`recover_claims` returns claims whose ledger row may be missing; a record whose rename
never happened is dropped and the file is found again by the next scan.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import json
import logging
import os
import re
import stat
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from bulkd.durable import (
    crashpoint,
    declare_crashpoint,
    fsync_dir,
    remove_temp_files,
    rename_durable,
    sha256_fd,
    write_atomic,
)
from bulkd.errors import ConfigError, StorageError

__all__ = [
    "ClaimedFile",
    "Inbox",
    "InboxEntry",
    "InboxSettings",
    "Route",
    "ScanResult",
    "Settler",
    "SkipReason",
    "Skipped",
    "archive",
    "claim",
    "escape_name",
    "forget_claim",
    "make_job_id",
    "recover_claims",
    "report_path",
    "scan",
]

log = logging.getLogger("bulkd.inbox")

CLAIM_HASHED = declare_crashpoint("inbox.claim.hashed")
CLAIM_RECORDED = declare_crashpoint("inbox.claim.recorded")
CLAIM_MOVED = declare_crashpoint("inbox.claim.moved")
ARCHIVE_MOVED = declare_crashpoint("inbox.archive.moved")

IGNORED_SUFFIXES = (b".tmp", b".part", b".crdownload", b".swp")
"""In-progress upload names (and all dotfiles) are skipped silently: they are expected."""
CLAIM_RECORD_SUFFIX = ".claim.json"
LAYOUT_DEPTH = 3
_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_EXT = re.compile(rb"[A-Za-z0-9]{1,10}")
_JOB_ID = re.compile(r"[0-9a-f]{20}-[0-9a-f]{8}")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = _OPEN_FLAGS | os.O_DIRECTORY


class SkipReason(StrEnum):
    """Why an inbox entry was not taken; scan reasons are reported once per entry."""

    SYMLINK = "symbolic link"
    NOT_REGULAR = "not a regular file (FIFO, socket or device)"
    DIRECTORY = "directory where a file was expected"
    HARD_LINK = "hard link (more than one name)"
    UNROUTED = "no route matches"
    BAD_ROUTE = "dataset or record type directory is not a valid identifier"
    UNREADABLE = "permission denied"
    CHANGED = "changed since it was scanned; will retry"
    VANISHED = "disappeared before it could be claimed"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a file's records go. ``glob`` matches the path relative to the inbox root:
    ``*`` and ``?`` stay within one directory, ``**`` crosses directories."""

    glob: str
    dataset_id: str
    record_type: str
    profile: str | None = None

    def __post_init__(self) -> None:
        for key in ("dataset_id", "record_type"):
            if not _IDENT.fullmatch(getattr(self, key)):
                raise ConfigError(f"inbox.routes.{key}", f"not a valid identifier: {getattr(self, key)!r}")


@dataclass(frozen=True, slots=True)
class InboxSettings:
    """Inbox configuration. Without ``routes`` the layout ``<dataset_id>/<record_type>/<file>`` applies."""

    root: Path
    work_dir: Path
    settle_seconds: float = 5.0
    poll_interval: float = 2.0
    routes: tuple[Route, ...] = ()
    max_depth: int = LAYOUT_DEPTH


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry bulkd will not take (now), with the reason."""

    rel: bytes
    reason: SkipReason

    @property
    def name(self) -> str:
        return escape_name(self.rel)


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A candidate file as the scan saw it: ``rel`` is its raw relative path under ``root``."""

    root: Path
    rel: bytes
    route: Route
    size: int
    mtime_ns: int
    dev: int
    ino: int

    @property
    def signature(self) -> tuple[int, int, int, int]:
        return (self.size, self.mtime_ns, self.dev, self.ino)

    @property
    def name(self) -> str:
        return escape_name(self.rel)


@dataclass(frozen=True, slots=True)
class ScanResult:
    entries: tuple[InboxEntry, ...]
    skipped: tuple[Skipped, ...]


@dataclass(frozen=True, slots=True)
class ClaimedFile:
    """A file moved into the work area; ``work_path`` is named after ``job_id``, never the source."""

    job_id: str
    sha256: str
    size: int
    device: int
    inode: int
    mtime_ns: int
    rel: bytes
    route: Route
    work_path: Path

    @property
    def source_name(self) -> str:
        """The original relative name, escaped: safe for logs, reports and the ledger."""
        return escape_name(self.rel)

    def to_json(self) -> bytes:
        fields = asdict(self) | {"rel": base64.b64encode(self.rel).decode(), "work_path": str(self.work_path)}
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ClaimedFile:
        raw = json.loads(data)
        raw |= {"rel": base64.b64decode(raw["rel"]), "work_path": Path(raw["work_path"])}
        return cls(**raw | {"route": Route(**raw["route"])})


def escape_name(raw: bytes) -> str:
    """Printable, unambiguous text for a raw name: invalid UTF-8 → ``\\xNN``, controls escaped."""
    out: list[str] = []
    for ch in raw.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            out.append(
                f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
            )
        else:
            out.append(ch)
    return "".join(out)


def make_job_id(sha256: str, dev: int, ino: int, mtime_ns: int) -> str:
    """Content hash prefix plus the file's identity: the same file always maps to the same job,
    while the same content dropped again is a new job (that the ledger flags as a duplicate)."""
    identity = hashlib.sha256(f"{dev}:{ino}:{mtime_ns}".encode()).hexdigest()
    return f"{sha256[:20]}-{identity[:8]}"


def _glob_regex(glob: str) -> re.Pattern[str]:
    parts: list[str] = []
    i = 0
    while i < len(glob):
        for token, regex in (("**/", "(?:[^/]*/)*"), ("**", ".*"), ("*", "[^/]*"), ("?", "[^/]")):
            if glob.startswith(token, i):
                parts.append(regex)
                i += len(token)
                break
        else:
            parts.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(parts), re.DOTALL)


def _route(parts: tuple[bytes, ...], rules: list[tuple[re.Pattern[str], Route]]) -> Route | SkipReason:
    if rules:
        rel = os.fsdecode(b"/".join(parts))
        return next((route for rx, route in rules if rx.fullmatch(rel)), SkipReason.UNROUTED)
    if len(parts) != LAYOUT_DEPTH:
        return SkipReason.UNROUTED
    try:
        dataset_id, record_type = parts[0].decode(), parts[1].decode()
    except UnicodeDecodeError:
        return SkipReason.BAD_ROUTE
    if not (_IDENT.fullmatch(dataset_id) and _IDENT.fullmatch(record_type)):
        return SkipReason.BAD_ROUTE
    return Route("*/*/*", dataset_id, record_type)


def _ignored(name: bytes) -> bool:
    return name.startswith(b".") or name.lower().endswith(IGNORED_SUFFIXES)


def scan(root: Path, routes: tuple[Route, ...] = (), max_depth: int = LAYOUT_DEPTH) -> ScanResult:
    """List candidate files under ``root`` (no symlinks followed) and the entries skipped, with why."""
    rules = [(_glob_regex(r.glob), r) for r in routes]
    depth = max_depth if routes else LAYOUT_DEPTH
    entries: list[InboxEntry] = []
    skipped: list[Skipped] = []
    stack: list[tuple[bytes, tuple[bytes, ...]]] = [(os.fsencode(root), ())]
    while stack:
        directory, parent = stack.pop()
        try:
            with os.scandir(directory) as it:
                listing = [(item.name, item.path) for item in it if not _ignored(item.name)]
        except PermissionError:
            skipped.append(Skipped(b"/".join(parent), SkipReason.UNREADABLE))
            continue
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name, path in listing:
            parts = (*parent, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            outcome = _classify(st, parts, rules)
            if isinstance(outcome, Route):
                entries.append(InboxEntry(root, b"/".join(parts), outcome, *_signature(st)))
            elif outcome is SkipReason.DIRECTORY and len(parts) < depth:
                stack.append((path, parts))
            else:
                skipped.append(Skipped(b"/".join(parts), outcome))
    return ScanResult(tuple(entries), tuple(skipped))


def _classify(
    st: os.stat_result, parts: tuple[bytes, ...], rules: list[tuple[re.Pattern[str], Route]]
) -> Route | SkipReason:
    """Only a regular file with one link can be a candidate; it then needs a route."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return SkipReason.SYMLINK
    if stat.S_ISDIR(mode):
        return SkipReason.DIRECTORY
    if not stat.S_ISREG(mode):
        return SkipReason.NOT_REGULAR
    if st.st_nlink > 1:
        return SkipReason.HARD_LINK
    return _route(parts, rules)


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)


@dataclass
class Settler:
    """Yields an entry only after its signature stayed unchanged for ``settle_seconds``."""

    settle_seconds: float
    clock: Callable[[], float] = time.monotonic
    _seen: dict[bytes, tuple[tuple[int, int, int, int], float]] = field(default_factory=dict)

    def observe(self, entries: Iterable[InboxEntry]) -> list[InboxEntry]:
        """Feed one full scan; entries absent from it are forgotten."""
        now = self.clock()
        seen: dict[bytes, tuple[tuple[int, int, int, int], float]] = {}
        ready: list[InboxEntry] = []
        for entry in entries:
            previous = self._seen.get(entry.rel)
            since = previous[1] if previous and previous[0] == entry.signature else now
            seen[entry.rel] = (entry.signature, since)
            if now - since >= self.settle_seconds:
                ready.append(entry)
        self._seen = seen
        return ready

    def forget(self, rel: bytes) -> None:
        self._seen.pop(rel, None)


def claim(entry: InboxEntry, work_dir: Path) -> ClaimedFile | Skipped:
    """Hash and move ``entry`` into ``work_dir`` (same filesystem), or say why not (retry later)."""
    *dirs, name = entry.rel.split(b"/")
    try:
        dir_fd = os.open(os.fsencode(entry.root), _DIR_FLAGS)
        for part in dirs:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
    except OSError as exc:
        return Skipped(entry.rel, _reason(exc))
    try:
        return _claim_at(dir_fd, name, entry, work_dir)
    finally:
        os.close(dir_fd)


def _reason(exc: OSError) -> SkipReason:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return SkipReason.SYMLINK
    return SkipReason.UNREADABLE if isinstance(exc, PermissionError) else SkipReason.VANISHED


def _claim_at(dir_fd: int, name: bytes, entry: InboxEntry, work_dir: Path) -> ClaimedFile | Skipped:
    hashed = _hash_entry(dir_fd, name, entry)
    if isinstance(hashed, Skipped):
        return hashed
    sha256, st = hashed
    crashpoint(CLAIM_HASHED)
    job_id = make_job_id(sha256, st.st_dev, st.st_ino, st.st_mtime_ns)
    work_path = work_dir / f"{job_id}{_work_suffix(name)}"
    identity = (st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns)
    claimed = ClaimedFile(job_id, sha256, *identity, entry.rel, entry.route, work_path)
    write_atomic(work_dir / f"{job_id}{CLAIM_RECORD_SUFFIX}", claimed.to_json())
    crashpoint(CLAIM_RECORDED)
    try:
        os.rename(name, work_path, src_dir_fd=dir_fd)
    except OSError as exc:
        forget_claim(work_dir, job_id)
        if exc.errno == errno.EXDEV:
            raise StorageError(f"{work_dir} is not on the inbox's filesystem") from exc
        return Skipped(entry.rel, _reason(exc))
    if _signature(os.lstat(work_path))[2:] != (st.st_dev, st.st_ino):
        return _put_back(dir_fd, name, claimed, entry)
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        raise StorageError(f"cannot sync the inbox directory of {entry.name}: {exc.strerror}") from exc
    fsync_dir(work_dir)
    crashpoint(CLAIM_MOVED)
    return claimed


def _hash_entry(dir_fd: int, name: bytes, entry: InboxEntry) -> tuple[str, os.stat_result] | Skipped:
    """SHA-256 of the open file, if it is still the regular file the scan saw, before and after."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        return Skipped(entry.rel, _reason(exc))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Skipped(entry.rel, SkipReason.NOT_REGULAR)
        if st.st_nlink > 1:
            return Skipped(entry.rel, SkipReason.HARD_LINK)
        if _signature(st) != entry.signature:
            return Skipped(entry.rel, SkipReason.CHANGED)
        sha256 = sha256_fd(fd)
        if _signature(os.fstat(fd)) != entry.signature:
            return Skipped(entry.rel, SkipReason.CHANGED)
    finally:
        os.close(fd)
    return sha256, st


def _work_suffix(name: bytes) -> str:
    """Up to two trailing extensions (``.csv.gz``), sanitised, so readers can still tell the format."""
    tail = name.split(b".")[1:][-2:]
    while tail and not all(_EXT.fullmatch(p) for p in tail):
        tail = tail[1:]
    return "".join("." + p.decode().lower() for p in tail)


def _put_back(dir_fd: int, name: bytes, claimed: ClaimedFile, entry: InboxEntry) -> Skipped:
    """The name was replaced between open and rename: return the newcomer, never clobbering."""
    try:
        os.link(claimed.work_path, name, dst_dir_fd=dir_fd)
        os.unlink(claimed.work_path)
    except OSError as exc:
        log.error("inbox: could not return %s; it stays at %s: %s", entry.name, claimed.work_path, exc)
    forget_claim(claimed.work_path.parent, claimed.job_id)
    return Skipped(entry.rel, SkipReason.CHANGED)


def forget_claim(work_dir: Path, job_id: str) -> None:
    """Drop a claim record once the ledger holds the job (or the claim did not happen)."""
    try:
        (work_dir / f"{job_id}{CLAIM_RECORD_SUFFIX}").unlink()
    except FileNotFoundError:
        return
    fsync_dir(work_dir)


def recover_claims(work_dir: Path) -> list[ClaimedFile]:
    """Claims interrupted by a crash: files moved into the work area whose record is still there.

    The caller adds each to the ledger unless it is already there, then calls
    :func:`forget_claim`. Records whose rename never happened are dropped here (the source is
    still in the inbox and the next scan finds it again), and stale temp files are swept.
    """
    remove_temp_files(work_dir)
    found: list[ClaimedFile] = []
    for record in sorted(work_dir.glob(f"*{CLAIM_RECORD_SUFFIX}")):
        claimed = ClaimedFile.from_json(record.read_bytes())
        try:
            moved = _signature(os.lstat(claimed.work_path))[2:] == (claimed.device, claimed.inode)
        except FileNotFoundError:
            moved = False
        if moved:
            found.append(claimed)
        else:
            forget_claim(work_dir, claimed.job_id)
    return found


def archive(claimed_path: Path, dest_dir: Path, job_id: str) -> Path:
    """Move a work file to ``done/`` or ``failed/`` under its job-id name; safe to repeat after a crash."""
    if not _JOB_ID.fullmatch(job_id) or not claimed_path.name.startswith(job_id):
        raise ValueError(f"{claimed_path} is not the work file of job {job_id!r}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / claimed_path.name
    if dest.exists() and not claimed_path.exists():
        return dest
    rename_durable(claimed_path, dest)
    crashpoint(ARCHIVE_MOVED)
    return dest


def report_path(dest_dir: Path, job_id: str) -> Path:
    """Where the daemon writes a job's report JSON, beside the archived source."""
    return dest_dir / f"{job_id}.report.json"


class Inbox:
    """What the daemon polls: settled candidates and claims, with all file I/O off the event loop."""

    def __init__(
        self,
        settings: InboxSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_skip: Callable[[Skipped], None] | None = None,
    ) -> None:
        self.settings = settings
        self._settler = Settler(settings.settle_seconds, clock)
        self._on_skip = on_skip or (lambda s: log.warning("inbox: skipped %s: %s", s.name, s.reason.value))
        self._reported: set[tuple[bytes, SkipReason]] = set()
        self.candidates: frozenset[bytes] = frozenset()
        """Every candidate file of the last scan, settled or not (what ``--once`` still waits for)."""

    async def prepare(self) -> list[ClaimedFile]:
        """Create and check the work area; return claims a crash interrupted (see :func:`recover_claims`)."""
        return await asyncio.to_thread(self._prepare)

    def _prepare(self) -> list[ClaimedFile]:
        work, root = self.settings.work_dir, self.settings.root
        work.mkdir(parents=True, exist_ok=True)
        if os.stat(work).st_dev != os.stat(root).st_dev:
            raise ConfigError("inbox.work_dir", f"{work} must be on the same filesystem as {root}")
        if work.resolve().is_relative_to(root.resolve()):
            first = work.resolve().relative_to(root.resolve()).parts[:1]
            if not first or not first[0].startswith("."):
                raise ConfigError("inbox.work_dir", "inside the inbox it must be a hidden directory")
        return recover_claims(work)

    async def poll(self) -> list[InboxEntry]:
        """Rescan (in a thread) and return the entries that have settled."""
        s = self.settings
        result = await asyncio.to_thread(scan, s.root, s.routes, s.max_depth)
        self.candidates = frozenset(e.rel for e in result.entries)
        present = {e.rel for e in result.entries} | {k.rel for k in result.skipped}
        self._reported = {key for key in self._reported if key[0] in present}
        for skipped in result.skipped:
            self._report(skipped)
        return self._settler.observe(result.entries)

    async def claim(self, entry: InboxEntry) -> ClaimedFile | None:
        """Claim (in a thread); None when the file changed or vanished, to be retried on later polls."""
        outcome = await asyncio.to_thread(claim, entry, self.settings.work_dir)
        if isinstance(outcome, Skipped):
            self._settler.forget(entry.rel)
            self._report(outcome)
            return None
        self._settler.forget(entry.rel)
        return outcome

    def _report(self, skipped: Skipped) -> None:
        key = (skipped.rel, skipped.reason)
        if key not in self._reported:
            self._reported.add(key)
            self._on_skip(skipped)
