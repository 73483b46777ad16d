"""The oracle must notice what it exists to notice (a lost record, a duplicate, a re-sent chunk, a leak),
and the fault matrix must cover what it claims to.

A check that always passes proves nothing, so each is fed a store or a workspace with exactly one
thing wrong (no daemon runs here).
"""

from __future__ import annotations

import dataclasses
import gzip
import random
from pathlib import Path

from bulkd.hubsim import Faults
from bulkd.secret import Secret
from bulkd.selftest import (
    InputSet,
    LedgerView,
    RunRecord,
    Workspace,
    all_crashpoints,
    check_progress,
    fault_matrix,
    find_leaks,
    generate_inputs,
    read_store,
    tally,
)


def _inputs() -> InputSet:
    return generate_inputs(random.Random(3), dataset_id="dsor", files=2, rows=(30, 30), invalid_ratio=0.2)


def _store(tmp_path: Path, objects: dict[str, list[bytes]]) -> Path:
    store = tmp_path / "hubsim"
    (store / "objects").mkdir(parents=True)
    for key, records in objects.items():
        (store / "objects" / key).write_bytes(gzip.compress(b"".join(r + b"\n" for r in records), mtime=0))
    return store


def test_tally_counts_lost_duplicated_resent_and_unexpected_records(tmp_path: Path) -> None:
    inputs = _inputs()
    first, second = (list(f.valid) for f in inputs.files)
    stranger = b'{"action_at":"2024-01-01T00:00:00Z","email_id":"x","link":{"email":"x@example.com"}}'
    store = _store(
        tmp_path,
        {
            "1001-dsor_email_open_T_00001.ndjson.gz": first,
            "1002-dsor_email_open_T_00001.ndjson.gz": first,  # the same chunk again: a re-send
            "1003-dsor_email_open_T_00002.ndjson.gz": [*second[:-1], first[0], stranger],
            "1004-other_email_open_T_00001.ndjson.gz": second,  # another dataset: not counted
        },
    )
    counts = tally(inputs, read_store(store, "dsor"))
    assert counts.records_in == len(first) + len(second)
    assert counts.lost == 1
    assert counts.delivered == counts.records_in - 1
    assert counts.duplicates == 1
    assert counts.resent == 1
    assert counts.unexpected == 1


def test_find_leaks_sees_the_token_a_signature_and_a_cell_value(tmp_path: Path) -> None:
    inputs = _inputs()
    ws = Workspace(tmp_path / "ws", api_url="http://127.0.0.1:1", token=Secret("tok-sekrit-123"))
    ws.prepare()
    log = ws.logs / "run-001.log"
    ws.runs.append(RunRecord(1, 0, 0.1, log))
    log.write_bytes(b'{"message": "all fine, PUT http://h/_store/k?<redacted>"}\n')
    assert find_leaks(ws, inputs) == []
    log.write_bytes(b"using tok-sekrit-123\n")
    assert find_leaks(ws, inputs) == ["the API token leaked into logs/run-001.log"]
    log.write_bytes(b"PUT http://h/_store/k?X-Amz-Date=1&X-Amz-Signature=0123abcd4567\n")
    assert find_leaks(ws, inputs) == ["a URL signature leaked into logs/run-001.log"]
    ws.done.mkdir(parents=True)
    (ws.done / "j.rejects.ndjson").write_text(f'{{"message": "bad {inputs.markers[0]}"}}\n')
    assert any("j.rejects.ndjson" in leak for leak in find_leaks(ws, inputs))


def test_the_fault_matrix_covers_every_crash_point_and_is_reproducible() -> None:
    quick = fault_matrix(quick=True, seed=5)
    full = fault_matrix(quick=False, seed=5)
    for matrix in (quick, full):
        assert {s.crashpoint for s in matrix if s.crashpoint and s.must_crash} >= set(all_crashpoints())
        assert len({s.name for s in matrix}) == len(matrix)
        assert matrix[0].faults == Faults()
    assert [s.seed for s in fault_matrix(quick=False, seed=5)] == [s.seed for s in full]
    assert {s.seed for s in full}.isdisjoint(s.seed for s in fault_matrix(quick=False, seed=6))


def test_a_stored_copy_the_ledger_never_recorded_is_a_problem(tmp_path: Path) -> None:
    """A re-send is explained only when bulkd knows it sent the chunk again (the report lists the id)."""
    inputs = dataclasses.replace(_inputs(), files=())
    store = _store(tmp_path, {"1001-dsor_email_open_T_00001.ndjson.gz": [b"{}"]})
    objects = read_store(store, "dsor")
    ws = Workspace(tmp_path / "ws", api_url="http://127.0.0.1:1", token=Secret("t"))
    ws.prepare()
    chunk = (objects[0].filename, objects[0].md5)
    known = LedgerView({}, {}, {chunk: {"1001"}}, [])
    assert check_progress(ws, inputs, objects, known) == []
    unknown = LedgerView({}, {}, {chunk: {"1002"}}, [])
    (problem,) = check_progress(ws, inputs, objects, unknown)
    assert problem.startswith(
        "object 1001-dsor_email_open_T_00001.ndjson.gz is under an upload id the ledger never"
    )
