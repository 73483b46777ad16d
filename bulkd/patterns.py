"""Schema ``pattern`` regexes compiled to byte automata for the validation fast path.

Why: RE2 (through Arrow's ``match_substring_regex``) spends ~75 ns per email cell, which made
the one ``pattern`` in Lexer's schemas the single most expensive check of a customer record. A
table-driven automaton walks a cell in a few ns per byte (``bulkd/_match.c``).

The automaton answers what the compiled validator answers, ``re.search`` with every unescaped
``$`` turned into ``\\Z`` (fastjsonschema's rewrite), for ASCII cells only. Any byte of 0x80 or
more ends the walk with "no": on the fast path that only means "look closer", and the compiled
validator decides. Within ASCII the byte and code-point readings of a pattern coincide, which is
also why ``\\d`` and ``\\w`` can be their ASCII classes here.

Patterns outside the small grammar below (lookarounds, backreferences, flags, ``\\s``, ``\\b``,
classes with non-ASCII members, huge repeats) compile to ``None`` and keep the RE2 path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import pyarrow as pa

try:
    from bulkd import _match

    NATIVE = True
    """Whether the byte-table walk was built; without it (no C compiler at install) RE2 checks patterns."""
except ImportError:  # built without a C compiler: the RE2 path stays in use
    NATIVE = False

__all__ = ["NATIVE", "Automaton", "compile_pattern", "search_cells"]


DEAD = 0
"""No match is possible any more (or a non-ASCII byte was seen)."""
MATCHED = 1
"""A match has been found; whatever follows cannot undo it."""

_ASCII = 128
_MAX_STATES = 250  # the table holds state numbers as bytes
_MAX_NODES = 2_000
_MAX_REPEAT = 64
_DIGITS = frozenset(range(ord("0"), ord("9") + 1))
_WORD = (
    _DIGITS | frozenset(range(ord("a"), ord("z") + 1)) | frozenset(range(ord("A"), ord("Z") + 1)) | {ord("_")}
)
_ALL = frozenset(range(_ASCII))
_ESCAPES = {"d": _DIGITS, "D": _ALL - _DIGITS, "w": _WORD, "W": _ALL - _WORD}
_CONTROL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}
_DOLLAR = re.compile(r"(?<!\\)\$")
"""fastjsonschema's rewrite: every ``$`` not preceded by a backslash becomes ``\\Z``."""


class _Unsupported(Exception):
    """The pattern uses something this compiler does not handle: RE2 checks it instead."""


class _TooManyStates(_Unsupported):
    """The pattern is supported, but its automaton needs more states than the table holds."""


@dataclass(frozen=True, slots=True)
class Automaton:
    """A DFA over bytes: ``table[state * 256 + byte]`` is the next state; ``accept[state]`` says
    whether the cell matches when it ends in that state. Start in ``start``."""

    table: bytes
    accept: bytes
    start: int

    def search(self, cell: bytes) -> bool:
        """The automaton's answer for one cell (the native walker gives the same, faster)."""
        state = self.start
        for byte in cell:
            state = self.table[state * 256 + byte]
            if state in (DEAD, MATCHED):
                break
        return bool(self.accept[state])


@lru_cache(maxsize=64)
def compile_pattern(pattern: str) -> Automaton | None:
    """The automaton of ``pattern`` as the compiled validator searches it, or None if unsupported."""
    try:
        return _automaton(pattern)
    except _Unsupported:
        return None


def _automaton(pattern: str) -> Automaton:
    """:func:`compile_pattern`, raising :class:`_Unsupported` (or :class:`_TooManyStates`)."""
    nfa = _Nfa()
    begin, end = _Parser(_DOLLAR.sub(r"\\Z", pattern), nfa).parse()
    return _determinise(nfa, begin, end)


def search_cells(cells: pa.Array, pattern: str) -> npt.NDArray[np.bool_] | None:
    """Per cell of a ``pa.string()`` array, does ``pattern`` match (as the compiled validator searches)?

    None when the pattern has no automaton or the native walk was not built: the caller then
    asks RE2. Null cells get an answer too; the caller decides what a null means.
    """
    automaton = compile_pattern(pattern)
    if automaton is None or not NATIVE:
        return None
    if len(cells) == 0:  # an empty array may have no offsets buffer at all
        return np.zeros(0, dtype=np.bool_)
    _validity, offsets, data = cells.buffers()
    found = np.zeros(len(cells), dtype=np.bool_)
    _match.walk(
        offsets,
        b"" if data is None else data,
        cells.offset,
        len(cells),
        automaton.table,
        automaton.accept,
        automaton.start,
        found,
    )
    return found


# --------------------------------------------------------------------------- the NFA


@dataclass(slots=True)
class _Node:
    chars: frozenset[int] = frozenset()
    """Bytes that move along ``char_to``."""
    char_to: int = -1
    free: list[int] = field(default_factory=list)
    """Empty moves."""
    at_start: list[int] = field(default_factory=list)
    """Empty moves taken only at the start of the cell."""
    at_end: list[int] = field(default_factory=list)
    """Empty moves taken only at the end of the cell."""


