"""The process memory policy, each case in a fresh interpreter (it changes process-wide state)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

_HIDE = """
    from bulkd.memory import configure_process
    configure_process()
"""


def _python(code: str, tmp_path: Path, *, stand_in: bool = False, **env: str) -> str:
    """Run ``code`` in a fresh interpreter; ``stand_in`` puts a fake ``pandas`` on its path
    (pyarrow itself would reject the fake, so only tests that never reach pyarrow use it)."""
    fake = tmp_path / "site"
    (fake / "pandas").mkdir(parents=True, exist_ok=True)
    (fake / "pandas" / "__init__.py").write_text("__version__ = 'stand-in'\n")
    environ = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    root = Path(__file__).resolve().parents[1]
    environ["PYTHONPATH"] = os.pathsep.join([str(fake), str(root)] if stand_in else [str(root)])
    environ.update(env)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_bulkd_process_does_not_load_pandas(tmp_path: Path) -> None:
    code = (
        _HIDE
        + """
    try:
        import pandas
    except ModuleNotFoundError as e:
        print("hidden", e.name)
    """
    )
    assert _python(code, tmp_path, stand_in=True) == "hidden pandas"


def test_numpy_starts_no_blas_threads_in_a_bulkd_process(tmp_path: Path) -> None:
    count = """
    import os
    import numpy
    print(len(os.listdir("/proc/self/task")))
    """
    if not Path("/proc/self/task").is_dir():
        pytest.skip("counting threads needs /proc")
    assert int(_python(_HIDE + count, tmp_path)) == 1  # numpy alone starts one per core


def test_without_the_entry_nothing_is_hidden(tmp_path: Path) -> None:
    """Library use: a program importing bulkd keeps its pandas."""
    code = """
    import sys, bulkd.pipeline
    from bulkd.memory import choose_memory_pool
    choose_memory_pool()
    print([type(f).__name__ for f in sys.meta_path if type(f).__module__.startswith("bulkd")])
    """
    assert _python(code, tmp_path) == "[]"


def test_pandas_already_loaded_is_left_alone(tmp_path: Path) -> None:
    code = (
        "\n    import pandas"
        + _HIDE
        + """
    import importlib, sys
    del sys.modules["pandas"]
    print(importlib.import_module("pandas").__version__)
    """
    )
    assert _python(code, tmp_path, stand_in=True) == "stand-in"


def test_arrow_uses_the_system_allocator(tmp_path: Path) -> None:
    code = (
        _HIDE
        + """
    import os, pyarrow as pa
    print(pa.default_memory_pool().backend_name, os.environ["ARROW_DEFAULT_MEMORY_POOL"])
    """
    )
    assert _python(code, tmp_path) == "system system"


def test_the_users_choice_of_pool_wins(tmp_path: Path) -> None:
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this pyarrow build has no jemalloc pool to choose")
    code = (
        _HIDE
        + """
    import pyarrow as pa
    print(pa.default_memory_pool().backend_name)
    """
    )
    assert _python(code, tmp_path, ARROW_DEFAULT_MEMORY_POOL="jemalloc") == "jemalloc"


def test_a_library_conversion_chooses_the_system_pool(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("email,first_name\na@example.com,Ann\n")
    code = f"""
    import pyarrow as pa
    from pathlib import Path
    from bulkd.pipeline import ConvertSettings, convert_file
    from bulkd.schemas import load_record_type
    settings = ConvertSettings(load_record_type("customer_record"), dataset_id="d", timestamp="1")
    result = convert_file(Path({str(source)!r}), Path({str(tmp_path)!r}), settings)
    print(result.rows, pa.default_memory_pool().backend_name)
    """
    assert _python(code, tmp_path) == "1 system"


_MAPPED_BLOCKS = """
    import ctypes
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        print("no mallinfo2")
        raise SystemExit
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free(libc.malloc(8 << 20))  # glibc's own threshold now rises to 8 MiB
    before = libc.mallinfo2().hblks
    block = libc.malloc(2 << 20)
    print(libc.mallinfo2().hblks - before)  # 1: the 2 MiB block got a mapping of its own
    libc.free(block)
"""


@pytest.mark.parametrize(
    ("entry", "env", "mapped"),
    [
        pytest.param(_HIDE, {}, "1", id="bulkd process"),
        pytest.param("", {}, "0", id="plain interpreter"),
        pytest.param(
            _HIDE, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=16777216"}, "0", id="user's threshold"
        ),
    ],
)
def test_large_blocks_are_mapped_whatever_was_freed_before(
    tmp_path: Path, entry: str, env: dict[str, str], mapped: str
) -> None:
    """A bulkd process keeps glibc's mapping threshold at 1 MiB, so large blocks never come from
    the heap, whose free holes stay resident; a threshold the user set is left alone."""
    got = _python(entry + _MAPPED_BLOCKS, tmp_path, **env)
    if got == "no mallinfo2":
        pytest.skip("needs glibc's mallinfo2 (glibc 2.33 or later)")
    assert got == mapped


def test_the_console_entry_runs_the_cli(tmp_path: Path) -> None:
    code = """
    import sys
    sys.argv = ["bulkd", "--version"]
    from bulkd.__main__ import run
    raise SystemExit(run())
    """
    assert _python(code, tmp_path).startswith("bulkd ")


def _needs_jemalloc() -> None:
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this pyarrow build has no jemalloc pool")


_CSV_BY_TYPE = {
    "customer_record": "link.email,first_name\n" + "a@example.com,Ann\n" * 5000,
    "purchase": "purchase_id,link.email,action_at,type,products.product_reference.id,"
    "products.product_reference.id_type,products.price_paid,products.quantity\n"
    + "".join(f"P{i // 2},a@x.co,2024-05-01,physical,sku{i},sku,1.50,1\n" for i in range(5000)),
}


@pytest.mark.parametrize(("record_type", "on_jemalloc"), [("customer_record", True), ("purchase", False)])
def test_the_csv_parser_allocates_from_jemalloc_where_rows_are_records(
    tmp_path: Path, record_type: str, on_jemalloc: bool
) -> None:
    """Customer rows parse on jemalloc, keeping the parser's per-column scratch out of glibc's
    heap; order lines, held until their orders close, stay on the system pool like the rest."""
    _needs_jemalloc()
    source = tmp_path / "in.csv"
    source.write_text(_CSV_BY_TYPE[record_type])
    code = (
        _HIDE
        + f"""
    import pyarrow as pa
    from pathlib import Path
    from bulkd.pipeline import ConvertSettings, convert_file
    from bulkd.schemas import load_record_type
    settings = ConvertSettings(load_record_type({record_type!r}), dataset_id="d", timestamp="1")
    result = convert_file(Path({str(source)!r}), Path({str(tmp_path)!r}), settings)
    print(result.rows, result.rejected, pa.default_memory_pool().backend_name,
          pa.jemalloc_memory_pool().max_memory() > 0)
    """
    )
    assert _python(code, tmp_path) == f"5000 0 system {on_jemalloc}"


@pytest.mark.parametrize("pool", ["mimalloc", "jemalloc"])
def test_a_pool_the_user_chose_serves_the_reader_too(tmp_path: Path, pool: str) -> None:
    _needs_jemalloc()
    code = (
        _HIDE
        + """
    from bulkd.memory import reader_memory_pool
    print(reader_memory_pool())
    """
    )
    assert _python(code, tmp_path, ARROW_DEFAULT_MEMORY_POOL=pool) == "None"
