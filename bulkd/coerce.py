"""Vectorised coercion of cell values to the JSON types a schema asks for.

Every function takes a whole Arrow array and returns ``(values, bad)``: the coerced array (null
where the input was null or could not be coerced) and a boolean mask of the rows whose value
could not be coerced. Nulls are never bad: an empty cell is simply omitted from the record.
Python runs per value only where Arrow has no kernel for the shape at hand (JSON array cells).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from bulkd.buffers import value_bytes, value_offsets

__all__ = [
    "Coerced",
    "DateTimeStyle",
    "all_false",
    "calendar_ok",
    "empty_to_null",
    "iso_dates_ok",
    "iso_datetimes_ok",
    "to_boolean",
    "to_date",
    "to_datetime",
    "to_email",
    "to_integer",
    "to_number",
    "to_string",
    "to_string_list",
    "without_dictionaries",
]

_TRUE = ["true", "1", "yes"]
_FALSE = ["false", "0", "no"]
_PLAIN = pa.array([_TRUE[0], _FALSE[0]])

# Accepted date-time spellings: a date, optionally a time (seconds and fraction optional),
# optionally an offset. Groups: y m d H M S frac tz.
_DT_IN = (
    r"^(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})"
    r"(?:[Tt ](?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?"
    r"(?P<tz>[Zz]|[+-]\d{2}:?\d{2})?)?$"
)
_DATE_IN = r"^(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})$"


@dataclass(frozen=True, slots=True)
class Coerced:
    """A coerced array and the mask of rows whose value could not be coerced."""

    values: pa.Array
    bad: pa.BooleanArray


@dataclass(frozen=True, slots=True)
class DateTimeStyle:
    """How naive date-times are completed: Lexer requires an explicit offset (RFC 3339)."""

    naive_offset: str = "Z"
    """Offset appended to date-times written without one (``Z`` or ``+HH:MM``)."""


def _bad_where(values: pa.Array, original: pa.Array) -> pa.BooleanArray:
    """Rows that had a value but lost it in coercion."""
    return pc.and_(pc.is_valid(original), pc.is_null(values))


def empty_to_null(arr: pa.Array) -> pa.Array:
    """Treat empty strings as absent cells (they are omitted, never written as ``null``).

    Zero-copy: only a new validity bitmap is made (from the offsets: an empty cell has equal
    ones); the offsets and string bytes are shared with ``arr``.
    """
    if arr.null_count == len(arr) or not pa.types.is_string(arr.type):
        return arr
    n, start = len(arr), arr.offset
    _validity, offsets, data = arr.buffers()
    ends = value_offsets(arr)
    keep = ends[1:] != ends[:-1]
    if arr.null_count:
        keep &= arr.is_valid().to_numpy(zero_copy_only=False)
    elif keep.all():
        return arr
    bits = np.zeros(start + n, dtype=np.bool_)  # the bitmap is read from bit ``start`` on, as the offsets
    bits[start:] = keep
    mask = pa.py_buffer(np.packbits(bits, bitorder="little"))
    nulls = n - int(np.count_nonzero(keep))
    return pa.Array.from_buffers(arr.type, n, [mask, offsets, data], null_count=nulls, offset=start)


@lru_cache(maxsize=64)
def without_dictionaries(kind: pa.DataType) -> pa.DataType:
    """``kind`` with every dictionary type, at any depth, replaced by its value type.

    bulkd works on plain values: the Parquet reader casts dictionary columns (pandas categoricals)
    to this, and the encoders cast their input to it, so an absent value is always a null row
    (a dictionary's own validity misses nulls among its values). Cached: a conversion sees one
    record type per unit.
    """
    if pa.types.is_dictionary(kind):
        return without_dictionaries(kind.value_type)
    if pa.types.is_struct(kind):
        return pa.struct([field.with_type(without_dictionaries(field.type)) for field in kind])
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        item = kind.value_field.with_type(without_dictionaries(kind.value_type))
        return pa.list_(item) if pa.types.is_list(kind) else pa.large_list(item)
    return kind


def _as_text(arr: pa.Array) -> pa.Array:
    if pa.types.is_string(arr.type):
        return arr
    if pa.types.is_large_string(arr.type):
        return arr.cast(pa.string())
    return pc.cast(arr, pa.string())


def to_string(arr: pa.Array) -> Coerced:
    """Strings stay as they are; numbers and booleans from typed sources are written as text."""
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_null(arr.type):
        return Coerced(arr.cast(pa.string()), all_false(len(arr)))
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        return to_datetime(arr, DateTimeStyle()) if pa.types.is_timestamp(arr.type) else to_date(arr)
    try:
        out = pc.cast(arr, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return Coerced(pa.nulls(len(arr), pa.string()), pc.is_valid(arr))
    return Coerced(out, all_false(len(arr)))


@lru_cache(maxsize=8)
def all_false(n: int) -> pa.BooleanArray:
    """A mask with no row set (cached, as units have few sizes and Arrow arrays are immutable)."""
    return pa.array(np.zeros(n, dtype=np.bool_))


def to_email(arr: pa.Array) -> Coerced:
    """Trim and lower-case, as Lexer's models do for emails and email hashes."""
    if not pa.types.is_string(arr.type):
        return to_string(arr)
    if _plain_lower_ascii(arr):  # nothing to trim or lower-case: skip both copies
        return Coerced(empty_to_null(arr), all_false(len(arr)))
    out = pc.utf8_lower(pc.utf8_trim_whitespace(arr))
    return Coerced(empty_to_null(out), all_false(len(arr)))


def _plain_lower_ascii(arr: pa.Array) -> bool:
    """Whether every byte of the string array is printable ASCII (no space) and not ``A``-``Z``."""
    raw = value_bytes(arr)
    if not raw.size:
        return True
    return bool(raw.min() > 0x20 and raw.max() < 0x7F and not ((raw >= 0x41) & (raw <= 0x5A)).any())


def to_boolean(arr: pa.Array) -> Coerced:
    """true/false/1/0/yes/no in any case; typed booleans pass through."""
    if pa.types.is_boolean(arr.type):
        return Coerced(arr, all_false(len(arr)))
    if pa.types.is_integer(arr.type):
        ok = pc.is_in(arr, pa.array([0, 1], arr.type))
        out = pc.if_else(ok, pc.equal(arr, 1), pa.scalar(None, pa.bool_()))
        return Coerced(out, _bad_where(out, arr))
    text = _as_text(arr)
    if pc.is_in(text, _PLAIN).true_count == len(text) - text.null_count:
        # every value spelled ``true`` or ``false``, as exports mostly write them: 2 kernels, not 8
        return Coerced(pc.equal(text, _PLAIN[0]), all_false(len(arr)))
    text = pc.utf8_lower(pc.utf8_trim_whitespace(text))
    is_true = pc.is_in(text, pa.array(_TRUE))
    is_false = pc.is_in(text, pa.array(_FALSE))
    out = pc.if_else(is_true, True, pc.if_else(is_false, False, pa.scalar(None, pa.bool_())))
    return Coerced(out, _bad_where(out, arr))


def to_integer(arr: pa.Array) -> Coerced:
    """Whole numbers (``12``, ``+12``, ``12.0``); anything else, or out of int64 range, is bad."""
    if pa.types.is_integer(arr.type):
        return Coerced(arr.cast(pa.int64()), all_false(len(arr)))
    if pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type):
        floats = arr.cast(pa.float64())
        whole = pc.and_(pc.is_finite(floats), pc.equal(pc.floor(floats), floats))
        out = pc.if_else(whole, floats, pa.scalar(None, pa.float64()))
        out = pc.if_else(pc.less_equal(pc.abs(out), 9.007e15), out, pa.scalar(None, pa.float64()))
        ints = out.cast(pa.int64(), safe=False)
        return Coerced(ints, _bad_where(ints, arr))
    text = _as_text(arr)
    if _plain_integers(text):
        try:
            return Coerced(pc.cast(text, pa.int64()), all_false(len(arr)))
        except pa.ArrowInvalid:
            pass  # out of range, or a lone ``-``: the general path says which
    return _integers_from_text(text)


