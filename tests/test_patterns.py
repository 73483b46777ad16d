"""Pattern automata must answer exactly as the compiled validator's ``re.search`` does."""

from __future__ import annotations

import re
import shutil
import sysconfig

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from bulkd import patterns
from bulkd.patterns import DEAD, MATCHED, Automaton, _automaton, _TooManyStates, compile_pattern, search_cells

LEXER_EMAIL = r"(^[a-zA-Z0-9_.+-]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+$)"

_SUPPORTED = [
    LEXER_EMAIL,
    r"^\d{4}-\d{2}-\d{2}$",
    r"^[A-Z]{2,3}$",
    r"ab|cd",
    r"^(?:ab)+c?$",
    r"x.y",
    r"[^a-c]+",
    r"^\w*$",
    r"a{2,}b",
    r"a{0}b",
    r"a{,",
    r"a*?b+?c??",
    r"\$\.\-",
    r"[]a]",
    r"[a-]",
    r"^$",
    r"",
    r"\AZ\Z",
    r"(a|)b$",
    r"\n",
]

_UNSUPPORTED = [
    r"(?=a)b",  # lookahead
    r"(?i)abc",  # inline flag
    r"\s+",  # Python's \s also matches \x1c-\x1f
    r"\bword",
    r"(a)\1",
    r"a{,3}",  # a repeat from zero in Python, a literal elsewhere
    r"a++",  # possessive
    r"a**",
    r"é",  # a non-ASCII literal
    r"[é]",
    r"\\$",  # the rewrite leaves this '$' bare, which means end-or-final-newline
    r"[$]",
    r"a{1000}",
    r"[[a]",
]

_CELL = st.text(alphabet=st.sampled_from("aAbcdxyzZ019_.+-@$ \n\té"), max_size=12)


def _validator_search(pattern: str, cell: str) -> bool:
    """What fastjsonschema's generated code does: every unescaped ``$`` becomes ``\\Z``, then search."""
    return re.search(re.sub(r"(?<!\\)\$", r"\\Z", pattern), cell) is not None


@pytest.mark.parametrize("pattern", _UNSUPPORTED)
def test_patterns_outside_the_grammar_have_no_automaton(pattern: str) -> None:
    assert compile_pattern(pattern) is None


@pytest.mark.parametrize("pattern", _SUPPORTED)
def test_supported_patterns_have_a_well_formed_table(pattern: str) -> None:
    automaton = compile_pattern(pattern)
    assert automaton is not None
    states = len(automaton.accept)
    assert len(automaton.table) == states * 256
    assert max(automaton.table) < states
    assert automaton.table[DEAD * 256 : DEAD * 256 + 256] == bytes(256)  # dead stays dead
    assert set(automaton.table[MATCHED * 256 : MATCHED * 256 + 256]) == {MATCHED}
    assert automaton.accept[DEAD] == 0
    assert automaton.accept[MATCHED] == 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=st.sampled_from(_SUPPORTED), cell=_CELL)
def test_automaton_answers_as_the_validator_does(pattern: str, cell: str) -> None:
    automaton = compile_pattern(pattern)
    assert automaton is not None
    found = automaton.search(cell.encode())
    expected = _validator_search(pattern, cell)
    if cell.isascii():
        assert found == expected
    else:  # non-ASCII may only ever mean "look closer"
        assert not found or expected


