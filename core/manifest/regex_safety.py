"""Refuse manifest patterns that could backtrack catastrophically (pure).

A manifest's `validation.pattern` runs against text a stranger typed into a form, in the panel
and again in the agent, with Python's backtracking `re` engine. A pattern such as `(a+)+$`
takes exponential time on a string like `"aaaa…!"`, so one request could pin a CPU for hours.
`check_pattern` walks the pattern as parsed by the standard library (`re._parser`; the module
was `sre_parse` before 3.11) and refuses it when it sees a shape known to cause that.

This is a conservative heuristic, not a proof. What it refuses, inside any repeat that may run
more than once (`*`, `+`, `{2,}`, `{n,m}` with m > 1):

- **Nested quantifiers**: the repeated body contains a variable-length repeat (`(a+)+`,
  `(a*)*`, `(\\w+\\s?)*`) and has no *separator*, that is a character every iteration must
  match at a fixed place that none of the body's variable parts can match. So `(\\d+\\.){3}`
  and `([a-z0-9]+-)*` are accepted (the `.` and `-` pin where each iteration ends), and
  `(\\w+\\s?)*` is refused. Two adjacent variable parts that can match the same character
  (`(x+x+-)*`) are refused even with a separator, since each iteration can split its text in
  many ways.
- **Ambiguous alternations**: an alternation whose branches can start with the same character,
  or where a branch can match the empty string (`(a|a)*`, `(a|ab)*`, `(foo|f)*`). The parser
  turns an alternation of single characters into a character class, so `(\\w|\\d)+` arrives as
  `[\\w\\d]+`; a class whose members overlap is therefore refused inside a repeat too, although
  the class itself cannot backtrack.
- **Backreferences** (`\\1`, `(?P=name)`, `(?(1)…)`): matching them is NP-hard in general.
- **Patterns longer than** `MAX_PATTERN_LENGTH` characters.

Known limits: character sets are compared approximately (all non-ASCII categories such as
`\\w` are assumed to overlap each other, and case-insensitive patterns compare ASCII letters in
both cases); lookarounds are walked but not used as separators; polynomial backtracking outside
repeats (`\\d*\\d*\\d*x`) is not detected, which the per-value size limit and `max_length` bound;
possessive repeats and atomic groups, which never backtrack, are judged as if they did. A refused
pattern can nearly always be rewritten with an explicit separator or a plain character class.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from core.errors import ProvisionError

MAX_PATTERN_LENGTH = 1000

# The parser is private; it is `re._parser` from 3.11 on, and `sre_parse` (deprecated, with a
# warning on import) before. Import it dynamically so neither spelling needs type stubs.
try:
    _parser: Any = importlib.import_module("re._parser")
    _constants: Any = importlib.import_module("re._constants")
except ImportError:  # pragma: no cover - only on interpreters older than 3.11
    _parser = importlib.import_module("sre_parse")
    _constants = importlib.import_module("sre_constants")

_MAXREPEAT: int = int(_constants.MAXREPEAT)
_IGNORECASE: int = int(_constants.SRE_FLAG_IGNORECASE)
_ASCII_ALL = frozenset(range(128))
_DIGITS = frozenset(range(ord("0"), ord("9") + 1))
_WORD = frozenset(
    [*range(ord("a"), ord("z") + 1), *range(ord("A"), ord("Z") + 1), *_DIGITS, ord("_")]
)
_SPACE = frozenset(ord(c) for c in " \t\n\r\f\v\x1c\x1d\x1e\x1f")
_LINEBREAK = frozenset({ord("\n")})


# A parsed item is an (opcode, argument) pair; both come from the untyped private parser.
_Item = tuple[Any, Any]
_Items = Iterable[_Item]


class UnsafePatternError(ProvisionError, ValueError):
    """The pattern is refused; `str()` says why in words a manifest author can act on."""


@dataclass(frozen=True, slots=True)
class _Chars:
    """An over-approximation of the characters an atom can match."""

    ascii: frozenset[int] = frozenset()
    # Specific non-ASCII code points, and whether "any other non-ASCII character" is possible.
    other: frozenset[int] = frozenset()
    other_any: bool = False

    def __or__(self, more: _Chars) -> _Chars:
        return _Chars(
            self.ascii | more.ascii, self.other | more.other, self.other_any or more.other_any
        )

    def overlaps(self, more: _Chars) -> bool:
        return bool(
            (self.ascii & more.ascii)
            or (self.other & more.other)
            or (self.other_any and (more.other_any or more.other))
            or (more.other_any and self.other)
        )

    def folded(self) -> _Chars:
        """Both cases of every letter, for case-insensitive matching."""
        ascii_ = set(self.ascii)
        other = set(self.other)
        for code in [*self.ascii, *self.other]:
            for variant in (chr(code).lower(), chr(code).upper()):
                if len(variant) == 1:
                    (ascii_ if ord(variant) < 128 else other).add(ord(variant))
        return _Chars(frozenset(ascii_), frozenset(other), self.other_any)


_ANY = _Chars(_ASCII_ALL, frozenset(), True)
_NOTHING = _Chars()


def _literal(code: int) -> _Chars:
    if code < 128:
        return _Chars(frozenset({code}))
    return _Chars(other=frozenset({code}))


def _complement(chars: _Chars) -> _Chars:
    # The complement of anything contains (almost) every non-ASCII character.
    return _Chars(_ASCII_ALL - chars.ascii, frozenset(), True)


def _category(name: str) -> _Chars:
    negated = "_NOT_" in name
    if "DIGIT" in name:
        base = _Chars(_DIGITS, frozenset(), True)
    elif "WORD" in name:
        base = _Chars(_WORD, frozenset(), True)
    elif "SPACE" in name:
        base = _Chars(_SPACE, frozenset(), True)
    elif "LINEBREAK" in name:
        base = _Chars(_LINEBREAK, frozenset(), True)
    else:  # an unknown category: assume it matches anything
        return _ANY
    return _complement(base) if negated else base


def _op(item: _Item) -> str:
    return str(item[0].name)


@dataclass(frozen=True, slots=True)
class _Facts:
    """What a (sub)pattern can match: its first characters and whether it can be empty."""

    first: _Chars
    nullable: bool


class _Walker:
    """Walks a parsed pattern, raising UnsafePatternError at the first refused shape."""

    def __init__(self, flags: int) -> None:
        self.flags = flags

    def chars_of_atom(self, item: _Item, flags: int) -> _Chars | None:
        """The characters a one-character atom matches, or None if it is not one."""
        op, av = _op(item), item[1]
        if op == "LITERAL":
            chars = _literal(int(av))
        elif op == "NOT_LITERAL":
            chars = _complement(_literal(int(av)))
        elif op == "ANY":
            chars = _ANY
        elif op == "IN":
            chars = self.class_chars(av)
        else:
            return None
        return chars.folded() if flags & _IGNORECASE else chars

    def class_chars(self, members: _Items) -> _Chars:
        """The union of a character class's members (with NEGATE applied)."""
        chars = _NOTHING
        negate = False
        for member in members:
            chars = chars | self.class_member(member)
            negate = negate or _op(member) == "NEGATE"
        return _complement(chars) if negate else chars

    def class_member(self, member: _Item) -> _Chars:
        op, av = _op(member), member[1]
        if op == "LITERAL":
            return _literal(int(av))
        if op == "RANGE":
            low, high = int(av[0]), int(av[1])
            ascii_ = frozenset(range(low, min(high, 127) + 1))
            return _Chars(ascii_, frozenset(), high >= 128)
        if op == "CATEGORY":
            return _category(str(av.name))
        if op == "NEGATE":
            return _NOTHING
        return _ANY

    def class_members_overlap(self, members: _Items) -> bool:
        """Whether two members of a character class can match the same character."""
        parts = [self.class_member(m) for m in members if _op(m) != "NEGATE"]
        return any(a.overlaps(b) for i, a in enumerate(parts) for b in parts[i + 1 :])

    def facts(self, items: _Items, flags: int) -> _Facts:
        """First characters and emptiness of a sequence of items."""
        first = _NOTHING
        for item in items:
            item_facts = self.item_facts(item, flags)
            first = first | item_facts.first
            if not item_facts.nullable:
                return _Facts(first, nullable=False)
        return _Facts(first, nullable=True)

    def item_facts(self, item: _Item, flags: int) -> _Facts:
        op, av = _op(item), item[1]
        atom = self.chars_of_atom(item, flags)
        if atom is not None:
            return _Facts(atom, nullable=False)
        if op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            body = self.facts(av[2], flags)
            return _Facts(body.first, nullable=int(av[0]) == 0 or body.nullable)
        if op == "SUBPATTERN":
            return self.facts(av[3], (flags | int(av[1])) & ~int(av[2]))
        if op == "ATOMIC_GROUP":
            return self.facts(av, flags)
        if op == "BRANCH":
            branches = [self.facts(b, flags) for b in av[1]]
            first = _NOTHING
            for branch in branches:
                first = first | branch.first
            return _Facts(first, nullable=any(b.nullable for b in branches))
        # Anchors and lookarounds consume nothing.
        return _Facts(_NOTHING, nullable=True)

    def walk(self, items: _Items, flags: int, repeated: bool) -> None:
        """Check every item; `repeated` is true inside a repeat that may run more than once."""
        for item in items:
            op, av = _op(item), item[1]
            if op in ("GROUPREF", "GROUPREF_EXISTS"):
                raise UnsafePatternError("backreferences are not allowed")
            if op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                high = int(av[1])
                if high > 1:
                    self.check_repeated_body(av[2], flags)
                self.walk(av[2], flags, repeated or high > 1)
            elif op == "SUBPATTERN":
                self.walk(av[3], (flags | int(av[1])) & ~int(av[2]), repeated)
            elif op == "ATOMIC_GROUP":
                self.walk(av, flags, repeated)
            elif op in ("ASSERT", "ASSERT_NOT"):
                self.walk(av[1], flags, repeated)
            elif op == "BRANCH":
                if repeated:
                    self.check_branch(av[1], flags)
                for branch in av[1]:
                    self.walk(branch, flags, repeated)
            elif op == "IN" and repeated and self.class_members_overlap(av):
                raise UnsafePatternError(
                    "a repeated alternation or character class has overlapping choices"
                )

    def check_branch(self, branches: _Items, flags: int) -> None:
        """Refuse an alternation under a repeat whose branches can match the same text."""
        facts = [self.facts(b, flags) for b in branches]
        if any(f.nullable for f in facts):
            raise UnsafePatternError("a repeated alternation has a branch that can match nothing")
        for i, a in enumerate(facts):
            for b in facts[i + 1 :]:
                if a.first.overlaps(b.first):
                    raise UnsafePatternError(
                        "a repeated alternation has branches that can match the same text"
                    )

    def flatten(self, items: _Items, flags: int) -> list[tuple[_Item, int]]:
        """The body as one sequence: plain groups are opened, since they add no choice."""
        out: list[tuple[_Item, int]] = []
        for item in items:
            if _op(item) == "SUBPATTERN":
                av = item[1]
                out.extend(self.flatten(av[3], (flags | int(av[1])) & ~int(av[2])))
            else:
                out.append((item, flags))
        return out

    def variable_chars(self, item: _Item, flags: int) -> _Chars | None:
        """Every character a variable-length item can match, or None if it is fixed."""
        op, av = _op(item), item[1]
        if op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            if int(av[0]) != int(av[1]) or self.contains_variable(av[2], flags):
                return self.all_chars(av[2], flags)
            return None
        if self.contains_variable([item], flags):
            return self.all_chars([item], flags)
        return None

    def contains_variable(self, items: _Items, flags: int) -> bool:
        for item in items:
            op, av = _op(item), item[1]
            if op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                if int(av[0]) != int(av[1]) or self.contains_variable(av[2], flags):
                    return True
            elif op == "BRANCH":
                # An alternation of fixed texts is deterministic once `check_branch` has
                # ensured its branches start differently; only repeats inside it add choice.
                if any(self.contains_variable(branch, flags) for branch in av[1]):
                    return True
            elif op in ("SUBPATTERN", "ATOMIC_GROUP"):
                inner = av[3] if op == "SUBPATTERN" else av
                if self.contains_variable(inner, flags):
                    return True
        return False

    def all_chars(self, items: _Items, flags: int) -> _Chars:
        """Every character any part of `items` can match."""
        chars = _NOTHING
        for item in items:
            op, av = _op(item), item[1]
            atom = self.chars_of_atom(item, flags)
            if atom is not None:
                chars = chars | atom
            elif op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                chars = chars | self.all_chars(av[2], flags)
            elif op == "SUBPATTERN":
                chars = chars | self.all_chars(av[3], (flags | int(av[1])) & ~int(av[2]))
            elif op == "ATOMIC_GROUP":
                chars = chars | self.all_chars(av, flags)
            elif op == "BRANCH":
                for branch in av[1]:
                    chars = chars | self.all_chars(branch, flags)
        return chars

    def check_repeated_body(self, body: _Items, flags: int) -> None:
        """Refuse nested quantifiers unless a separator pins each iteration's end."""
        sequence = self.flatten(body, flags)
        variable: list[_Chars | None] = [self.variable_chars(i, f) for i, f in sequence]
        parts = [chars for chars in variable if chars is not None]
        if not parts:
            return
        # Two neighbouring variable parts that share a character can split text many ways.
        for left, right in pairwise(variable):
            if left is not None and right is not None and left.overlaps(right):
                raise UnsafePatternError(
                    "nested quantifiers: a repeated group has neighbouring repeats "
                    "that can match the same characters"
                )
        union = _NOTHING
        for chars in parts:
            union = union | chars
        for (item, item_flags), variable_part in zip(sequence, variable, strict=True):
            if variable_part is not None:
                continue
            atom = self.chars_of_atom(item, item_flags)
            if atom is not None and not atom.overlaps(union):
                return
        raise UnsafePatternError(
            "nested quantifiers: a repeated group contains a repeat and no separator "
            "character (such as '-' or '.') that pins where each repetition ends"
        )


def check_pattern(pattern: str) -> None:
    """Raise UnsafePatternError (or re.error if it does not compile) when a pattern is refused."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise UnsafePatternError(f"patterns may be at most {MAX_PATTERN_LENGTH} characters long")
    try:
        parsed = _parser.parse(pattern)
        flags = int(parsed.state.flags)
        _Walker(flags).walk(parsed.data, flags, repeated=False)
    except RecursionError:
        raise UnsafePatternError("the pattern is nested too deeply") from None
    except OverflowError:
        raise UnsafePatternError("a repetition count is too large") from None


def is_safe_pattern(pattern: str) -> bool:
    """Whether `check_pattern` accepts the pattern."""
    try:
        check_pattern(pattern)
    except (UnsafePatternError, re.error):
        return False
    return True