def _plain_integers(text: pa.Array) -> bool:
    """Whether every value is at most 19 bytes of ASCII digits and ``-``, which Arrow's cast reads
    as the general path would. Beyond them it also reads ``0x1F`` and 20 digits or more."""
    if len(text) and int(np.diff(value_offsets(text)).max()) > 19:
        return False
    raw = value_bytes(text)
    if not raw.size:
        return True
    return bool(raw.min() >= 0x2D and raw.max() <= 0x39 and not ((raw == 0x2E) | (raw == 0x2F)).any())


def _integers_from_text(text: pa.Array) -> Coerced:
    """:func:`to_integer` for any text: ~130 ns a value against ~8 ns for the cast alone."""
    text = pc.utf8_trim_whitespace(text)
    shaped = pc.match_substring_regex(text, r"^[+-]?\d{1,19}(?:\.0*)?$")
    digits = pc.replace_substring_regex(pc.replace_substring_regex(text, r"\.0*$", ""), r"^\+", "")
    candidate = pc.if_else(shaped, digits, pa.scalar(None, pa.string()))
    ints = _cast_or_null(candidate, pa.int64())
    return Coerced(ints, _bad_where(ints, text))


def _cast_or_null(text: pa.Array, target: pa.DataType) -> pa.Array:
    """Cast, turning values that do not fit into nulls (found per value only when the cast fails)."""
    try:
        return pc.cast(text, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values = []
    for item in text.to_pylist():
        try:
            values.append(None if item is None else pc.cast(pa.array([item]), target)[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values.append(None)
    return pa.array(values, type=target)


def to_number(arr: pa.Array) -> Coerced:
    """Finite decimal numbers; NaN and infinities cannot be written as JSON and are bad."""
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type):
        floats = arr.cast(pa.float64())
    else:
        text = _as_text(arr)
        try:
            # Arrow reads every value the shape below accepts, and beyond it only NaN and
            # infinities, which are refused here either way; one regular expression less.
            floats = pc.cast(text, pa.float64())
        except pa.ArrowInvalid:
            floats = _floats_from_text(text)
    out = pc.if_else(pc.is_finite(floats), floats, pa.scalar(None, pa.float64()))
    return Coerced(out, _bad_where(out, arr))


def _floats_from_text(text: pa.Array) -> pa.Array:
    """The numbers of :func:`to_number` from any text: null where a value has another shape."""
    text = pc.utf8_trim_whitespace(text)
    shaped = pc.match_substring_regex(text, r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
    return _cast_or_null(pc.if_else(shaped, text, pa.scalar(None, pa.string())), pa.float64())


_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int32)


def calendar_ok(year: pa.Array, month: pa.Array, day: pa.Array) -> pa.BooleanArray:
    """True where the ``YYYY``/``MM``/``DD`` digit strings name a real calendar day (year 1 to 9999).

    Integer arithmetic in numpy (leap years included): a strptime/strftime round trip cost ten
    times as much.
    """
    y, m, d = (_digits_or_zero(part) for part in (year, month, day))
    return pa.array(_real_days(y, m, d))


def _real_days(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    month_ok = (m >= 1) & (m <= 12)
    days = _DAYS_IN_MONTH[np.where(month_ok, m, 0)] + ((m == 2) & leap)
    real: np.ndarray = month_ok & (y >= 1) & (y <= 9999) & (d >= 1) & (d <= days)
    return real


def _fixed_form(arr: pa.Array, template: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The digits of a string array whose present values are all spelled exactly like ``template``.

    ``9`` in the template stands for an ASCII digit, any other character for itself. Returns
    ``(digits, present)``: the digit values (one row per present value, one int32 column per
    ``9``) and the mask of present rows; None when any present value has another shape. The
    present values usually lie end to end in the data buffer, so no gather and no regex runs.
    """
    if not pa.types.is_string(arr.type):
        return None
    n, width = len(arr), len(template)
    data = arr.buffers()[2]
    ends = value_offsets(arr)
    lengths = np.diff(ends)
    present = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else np.ones(n, np.bool_)
    if not (lengths[present] == width).all():
        return None
    k = int(np.count_nonzero(present))
    form = np.frombuffer(template.encode("ascii"), dtype=np.uint8)
    at_digit = form == ord("9")
    if k == 0:
        return np.zeros((0, int(at_digit.sum())), dtype=np.int32), present
    buffer = np.frombuffer(data, dtype=np.uint8)
    filled = lengths != 0
    if (lengths[filled] == width).all():
        # Every slot holding bytes holds a whole value, so they lie end to end: a reshape, no
        # gather. Null slots may hold bytes too (values a coercion refused, or a struct's nulls
        # pushed down to its fields); their rows are left out.
        start = int(ends[0])
        whole = buffer[start : start + width * int(np.count_nonzero(filled))].reshape(-1, width)
        raw = whole if k == len(whole) else whole[present[filled]]
    else:
        raw = buffer[ends[:-1][present][:, None] + np.arange(width)]
    digits = raw[:, at_digit] - np.uint8(48)  # bytes below '0' wrap around above 9
    if (digits > 9).any() or not (raw[:, ~at_digit] == form[~at_digit]).all():
        return None
    return digits.astype(np.int32), present


def _numbers(digits: np.ndarray, widths: tuple[int, ...]) -> list[np.ndarray]:
    """Consecutive runs of ``widths`` digit columns as numbers (``(4, 2, 2)``: year, month, day)."""
    out, start = [], 0
    for w in widths:
        value = np.zeros(len(digits), dtype=np.int32)
        for col in range(start, start + w):
            value = value * 10 + digits[:, col]
        out.append(value)
        start += w
    return out


def _spread(present: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Values of the present rows as a mask over all rows (False where absent)."""
    if len(values) == len(present):
        return values
    out = np.zeros(len(present), dtype=np.bool_)
    out[present] = values
    return out


def iso_dates_ok(arr: pa.Array) -> np.ndarray | None:
    """The fast path for dates already in standard form, straight from the string bytes.

    When every present value of a ``string`` array is exactly ``YYYY-MM-DD`` (ASCII digits): a
    mask, True where the value names a real calendar day, False for nulls. Otherwise None: the
    caller takes the regex path, which gives the same answer for these values.
    """
    found = _fixed_form(arr, "9999-99-99")
    if found is None:
        return None
    digits, present = found
    return _spread(present, _real_days(*_numbers(digits, (4, 2, 2))))


def iso_datetimes_ok(arr: pa.Array) -> np.ndarray | None:
    """As :func:`iso_dates_ok`, for date-times already in bulkd's output form ``YYYY-MM-DDTHH:MM:SSZ``."""
    found = _fixed_form(arr, "9999-99-99T99:99:99Z")
    if found is None:
        return None
    digits, present = found
    y, m, d, hh, mi, ss = _numbers(digits, (4, 2, 2, 2, 2, 2))
    return _spread(present, _real_days(y, m, d) & (hh <= 23) & (mi <= 59) & (ss <= 59))


def _digits(text: pa.Array) -> pa.Array:
    """Short ASCII digit strings (regex groups) as numbers; anything else (empty, other scripts) null.

    Regex groups of rows that did not match are empty strings, not nulls: casting them would
    fail and send the whole array down the per-value path.
    """
    return pc.cast(pc.if_else(pc.ascii_is_decimal(text), text, pa.scalar(None, text.type)), pa.int64())


def _digits_or_zero(text: pa.Array) -> np.ndarray:
    numbers: np.ndarray = pc.fill_null(_digits(text), 0).to_numpy(zero_copy_only=False)
    return numbers


def _kept_where(ok: np.ndarray, arr: pa.Array) -> Coerced:
    """``arr`` where ``ok``, else null (zero-copy when every present value is ok)."""
    if int(np.count_nonzero(ok)) == len(arr) - arr.null_count:
        return Coerced(arr, all_false(len(arr)))
    out = pc.if_else(pa.array(ok), arr, pa.scalar(None, pa.string()))
    return Coerced(out, _bad_where(out, arr))


def to_date(arr: pa.Array) -> Coerced:
    """ISO ``YYYY-MM-DD`` strings that name a real day; Arrow dates and timestamps are formatted."""
    if pa.types.is_date(arr.type) or pa.types.is_timestamp(arr.type):
        out = pc.strftime(arr, format="%Y-%m-%d")
        return Coerced(out, all_false(len(arr)))
    fast = iso_dates_ok(arr)
    if fast is not None:
        return _kept_where(fast, arr)
    text = pc.utf8_trim_whitespace(_as_text(arr))
    parts = pc.extract_regex(text, _DATE_IN)
    y, m, d = (parts.field(i) for i in range(3))
    ok = pc.and_(pc.is_valid(parts), calendar_ok(y, m, d))
    out = pc.if_else(ok, text, pa.scalar(None, pa.string()))
    return Coerced(out, _bad_where(out, arr))


def to_datetime(arr: pa.Array, style: DateTimeStyle) -> Coerced:
    """Normalise to RFC 3339 ``YYYY-MM-DDTHH:MM:SS[.f](Z|±HH:MM)``, refusing impossible values.

    Accepts a ``T`` or space separator, missing seconds, a missing time (midnight) and a
    missing offset (``style.naive_offset`` is applied). Arrow timestamps are formatted in UTC
    (or with ``naive_offset`` when they carry no time zone).
    """
    if pa.types.is_timestamp(arr.type):
        return Coerced(_format_timestamp(arr, style), all_false(len(arr)))
    if pa.types.is_date(arr.type):
        text = pc.strftime(arr, format="%Y-%m-%d")
    else:
        fast = iso_datetimes_ok(arr)
        if fast is not None:  # already in the output form: nothing to rewrite
            return _kept_where(fast, arr)
        text = pc.utf8_trim_whitespace(_as_text(arr))
    p = pc.extract_regex(text, _DT_IN)
    y, mo, d, hh, mi, ss, frac, tz = (p.field(i) for i in range(8))
    hh = pc.fill_null(pc.if_else(pc.equal(hh, ""), "00", hh), "00")
    mi = pc.fill_null(pc.if_else(pc.equal(mi, ""), "00", mi), "00")
    ss = pc.fill_null(pc.if_else(pc.equal(ss, ""), "00", ss), "00")
    frac = pc.fill_null(frac, "")
    tz = _normal_offset(pc.fill_null(tz, ""), style)
    ok = pc.and_(pc.is_valid(p), calendar_ok(y, mo, d))
    ok = pc.and_(ok, _clock_ok(hh, mi, ss, tz))
    date_part = pc.binary_join_element_wise(y, mo, d, "-")
    time_part = pc.binary_join_element_wise(hh, mi, ss, ":")
    joined = pc.binary_join_element_wise(date_part, "T", time_part, frac, tz, "")
    out = pc.if_else(pc.fill_null(ok, False), joined, pa.scalar(None, pa.string()))
    return Coerced(out, _bad_where(out, arr))


def _normal_offset(tz: pa.Array, style: DateTimeStyle) -> pa.Array:
    """``z``/``Z`` → ``Z``, ``+1000`` → ``+10:00``, missing → the configured naive offset."""
    tz = pc.if_else(pc.equal(tz, ""), style.naive_offset, tz)
    tz = pc.if_else(pc.equal(tz, "z"), "Z", tz)
    return pc.replace_substring_regex(tz, r"^([+-]\d{2})(\d{2})$", r"\1:\2")


def _clock_ok(hh: pa.Array, mi: pa.Array, ss: pa.Array, tz: pa.Array) -> pa.BooleanArray:
    def in_range(text: pa.Array, top: int) -> pa.BooleanArray:
        return pc.less_equal(_digits(text), top)

    ok = pc.and_(pc.and_(in_range(hh, 23), in_range(mi, 59)), in_range(ss, 59))
    off = pc.extract_regex(tz, r"^[+-](?P<h>\d{2}):(?P<m>\d{2})$")
    off_ok = pc.or_kleene(
        pc.equal(tz, "Z"),
        pc.and_kleene(in_range(off.field(0), 23), in_range(off.field(1), 59)),
    )
    return pc.fill_null(pc.and_(ok, pc.fill_null(off_ok, False)), False)


def _format_timestamp(arr: pa.Array, style: DateTimeStyle) -> pa.Array:
    """Format in UTC (``Z``) when zoned, else with the naive offset; zero fractions are dropped."""
    if arr.type.tz is not None:
        arr = pc.cast(arr, pa.timestamp(arr.type.unit, "UTC"))
        suffix = "Z"
    else:
        suffix = style.naive_offset
    # Arrow's %S carries the sub-second digits of the unit; trim trailing zeros and a bare dot.
    text = pc.strftime(arr, format="%Y-%m-%dT%H:%M:%S")
    text = pc.replace_substring_regex(text, r"(\.\d*?)0+$", r"\1")
    text = pc.replace_substring_regex(text, r"\.$", "")
    return pc.binary_join_element_wise(text, pa.scalar(suffix), "")


def to_string_list(arr: pa.Array, separator: str | None) -> Coerced:
    """Cells holding several strings: a JSON array text, or values joined by ``separator``.

    Lexer's arrays of strings (product images, option values, tags) have no CSV spelling of
    their own; a cell starting with ``[`` is read as a JSON array of strings, otherwise it is
    split on the profile's separator (or taken as a one-element list when none is set).
    """
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        return Coerced(arr, all_false(len(arr)))
    values: list[list[str] | None] = []
    bad: list[bool] = []
    for cell in _as_text(arr).to_pylist():
        parsed, is_bad = _split_cell(cell, separator)
        values.append(parsed)
        bad.append(is_bad)
    return Coerced(pa.array(values, pa.list_(pa.string())), pa.array(bad, pa.bool_()))


def _split_cell(cell: str | None, separator: str | None) -> tuple[list[str] | None, bool]:
    if cell is None or cell == "":
        return None, False
    if cell.lstrip().startswith("["):
        try:
            items = orjson.loads(cell)
        except orjson.JSONDecodeError:
            return None, True
        if isinstance(items, list) and all(isinstance(i, str) for i in items):
            return items, False
        return None, True
    if separator:
        return [part for part in cell.split(separator) if part != ""], False
    return [cell], False
