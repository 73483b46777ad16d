"""Process memory policy: which allocator Arrow uses, and what a bulkd process refuses to load.

Peak RSS is a target of its own (a converter in a container with a memory limit), and most of it
is not Arrow's live data: Arrow's pool peaks at 30-70 MB for 1 M rows while the process peaks at
200-300 MB. The rest is what allocators keep after a free, and the interpreter's imports.
Measured on 1 M rows (fresh processes, alternated; benchmarks/README.md):

* Arrow's system pool with one glibc arena: customer CSV 228 MB, Parquet 193, purchase lines
  211 peak RSS; jemalloc 204 / 221 / 243; mimalloc (pyarrow's default) 294 / 333 / 308. Units
  are allocated on the reading thread and freed on a worker; with an arena per thread glibc
  keeps freed memory in each (purchases 248 MB without the limit). CPU time was the same or
  lower with one arena.
* pyarrow's CSV reader allocates ~0.9 MiB per column for each 1 MiB block it parses, just under
  the mapping threshold, so those come from glibc's heap and leave holes in it that stay
  resident: 10 M customer rows peaked up to 12 % above 1 M. When each row is its own record
  the reader gets jemalloc instead (:func:`reader_memory_pool`): customer CSV 136-147 MB at
  1 M rows and 146-150 MB at 10 M, against 172-188 and 184-194 MB, for the same wall time.
  Purchase lines on jemalloc were ~5 % slower (~0.2 s more system time) and no leaner, so
  order lines stay on the system pool.
* pyarrow imports pandas whenever pandas is installed (its C++ side asks again on every
  ``pa.array`` of a list): 35-45 MB and 0.2 s of start-up in a process that never builds a
  DataFrame.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["choose_memory_pool", "configure_process", "reader_memory_pool"]

_M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter for the number of malloc arenas (malloc.h)."""
_M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter: blocks of at least this size get their own mapping (malloc.h)."""
_MMAP_THRESHOLD = 1 << 20
_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"
_HIDDEN = "pandas"


@functools.cache
def choose_memory_pool() -> None:
    """For library use (a conversion in a process that did not start through bulkd's entry):
    Python-level Arrow calls use the system allocator under bulkd's glibc policy (one arena, a
    fixed mapping threshold: :func:`_malloc_policy`), unless the user set
    ``ARROW_DEFAULT_MEMORY_POOL``. Without glibc (musl) only the pool changes. Cached: the first
    conversion in a process decides.
    """
    if os.environ.get(_POOL_ENV):
        return
    _malloc_policy()
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


def reader_memory_pool() -> pa.MemoryPool | None:
    """The pool for pyarrow's CSV reader: jemalloc while Arrow's default is the system pool
    (bulkd's policy, see the module's notes), None (the default) when the user chose another
    pool or this pyarrow build has no jemalloc.

    jemalloc keeps its pages apart from glibc's heap, so the parser's short-lived per-column
    buffers cannot leave holes among the long-lived blocks there. Arrow configures it to serve
    every large block from the arena that purges eagerly, so its footprint stays near that of
    the blocks in flight. (Keeping large blocks in the usual arenas, ``oversize_threshold``
    8 MiB, changed neither speed nor memory beyond the noise; nor did decay times.)
    """
    import pyarrow as pa

    if pa.default_memory_pool().backend_name != "system":
        return None
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:
        return None


@functools.cache
def _malloc_policy() -> None:
    """Threads share glibc's main arena, and blocks of 1 MiB or more are mapped on their own.

    One arena: memory freed by a worker is reused by the reader. Only threads that allocate for
    the first time after this call obey it, and importing numpy or pyarrow starts threads, so a
    process sets it before those imports (purchase lines: 231 MB peak RSS when set after them,
    211-218 MB before).

    A fixed mapping threshold: glibc raises its threshold to the size of each mapped block it
    frees, after which a unit's large blocks come from the heap, and the heap's free holes count
    as resident (RSS grew by ~20 MB over a 10 M-row run). Fixed at 1 MiB, 10 M customer rows
    peaked at 222-232 MB against 231-250 MB, and 1 M rows 5-10 MB lower, for the same CPU
    (purchase lines +0.1 s of system time). At 256 or 512 KiB the peak fell to 160 MB, but
    mapping cost 4-6 s of system time per 10 M rows. A threshold the user set
    (``GLIBC_TUNABLES``, ``MALLOC_MMAP_THRESHOLD_``) is kept.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_ARENA_MAX, 1)
        tunables = os.environ.get("GLIBC_TUNABLES", "")
        if "mmap_threshold" not in tunables and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


class _Refuse(importlib.abc.MetaPathFinder):
    """Makes one top-level package unimportable, as if it were not installed."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == self.name or fullname.startswith(self.name + "."):
            raise ModuleNotFoundError(f"bulkd does not load {self.name}", name=fullname)
        return None


def configure_process() -> None:
    """For a bulkd process (the console script, ``python -m bulkd``), before pyarrow is imported.

    Arrow's C++ side (the CSV and Parquet readers, compute kernels) reads
    ``ARROW_DEFAULT_MEMORY_POOL`` once, when pyarrow loads; ``pyarrow.set_memory_pool`` later
    changes only the pool of Python-level calls. So the process sets the variable (the user's
    own value wins, and bulkd's child processes inherit it), sets glibc's malloc policy (one
    arena, a fixed mapping threshold) before numpy and pyarrow start their threads, keeps
    OpenBLAS to one thread, and hides pandas from pyarrow unless something already imported it.
    Not called by the library: a program that imports bulkd keeps its own allocator and its
    pandas.
    """
    if os.environ.setdefault(_POOL_ENV, "system") == "system":
        _malloc_policy()
    # numpy's OpenBLAS starts a thread per core at import and they spin for a while after numpy
    # calls; bulkd does no linear algebra (2.4 % of CPU samples in a 1 M-row conversion).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if _HIDDEN not in sys.modules and not any(isinstance(f, _Refuse) for f in sys.meta_path):
        sys.meta_path.insert(0, _Refuse(_HIDDEN))
