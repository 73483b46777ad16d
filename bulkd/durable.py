"""Crash-safe file primitives and named crash points.

``rename()`` is atomic but not durable, and ``write()`` is neither: after power loss a file can
come back empty or a new name can vanish (Pillai et al., OSDI '14). Every durable boundary in
bulkd therefore goes through the few helpers here, which follow the one safe order: write a temp
file in the destination directory, ``fsync`` it, ``rename`` it into place, ``fsync`` the
directory. Any ``OSError`` becomes :class:`~bulkd.errors.StorageError` and the temp file is
removed, because after a failed ``fsync`` the page cache can no longer be trusted (fsyncgate):
callers regenerate the output instead of retrying the sync.

Crash points let tests kill the process with ``SIGKILL`` exactly at such a boundary::

    CHUNK_RENAMED = declare_crashpoint("chunk.renamed")   # at import time
    ...
    crashpoint(CHUNK_RENAMED)                            # at the boundary

With ``BULKD_CRASHPOINT=chunk.renamed`` (first pass) or ``BULKD_CRASHPOINT=chunk.renamed:3``
(third pass) in the environment the process dies there; without it :func:`crashpoint` is one
comparison. The environment is read once, at import, so the hot path never touches it.
:data:`CRASHPOINTS` lists every declared name so a test can parametrise over all of them (import
the modules that declare them first).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import secrets
import shutil
import signal
import sys
import threading
from pathlib import Path

from bulkd.errors import ConfigError, StorageError

__all__ = [
    "CRASHPOINTS",
    "CRASHPOINT_ENV",
    "TEMP_SUFFIX",
    "WRITE_SYNCED",
    "crashpoint",
    "declare_crashpoint",
    "fsync_dir",
    "move_durable",
    "probe_writable",
    "remove_stale_probes",
    "remove_temp_files",
    "rename_durable",
    "sha256_fd",
    "temp_path_for",
    "write_atomic",
]

CRASHPOINT_ENV = "BULKD_CRASHPOINT"
"""Environment variable naming the crash point to die at: ``name`` or ``name:N``."""

TEMP_SUFFIX = ".tmp"
"""Suffix of every temp file bulkd writes; :func:`remove_temp_files` sweeps them at startup."""

CRASHPOINTS: frozenset[str]
"""Every crash point name declared so far (computed on access, see :func:`__getattr__`)."""

_declared: set[str] = set()
_declared_lock = threading.Lock()


def _parse_spec(spec: str | None) -> tuple[str, int] | None:
    """Split ``name[:N]``; a malformed value is refused loudly rather than silently ignored."""
    if not spec:
        return None
    name, sep, nth_text = spec.partition(":")
    nth = 1
    if sep:
        try:
            nth = int(nth_text)
        except ValueError:
            nth = 0
    if not name or nth < 1:
        raise ConfigError(CRASHPOINT_ENV, f"expected 'name' or 'name:N' with N >= 1, got {spec!r}")
    return name, nth


_TARGET: tuple[str, int] | None = _parse_spec(os.environ.get(CRASHPOINT_ENV))
_target_name: str | None = _TARGET[0] if _TARGET else None
_passes = 0
_passes_lock = threading.Lock()


def __getattr__(name: str) -> frozenset[str]:
    """Serve :data:`CRASHPOINTS` as a fresh snapshot, since modules keep declaring names."""
    if name == "CRASHPOINTS":
        with _declared_lock:
            return frozenset(_declared)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def declare_crashpoint(name: str) -> str:
    """Register a crash point name (call at import time) and return it for use as a constant."""
    if not name or ":" in name or name != name.strip():
        raise ValueError(f"invalid crash point name {name!r}")
    with _declared_lock:
        _declared.add(name)
    return name


def crashpoint(name: str) -> None:
    """SIGKILL this process if ``name`` is the configured crash point and its pass count is reached.

    Inert unless ``BULKD_CRASHPOINT`` was set when this module was imported.
    """
    if name != _target_name:
        return
    _hit(name)


def _hit(name: str) -> None:
    global _passes  # noqa: PLW0603 - one counter for the whole process is the point
    assert _TARGET is not None
    with _passes_lock:
        _passes += 1
        reached = _passes >= _TARGET[1]
    if not reached:
        return
    # A direct write: stdio buffers would be lost with the process, and this line is what a
    # failing crash test shows to explain itself.
    os.write(sys.stderr.fileno(), f"bulkd: crash point {name!r} reached, SIGKILL\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


WRITE_SYNCED = declare_crashpoint("durable.write.synced")
"""In :func:`write_atomic`: the temp file is synced but not yet renamed into place."""


def temp_path_for(path: Path) -> Path:
    """A unique hidden temp name beside ``path``: same directory, so the final rename is atomic."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (new names, removed names) durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot sync directory {directory}: {exc.strerror or exc}") from exc


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that after a crash it holds either the old or new content."""
    tmp = temp_path_for(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        crashpoint(WRITE_SYNCED)
        os.rename(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    fsync_dir(path.parent)


def rename_durable(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` (same filesystem; replaces ``dst``) and sync both directories."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        raise StorageError(f"cannot rename {src} to {dst}: {exc.strerror or exc}") from exc
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


PROBE_OPEN = declare_crashpoint("durable.probe.open")
"""A writability probe's file exists (and has no name, where the filesystem allows)."""
_PROBE_PREFIX = ".bulkd-probe-"
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})
"""What ``O_TMPFILE`` fails with where the kernel or filesystem lacks it."""


