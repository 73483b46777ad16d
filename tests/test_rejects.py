"""The reject writer on real files: line order, exactly-once, no file when nothing is rejected."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bulkd.model import Reject, RejectRule
from bulkd.rejects import RejectWriter


def _reject(line: int, rule: str = RejectRule.TYPE, field: str | None = "f") -> Reject:
    return Reject("in.csv", line, field, rule, f"row {line}")


def _written(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_rejects_arriving_out_of_order_are_written_in_line_order(tmp_path: Path) -> None:
    writer = RejectWriter(tmp_path / "r.rejects.ndjson")
    writer.add([_reject(5), _reject(9)])
    writer.add([_reject(2, RejectRule.EMPTY_ROW, None), _reject(7)])
    writer.add([_reject(3), _reject(4), _reject(8)])
    path = writer.finish()
    assert path == tmp_path / "r.rejects.ndjson"
    rows = _written(path)
    assert [r["line"] for r in rows] == [2, 3, 4, 5, 7, 8, 9]
    assert rows[0] == {"input": "in.csv", "line": 2, "field": None, "rule": "empty_row", "message": "row 2"}
    assert writer.count == 7
    assert writer.by_rule == {"type": 6, "empty_row": 1}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_sort_is_stable_and_keeps_every_reject_once_over_many_slices(tmp_path: Path) -> None:
    rng = random.Random(3)
    lines = [rng.randint(2, 5000) for _ in range(40_000)]  # repeats: one line rejected twice
    writer = RejectWriter(tmp_path / "r.rejects.ndjson")
    for start in range(0, len(lines), 1000):
        writer.add(
            [
                Reject("in.csv", n, None, "type", f"#{i}")
                for i, n in enumerate(lines)
                if start <= i < start + 1000
            ]
        )
    path = writer.finish()
    assert path is not None
    rows = _written(path)
    expected = sorted(((n, f"#{i}") for i, n in enumerate(lines)), key=lambda pair: pair[0])
    assert [(r["line"], r["message"]) for r in rows] == expected


def test_in_order_rejects_are_written_as_they_came(tmp_path: Path) -> None:
    writer = RejectWriter(tmp_path / "r.rejects.ndjson")
    writer.add([_reject(2), _reject(2, RejectRule.NUL_BYTE), _reject(10)])
    path = writer.finish()
    assert path is not None
    assert [(r["line"], r["rule"]) for r in _written(path)] == [(2, "type"), (2, "nul_byte"), (10, "type")]


def test_no_rejects_no_file(tmp_path: Path) -> None:
    writer = RejectWriter(tmp_path / "r.rejects.ndjson")
    writer.add([])
    assert writer.finish() is None
    assert list(tmp_path.iterdir()) == []


def test_without_a_path_rejects_are_only_counted(tmp_path: Path) -> None:
    writer = RejectWriter(None)
    writer.add([_reject(3), _reject(2)])
    assert writer.finish() is None
    assert (writer.count, writer.by_rule) == (2, {"type": 2})


@pytest.mark.parametrize("out_of_order", [False, True])
def test_abort_leaves_nothing(tmp_path: Path, out_of_order: bool) -> None:
    writer = RejectWriter(tmp_path / "r.rejects.ndjson")
    writer.add([_reject(4), _reject(3 if out_of_order else 5)])
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    assert writer.finish() is None


_SORT_RSS = """
import sys
from pathlib import Path
from bulkd.model import Reject
from bulkd.rejects import RejectWriter

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

writer = RejectWriter(Path(sys.argv[1]))
message = "x" * 150
for start in range(0, 300_000, 1_000):  # each batch of lines arrives backwards
    writer.add([Reject("in.csv", line, "f", "rule", message) for line in range(start + 999, start - 1, -1)])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # start the peak (VmHWM) afresh from here
before = status("VmRSS")
path = writer.finish()
print(status("VmHWM") - before, path.stat().st_size)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak-RSS reset")
def test_sorting_a_big_reject_file_does_not_make_it_resident(tmp_path: Path) -> None:
    """The sort reads through a mapping; its pages must not all stay in the resident set."""
    out = subprocess.run(
        [sys.executable, "-c", _SORT_RSS, str(tmp_path / "r.ndjson")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    growth, size = map(int, out.stdout.split())
    assert size > 50 << 20
    assert growth < size // 2, f"peak RSS grew {growth >> 20} MB while sorting a {size >> 20} MB file"