_PIECES = st.sampled_from(
    ["a", "b", ".", "[ab]", "[^a]", "[a-c]", r"\d", r"\w", r"\.", "^", "$", r"\Z", "(a|b)", "(?:ab)", "(a|)"]
)
_QUANTIFIERS = st.sampled_from(["", "", "*", "+", "?", "{2}", "{1,2}", "{0,}", "*?"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.tuples(_PIECES, _QUANTIFIERS), min_size=1, max_size=5),
    alternate=st.booleans(),
    cells=st.lists(st.text(alphabet=st.sampled_from("ab c1._\n"), max_size=8), min_size=1, max_size=12),
)
@example(parts=[("a", ""), *[(".", "{2}")] * 4], alternate=False, cells=["a"])  # too many states
def test_random_patterns_agree_with_re(
    parts: list[tuple[str, str]], alternate: bool, cells: list[str]
) -> None:
    pieces = [p + (q if p not in ("^", "$", r"\Z") else "") for p, q in parts]
    pattern = "|".join(pieces) if alternate else "".join(pieces)
    try:
        re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))
    except re.error:
        assume(False)
    automaton = compile_pattern(pattern)
    if automaton is None:  # these pieces are all supported: only a state blow-up is left to RE2
        with pytest.raises(_TooManyStates):
            _automaton(pattern)
        return
    for cell in cells:
        assert automaton.search(cell.encode()) == _validator_search(pattern, cell), (pattern, cell)


def test_long_repeats_compile_and_state_blowups_are_left_to_re2() -> None:
    digits = compile_pattern(r"^\d{64}$")
    assert digits is not None
    assert digits.search(b"1" * 64)
    assert not digits.search(b"1" * 63)
    assert not digits.search(b"1" * 65)
    # the n-th symbol from the end: a DFA needs 2**13 states, more than a byte can number
    assert compile_pattern(r"(a|b)*a(a|b){12}$") is None


def test_lexer_email_pattern_is_supported_and_strict_at_the_end() -> None:
    automaton = compile_pattern(LEXER_EMAIL)
    assert isinstance(automaton, Automaton)
    assert automaton.search(b"jane@example.com")
    assert not automaton.search(b"jane@example.com\n")  # '$' became '\Z' in the validator
    assert not automaton.search(b"jane@localhost")
    assert not automaton.search("jané@x.com".encode())


native = pytest.mark.skipif(not patterns.NATIVE, reason="bulkd._match was not built (no C compiler)")


def test_native_walk_is_built_where_a_compiler_is() -> None:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) on this machine, so none was built at install")
    assert patterns.NATIVE, "a C compiler is here, yet the install did not build bulkd._match"


@native
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cells=st.lists(st.one_of(st.none(), _CELL), max_size=40),
    cut=st.integers(min_value=0, max_value=5),
    pattern=st.sampled_from(_SUPPORTED),
)
def test_native_walk_answers_as_the_automaton(cells: list[str | None], cut: int, pattern: str) -> None:
    automaton = compile_pattern(pattern)
    assert automaton is not None
    arr = pa.array(cells, pa.string()).slice(min(cut, len(cells)))  # a slice: a non-zero offset
    found = search_cells(arr, pattern)
    assert found is not None
    expected = [automaton.search((c or "").encode()) for c in arr.to_pylist()]
    assert found.tolist() == expected


@native
def test_native_walk_refuses_tables_and_offsets_that_do_not_fit() -> None:
    from bulkd import _match

    automaton = compile_pattern(LEXER_EMAIL)
    assert automaton is not None
    arr = pa.array(["a@b.co", "x"])
    _, offsets, data = arr.buffers()
    out = np.zeros(2, dtype=np.bool_)
    good = (automaton.table, automaton.accept, automaton.start)
    with pytest.raises(ValueError, match="state"):
        _match.walk(offsets, data, 0, 2, automaton.table[:-1], automaton.accept, automaton.start, out)
    with pytest.raises(ValueError, match="does not hold"):
        _match.walk(offsets, data, 0, 2, bytes([200]) * 256, b"\x00", 0, out)
    with pytest.raises(ValueError, match="fit"):
        _match.walk(offsets, data, 1, 2, *good, out)
    with pytest.raises(ValueError, match="outside"):
        _match.walk(offsets, b"a@", 0, 2, *good, out)
    _match.walk(offsets, data, 0, 2, *good, out)
    assert out.tolist() == [True, False]


def test_search_cells_leaves_unsupported_patterns_to_re2() -> None:
    assert search_cells(pa.array(["a b"]), r"\s") is None