def probe_writable(directory: Path) -> None:
    """Create and remove a file in ``directory``; raises the ``OSError`` if it cannot (a read-only
    volume, a full disk, wrong ownership), so a refusal names the real cause.

    The file is made with ``O_TMPFILE`` where the filesystem has it: it never has a name, so a
    process killed mid-probe leaves nothing behind (a named probe did, found by the soak). Other
    filesystems get a named probe, which :func:`remove_stale_probes` sweeps at start-up.
    """
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile:
        try:
            fd = os.open(directory, tmpfile | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
        else:
            try:
                crashpoint(PROBE_OPEN)
            finally:
                os.close(fd)
            return
    probe = directory / f"{_PROBE_PREFIX}{os.getpid()}{TEMP_SUFFIX}"
    probe.write_bytes(b"")
    try:
        crashpoint(PROBE_OPEN)
    finally:
        probe.unlink()


def remove_stale_probes(directory: Path) -> list[Path]:
    """Named probes left by a process killed mid-probe (filesystems without ``O_TMPFILE``)."""
    return remove_temp_files(directory, f"{_PROBE_PREFIX}*{TEMP_SUFFIX}")


def sha256_fd(fd: int) -> str:
    """SHA-256 (hex) of everything readable from ``fd``, read in 1 MiB pieces into one buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    while count := os.readv(fd, [buffer]):
        digest.update(view[:count])
    return digest.hexdigest()


def move_durable(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` durably, across filesystems too: a rename where it can be one, else a
    synced copy renamed into place and then the source removed (a crash leaves both or a temp file)."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise StorageError(f"cannot move {src} to {dst}: {exc.strerror or exc}") from exc
    else:
        fsync_dir(dst.parent)
        if src.parent != dst.parent:
            fsync_dir(src.parent)
        return
    tmp = temp_path_for(dst)
    try:
        with src.open("rb") as reader, tmp.open("xb") as writer:
            shutil.copyfileobj(reader, writer, 1 << 20)
            writer.flush()
            os.fsync(writer.fileno())
        os.rename(tmp, dst)
    except OSError as exc:
        _discard(tmp)
        raise StorageError(f"cannot copy {src} to {dst}: {exc.strerror or exc}") from exc
    fsync_dir(dst.parent)
    try:
        os.unlink(src)
    except OSError as exc:
        raise StorageError(f"cannot remove {src} after copying it: {exc.strerror or exc}") from exc
    fsync_dir(src.parent)


def remove_temp_files(directory: Path, pattern: str = f".*{TEMP_SUFFIX}") -> list[Path]:
    """Delete leftovers of interrupted writes (startup sweep) and return what was removed.

    Only regular files matching ``pattern`` (an ``fnmatch`` pattern on the name) directly in
    ``directory`` are removed; symlinks and subdirectories are left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if fnmatch.fnmatchcase(entry.name, pattern) and entry.is_file(follow_symlinks=False):
            _discard(Path(entry.path))
            removed.append(Path(entry.path))
    if removed:
        fsync_dir(directory)
    return removed


def _discard(path: Path) -> None:
    """Best-effort removal: whatever survives is swept by :func:`remove_temp_files` at startup."""
    with contextlib.suppress(OSError):
        os.unlink(path)
