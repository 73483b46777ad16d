"""Coercion of cells to JSON types, and the calendar-aware formats the validator uses."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkd import coerce
from bulkd.coerce import DateTimeStyle
from bulkd.formats import is_date, is_datetime


def _texts(values: list[str | None]) -> pa.Array:
    return pa.array(values, pa.string())


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("1990-02-28", True),
        ("2000-02-29", True),
        ("1990-02-31", False),
        ("1900-02-29", False),
        ("1990-13-01", False),
        ("1990-00-10", False),
        ("0000-01-01", False),
        ("1990-2-3", False),
        ("1990-02-28T00:00:00Z", False),
    ],
)
def test_date_format_and_coercion_agree(value: str, ok: bool) -> None:
    assert is_date(value) is ok
    got = coerce.to_date(_texts([value]))
    assert got.values.to_pylist() == [value if ok else None]
    assert got.bad.to_pylist() == [not ok]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2023-03-06T12:26:47Z", True),
        ("2023-03-06T12:26:47.123+10:00", True),
        ("2023-03-06t12:26:47z", True),
        ("2023-02-29T12:00:00Z", False),
        ("2023-03-06T24:00:00Z", False),
        ("2023-03-06T12:60:00Z", False),
        ("2023-03-06T12:00:60Z", False),
        ("2023-03-06T12:00:00+24:00", False),
        ("2023-03-06T12:00:00+10:60", False),
        ("2023-03-06T12:00:00", False),
        ("2023-03-06 12:00:00Z", False),
    ],
)
def test_datetime_format(value: str, ok: bool) -> None:
    assert is_datetime(value) is ok


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2023-03-06T12:26:47Z", "2023-03-06T12:26:47Z"),
        ("2023-03-06 12:26", "2023-03-06T12:26:00Z"),
        ("2023-03-06", "2023-03-06T00:00:00Z"),
        ("2023-03-06T12:26:47.5+1000", "2023-03-06T12:26:47.5+10:00"),
        ("2023-03-06T12:26:47z", "2023-03-06T12:26:47Z"),
        (" 2023-03-06T12:26:47-05:30 ", "2023-03-06T12:26:47-05:30"),
        ("2023-02-30T10:00:00Z", None),
        ("2023-03-06T25:00:00Z", None),
        ("2023-03-06T10:00:00+25:00", None),
        ("06/03/2023", None),
    ],
)
def test_datetime_is_normalised_to_rfc3339(value: str, expected: str | None) -> None:
    got = coerce.to_datetime(_texts([value]), DateTimeStyle())
    assert got.values.to_pylist() == [expected]
    assert got.bad.to_pylist() == [expected is None]
    if expected is not None:
        assert is_datetime(expected)


def test_naive_datetime_gets_the_configured_offset() -> None:
    got = coerce.to_datetime(_texts(["2023-03-06 08:00", "2023-03-06T08:00:00Z"]), DateTimeStyle("+10:00"))
    assert got.values.to_pylist() == ["2023-03-06T08:00:00+10:00", "2023-03-06T08:00:00Z"]


def test_arrow_timestamps_are_formatted_in_utc() -> None:
    zoned = pa.array([0, 1_500_000], pa.timestamp("ms", "Australia/Melbourne"))
    assert coerce.to_datetime(zoned, DateTimeStyle()).values.to_pylist() == [
        "1970-01-01T00:00:00Z",
        "1970-01-01T00:25:00Z",
    ]
    naive = pa.array([1_500], pa.timestamp("ms"))
    assert coerce.to_datetime(naive, DateTimeStyle("+10:00")).values.to_pylist() == [
        "1970-01-01T00:00:01.5+10:00"
    ]


@pytest.mark.parametrize("spelling", ["true", "TRUE", "True", "1", "yes", "YES", " Yes "])
def test_boolean_true_spellings(spelling: str) -> None:
    assert coerce.to_boolean(_texts([spelling])).values.to_pylist() == [True]


@pytest.mark.parametrize("spelling", ["false", "FALSE", "False", "0", "no", "NO", "nO"])
def test_boolean_false_spellings(spelling: str) -> None:
    assert coerce.to_boolean(_texts([spelling])).values.to_pylist() == [False]


def test_boolean_refuses_other_words_but_not_nulls() -> None:
    got = coerce.to_boolean(_texts(["y", "2", None, "truthy"]))
    assert got.values.to_pylist() == [None, None, None, None]
    assert got.bad.to_pylist() == [True, True, False, True]
    ints = coerce.to_boolean(pa.array([0, 1, 2], pa.int64()))
    assert ints.values.to_pylist() == [False, True, None]
    assert ints.bad.to_pylist() == [False, False, True]


def test_plain_spellings_give_what_the_general_path_gives() -> None:
    plain = ["true", None, "false", "false", "true"]
    fast = coerce.to_boolean(_texts(plain))  # every value plain: the two-kernel path
    general = coerce.to_boolean(_texts([*plain, " Yes"]))  # one other spelling: the general path
    assert fast.values.to_pylist() == general.values.to_pylist()[:5] == [True, None, False, False, True]
    assert fast.bad.to_pylist() == general.bad.to_pylist()[:5] == [False] * 5
    assert coerce.to_boolean(_texts([None, None])).values.to_pylist() == [None, None]


def test_integer_spellings() -> None:
    got = coerce.to_integer(
        _texts(["12", "+12", "-3", "12.0", "12.5", "1e3", "abc", "99999999999999999999", None])
    )
    assert got.values.to_pylist() == [12, 12, -3, 12, None, None, None, None, None]
    assert got.bad.to_pylist() == [False, False, False, False, True, True, True, True, False]


def test_integer_from_floats() -> None:
    got = coerce.to_integer(pa.array([1.0, 1.5, float("nan"), None]))
    assert got.values.to_pylist() == [1, None, None, None]
    assert got.bad.to_pylist() == [False, True, True, False]


def test_number_spellings() -> None:
    got = coerce.to_number(_texts(["1.5", "-2", ".5", "1e3", "nan", "inf", "1,5", "", None]))
    assert got.values.to_pylist() == [1.5, -2.0, 0.5, 1000.0, None, None, None, None, None]
    assert got.bad.to_pylist() == [False, False, False, False, True, True, True, True, False]


def test_email_is_trimmed_and_lower_cased() -> None:
    got = coerce.to_email(_texts(["  Jane@Example.COM ", "   ", None]))
    assert got.values.to_pylist() == ["jane@example.com", None, None]
    assert not any(got.bad.to_pylist())


def test_empty_to_null() -> None:
    assert coerce.empty_to_null(_texts(["", "a", None])).to_pylist() == [None, "a", None]


@given(st.lists(st.one_of(st.none(), st.sampled_from(["", "a", "bc", "é"])), max_size=40), st.data())
def test_empty_to_null_on_slices_agrees_with_kernels(cells: list[str | None], data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(cells)))
    stop = data.draw(st.integers(start, len(cells)))
    arr = _texts(cells).slice(start, stop - start)
    got = coerce.empty_to_null(arr)
    got.validate(full=True)
    expected = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
    assert got.to_pylist() == expected.to_pylist()
    assert got.null_count == expected.null_count


def test_string_lists() -> None:
    got = coerce.to_string_list(_texts(['["a","b"]', "x|y||z", "solo", '["a", 1]', "[oops", None]), "|")
    assert got.values.to_pylist() == [["a", "b"], ["x", "y", "z"], ["solo"], None, None, None]
    assert got.bad.to_pylist() == [False, False, False, True, True, False]


def test_calendar_ok_leap_years_and_non_digits() -> None:
    years = pa.array(["2024", "2023", "1900", "2000", "0000", "", None, "２０２４", "2024", "2024"])
    months = pa.array(["02", "02", "02", "02", "01", "01", "01", "01", "13", "00"])
    days = pa.array(["29", "29", "29", "29", "01", "01", "01", "01", "01", "01"])
    assert coerce.calendar_ok(years, months, days).to_pylist() == [
        *(True, False, False, True),  # leap years: every 4th, not centuries, but every 400th
        *(False, False, False, False),  # year 0, empty, absent, non-ASCII digits
        *(False, False),  # month out of range
    ]


_DATE_LIKE = st.one_of(
    st.none(),
    st.builds("{:04d}-{:02d}-{:02d}".format, st.integers(0, 10000), st.integers(0, 13), st.integers(0, 32)),
    st.text("0123456789- x/", min_size=9, max_size=11),
)


@given(st.lists(_DATE_LIKE, max_size=30), st.data())
def test_date_fast_path_agrees_with_the_regex_path(cells: list[str | None], data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(cells)))
    arr = _texts(cells).slice(start)
    got = coerce.to_date(arr)
    parts = pc.extract_regex(pc.utf8_trim_whitespace(arr), coerce._DATE_IN)
    ok = pc.and_(pc.is_valid(parts), coerce.calendar_ok(parts.field(0), parts.field(1), parts.field(2)))
    expected = pc.if_else(ok, pc.utf8_trim_whitespace(arr), pa.scalar(None, pa.string()))
    assert got.values.to_pylist() == expected.to_pylist()
    assert got.bad.to_pylist() == pc.and_(arr.is_valid(), expected.is_null()).to_pylist()
    fast = coerce.iso_dates_ok(arr)
    if fast is not None:
        assert fast.tolist() == pc.fill_null(ok, False).to_pylist()


def test_date_fast_path_reads_around_null_slots_that_hold_bytes() -> None:
    days = pa.array(["1990-01-01", "1990-02-30", "2000-02-29", "1900-02-29"])
    parent = pa.StructArray.from_arrays([days], names=["d"], mask=pa.array([False, True, False, False]))
    flat = parent.flatten()[0]  # the struct's null pushed down: slot 1 is null but keeps its bytes
    fast = coerce.iso_dates_ok(flat)
    assert fast is not None
    assert fast.tolist() == [True, False, True, False]
    assert coerce.to_date(flat).values.to_pylist() == ["1990-01-01", None, "2000-02-29", None]


@given(st.lists(_DATE_LIKE, max_size=30), st.data())
def test_date_fast_path_reads_past_any_null_slots_that_hold_bytes(
    cells: list[str | None], data: st.DataObject
) -> None:
    hidden = data.draw(st.lists(st.booleans(), min_size=len(cells), max_size=len(cells)))
    parent = pa.StructArray.from_arrays([_texts(cells)], names=["d"], mask=pa.array(hidden, pa.bool_()))
    start = data.draw(st.integers(0, len(cells)))
    flat = parent.flatten()[0].slice(start)  # the struct's nulls pushed down, bytes kept
    fast = coerce.iso_dates_ok(flat)
    shown = [None if h else c for c, h in zip(cells, hidden, strict=True)][start:]
    if all(c is None or re.fullmatch("[0-9]{4}-[0-9]{2}-[0-9]{2}", c) for c in shown):
        assert fast is not None  # every present value has the fixed shape: the fast path answers
    if fast is not None:
        assert fast.tolist() == [c is not None and is_date(c) for c in shown]
    refused = coerce.to_date(flat).values  # impossible dates become nulls that keep their bytes
    again = coerce.iso_dates_ok(refused)
    assert again is not None
    assert again.tolist() == refused.is_valid().to_pylist()


_DATETIME_LIKE = st.one_of(
    st.none(),
    st.builds(
        "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}Z".format,
        st.integers(0, 9999),
        st.integers(0, 13),
        st.integers(0, 32),
        st.integers(0, 25),
        st.integers(0, 61),
        st.integers(0, 61),
    ),
    st.sampled_from(["2024-01-01T00:00:00z", "2024-01-01 00:00:00Z", "2024-01-01T00:00:00+10:00", ""]),
)


@given(st.lists(_DATETIME_LIKE, max_size=30), st.data())
def test_datetime_fast_path_agrees_with_the_regex_path(cells: list[str | None], data: st.DataObject) -> None:
    from bulkd.validate import _format_ok

    arr = _texts(cells).slice(data.draw(st.integers(0, len(cells))))
    slow_input = arr.cast(pa.large_string())  # the fast path takes plain strings only
    style = DateTimeStyle()
    got, expected = coerce.to_datetime(arr, style), coerce.to_datetime(slow_input, style)
    assert got.values.to_pylist() == expected.values.to_pylist()
    assert got.bad.to_pylist() == expected.bad.to_pylist()
    for fmt in ("date-time", "date"):
        fast, slow = _format_ok(fmt, arr), _format_ok(fmt, slow_input)
        assert pc.fill_null(fast, False).to_pylist() == pc.fill_null(slow, False).to_pylist()


@given(st.lists(st.one_of(st.none(), st.text(" \tAaZz@.é\x7f-_1", max_size=8)), max_size=20), st.data())
def test_email_fast_path_agrees_with_trim_and_lower(cells: list[str | None], data: st.DataObject) -> None:
    arr = _texts(cells).slice(data.draw(st.integers(0, len(cells))))
    expected = coerce.empty_to_null(pc.utf8_lower(pc.utf8_trim_whitespace(arr)))
    got = coerce.to_email(arr)
    assert got.values.to_pylist() == expected.to_pylist()
    assert not any(got.bad.to_pylist())


def test_without_dictionaries_decodes_inside_structs_and_lists() -> None:
    # pyarrow reads these from Parquet only within one chunk, so they are built here
    states = pa.array(["VIC", None, "NSW"]).dictionary_encode()
    tags = pa.ListArray.from_arrays(pa.array([0, 1, 3, 3], pa.int32()), states)
    address = pa.StructArray.from_arrays([tags.flatten()], names=["state"])
    batch = pa.record_batch([tags, address, pa.array([1, 2, 3])], names=["tags", "address", "n"])
    plain = pa.schema([f.with_type(coerce.without_dictionaries(f.type)) for f in batch.schema])
    assert plain.types == [pa.list_(pa.string()), pa.struct([("state", pa.string())]), pa.int64()]
    decoded = batch.cast(plain)
    assert decoded.column(0).to_pylist() == [["VIC"], [None, "NSW"], []]
    assert decoded.column(1).to_pylist() == [{"state": "VIC"}, {"state": None}, {"state": "NSW"}]
    assert coerce.without_dictionaries(pa.large_list(pa.int8())) == pa.large_list(pa.int8())


# Numbers as exports spell them, and what sits near them: signs, exponents, spaces, NaN and
# infinities in Arrow's spellings, separators, other scripts' digits, too many digits.
_NUMERIC = st.lists(
    st.one_of(
        st.none(),
        st.text(alphabet=st.sampled_from("0123456789+-.eE"), max_size=8),
        st.text(alphabet=st.sampled_from("01.e+- naifINAFxp_,٣"), max_size=6),
        st.sampled_from(["nan", "-inf", "Infinity", "1" * 19, "0" * 19 + "7", "-" + "9" * 19, " 7 ", "0x10"]),
    ),
    max_size=12,
)


@settings(max_examples=1500, deadline=None)
@given(_NUMERIC)
def test_numbers_read_by_arrow_alone_are_what_the_general_path_reads(values: list[str | None]) -> None:
    text = pa.array([v if v else None for v in values], pa.string())  # empty cells arrive as nulls
    fast, general = coerce.to_number(text), coerce._floats_from_text(text)
    general_ok = pc.if_else(pc.is_finite(general), general, pa.scalar(None, pa.float64()))
    assert fast.values.to_pylist() == general_ok.to_pylist()
    ints, general_ints = coerce.to_integer(text), coerce._integers_from_text(text)
    assert ints.values.to_pylist() == general_ints.values.to_pylist()
    assert ints.bad.to_pylist() == general_ints.bad.to_pylist()