class _Nfa:
    def __init__(self) -> None:
        self.nodes: list[_Node] = []

    def node(self) -> int:
        if len(self.nodes) >= _MAX_NODES:
            raise _Unsupported
        self.nodes.append(_Node())
        return len(self.nodes) - 1


_Fragment = tuple[int, int]  # (entry node, exit node)


class _Parser:
    """Recursive descent over the supported subset of Python's regex syntax, building the NFA."""

    def __init__(self, pattern: str, nfa: _Nfa) -> None:
        self.text, self.at, self.nfa = pattern, 0, nfa

    def parse(self) -> _Fragment:
        fragment = self._alternation()
        if self.at != len(self.text):
            raise _Unsupported  # an unbalanced ')'
        return fragment

    def _peek(self) -> str | None:
        return self.text[self.at] if self.at < len(self.text) else None

    def _take(self) -> str:
        if self.at >= len(self.text):
            raise _Unsupported
        ch = self.text[self.at]
        self.at += 1
        return ch

    def _alternation(self) -> _Fragment:
        branches = [self._sequence()]
        while self._peek() == "|":
            self.at += 1
            branches.append(self._sequence())
        if len(branches) == 1:
            return branches[0]
        entry, exit_ = self.nfa.node(), self.nfa.node()
        for b_entry, b_exit in branches:
            self.nfa.nodes[entry].free.append(b_entry)
            self.nfa.nodes[b_exit].free.append(exit_)
        return entry, exit_

    def _sequence(self) -> _Fragment:
        entry = exit_ = self.nfa.node()
        while self._peek() not in (None, "|", ")"):
            start = self.at
            piece = self._atom()
            piece = self._quantified(piece, self.text[start : self.at])
            self.nfa.nodes[exit_].free.append(piece[0])
            exit_ = piece[1]
        return entry, exit_

    def _atom(self) -> _Fragment:
        ch = self._take()
        if ch == "(":
            if self._peek() == "?":
                if self.text[self.at : self.at + 2] != "?:":
                    raise _Unsupported  # lookarounds, named groups, inline flags
                self.at += 2
            inner = self._alternation()
            if self._take() != ")":
                raise _Unsupported
            return inner
        if ch == "[":
            return self._chars(self._class())
        if ch == ".":
            return self._chars(_ALL - {ord("\n")})
        if ch == "^":
            return self._anchor(at_start=True)
        if ch == "\\":
            return self._escape()
        if ch in "*+?$" or (ch == "{" and self._repeat_bounds(self.at - 1) is not None):
            raise _Unsupported  # nothing to repeat; '$' left bare has Python's end-or-newline meaning
        return self._chars(_literal(ch))

    def _escape(self) -> _Fragment:
        ch = self._take()
        if ch in "AZ":
            return self._anchor(at_start=ch == "A")
        if ch in _ESCAPES:
            return self._chars(_ESCAPES[ch])
        if ch in _CONTROL_ESCAPES:
            return self._chars(_literal(_CONTROL_ESCAPES[ch]))
        if ch.isascii() and ch.isalnum():
            raise _Unsupported  # \s, \b, backreferences, \x.., \u....: left to RE2
        return self._chars(_literal(ch))

    def _class(self) -> frozenset[int]:
        negate = self._peek() == "^"
        if negate:
            self.at += 1
        members: set[int] = set()
        first = True
        while True:
            ch = self._take()
            if ch == "]" and not first:
                break
            first = False
            low = self._class_member(ch)
            if self._peek() == "-" and self.text[self.at + 1 : self.at + 2] not in ("]", ""):
                self.at += 1
                high = self._class_member(self._take())
                if len(low) != 1 or len(high) != 1 or min(low) > min(high):
                    raise _Unsupported
                members.update(range(min(low), min(high) + 1))
            else:
                members.update(low)
        return frozenset(_ALL - members) if negate else frozenset(members)

    def _class_member(self, ch: str) -> frozenset[int]:
        if ch in "[$":  # '[' is future set syntax; '$' stayed bare where the rewrite did not reach
            raise _Unsupported
        if ch == "\\":
            escaped = self._take()
            if escaped in _ESCAPES:
                return _ESCAPES[escaped]
            if escaped in _CONTROL_ESCAPES:
                return _literal(_CONTROL_ESCAPES[escaped])
            if escaped.isascii() and escaped.isalnum():
                raise _Unsupported
            ch = escaped
        return _literal(ch)

    def _repeat_bounds(self, at: int) -> tuple[int, int | None] | None:
        """``{m}``, ``{m,}`` or ``{m,n}`` at ``at``: (m, n or None); None when the brace is a literal."""
        close = self.text.find("}", at)
        if close < 0:
            return None
        low, comma, high = self.text[at + 1 : close].partition(",")
        if comma and not low:
            raise _Unsupported  # {,n}: Python reads it as a repeat from zero
        if not (low.isascii() and low.isdigit()) or (high and not (high.isascii() and high.isdigit())):
            return None
        return int(low), None if comma and not high else int(high or low)

    def _quantified(self, piece: _Fragment, atom: str) -> _Fragment:
        ch = self._peek()
        if ch is None or ch not in "*+?{":
            return piece
        if ch == "{":
            bounds = self._repeat_bounds(self.at)
            if bounds is None:
                return piece
            self.at = self.text.index("}", self.at) + 1
        else:
            self.at += 1
            bounds = {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
        if self._peek() == "?":  # lazy: the same cells match
            self.at += 1
        after = self._peek()
        if after is not None and (after in "*+?" or (after == "{" and self._repeat_bounds(self.at))):
            raise _Unsupported  # possessive, or a repeat of a repeat
        return self._repeat(piece, atom, *bounds)

    def _repeat(self, piece: _Fragment, atom: str, low: int, high: int | None) -> _Fragment:
        """``atom`` low..high times (no upper bound when None); each copy re-parses its text."""
        if max(low, high or 0) > _MAX_REPEAT or (high is not None and high < low):
            raise _Unsupported
        unused = [piece]

        def copy() -> _Fragment:
            return unused.pop() if unused else _Parser(atom, self.nfa)._atom()

        nodes = self.nfa.nodes
        entry = exit_ = self.nfa.node()
        for _ in range(low):
            p_entry, p_exit = copy()
            nodes[exit_].free.append(p_entry)
            exit_ = p_exit
        if high is None:
            p_entry, p_exit = copy()
            hub = self.nfa.node()
            nodes[exit_].free.append(hub)
            nodes[hub].free.append(p_entry)
            nodes[p_exit].free.append(hub)
            return entry, hub
        done = self.nfa.node()
        for _ in range(high - low):
            p_entry, p_exit = copy()
            nodes[exit_].free.extend((done, p_entry))
            exit_ = p_exit
        nodes[exit_].free.append(done)
        return entry, done

    def _chars(self, chars: Iterable[int]) -> _Fragment:
        entry, exit_ = self.nfa.node(), self.nfa.node()
        self.nfa.nodes[entry].chars = frozenset(chars)
        self.nfa.nodes[entry].char_to = exit_
        return entry, exit_

    def _anchor(self, at_start: bool) -> _Fragment:
        entry, exit_ = self.nfa.node(), self.nfa.node()
        node = self.nfa.nodes[entry]
        (node.at_start if at_start else node.at_end).append(exit_)
        return entry, exit_


def _literal(ch: str) -> frozenset[int]:
    code = ord(ch)
    if code >= _ASCII:
        raise _Unsupported
    return frozenset({code})


# --------------------------------------------------------------------------- the DFA


def _closure(nfa: _Nfa, seeds: Iterable[int], at_start: bool, at_end: bool) -> frozenset[int]:
    seen = set(seeds)
    stack = list(seen)
    while stack:
        node = nfa.nodes[stack.pop()]
        moves = node.free + (node.at_start if at_start else []) + (node.at_end if at_end else [])
        for target in moves:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return frozenset(seen)


def _determinise(nfa: _Nfa, begin: int, end: int) -> Automaton:
    """Subset construction for an unanchored search: every position may start a new attempt."""
    restart = _closure(nfa, [begin], at_start=False, at_end=False)
    first = _closure(nfa, [begin], at_start=True, at_end=False)
    ids: dict[tuple[frozenset[int], bool], int] = {}
    sets: list[tuple[frozenset[int], bool]] = []
    rows: list[bytearray] = [bytearray(256), bytearray([MATCHED]) * 256]
    accept = bytearray([0, 1])

    def state_of(nodes: frozenset[int], initial: bool) -> int:
        if end in nodes:
            return MATCHED
        key = (nodes, initial)
        if key not in ids:
            if len(rows) >= _MAX_STATES:
                raise _TooManyStates
            ids[key] = len(rows)
            sets.append(key)
            rows.append(bytearray(256))
            ends = _closure(nfa, nodes, at_start=initial, at_end=True)
            accept.append(1 if end in ends else 0)
        return ids[key]

    after: dict[frozenset[int], int] = {}  # bytes that move to the same nodes share a state

    def next_state(moved: frozenset[int]) -> int:
        if moved not in after:
            reached = _closure(nfa, moved, at_start=False, at_end=False) | restart
            after[moved] = state_of(reached, initial=False)
        return after[moved]

    start = state_of(first, initial=True)
    done = 0
    while done < len(sets):
        nodes, _ = sets[done]
        row = rows[ids[sets[done]]]
        done += 1
        targets: list[set[int]] = [set() for _ in range(_ASCII)]
        for n in nodes:
            for byte in nfa.nodes[n].chars:
                targets[byte].add(nfa.nodes[n].char_to)
        for byte in range(_ASCII):
            row[byte] = next_state(frozenset(targets[byte]))
    return Automaton(bytes(b"".join(rows)), bytes(accept), start)
