"""The catastrophic-backtracking guard for manifest patterns."""

from __future__ import annotations

import re

import pytest

from core.manifest.regex_safety import (
    MAX_PATTERN_LENGTH,
    UnsafePatternError,
    check_pattern,
    is_safe_pattern,
)

NESTED_QUANTIFIERS = [
    r"(a+)+",
    r"(a*)*",
    r"(\w+\s?)*",
    r"((a+))+",
    r"(\d+)*$",
    r"(?:a+|b)+",
    r"(.*a){3}",
    r"(x+x+-)*",
    r"(a?a?)*",
]
AMBIGUOUS_ALTERNATIONS = [
    r"(a|a)*",
    r"(a|ab)*",
    r"(\w|\d)+",
    r"(a|aa)+",
    r"(-(a|a))*",
    r"(?:foo|f)*",
]
SAFE = [
    r"[a-z0-9\-\.]+",
    r"(\d+\.){3}\d+",
    r"([a-z0-9]+-)*[a-z0-9]+",
    r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*",
    r"(foo|bar)*",
    r"(ab|ac)*",
    r"[\w-]+",
    r"[A-Z][a-z]+( [A-Z][a-z]+)*",
    r"(?i)[a-z]+",
    r"\d{1,5}",
    r"[A-Za-z0-9][A-Za-z0-9 .,!?'-]*",
]


@pytest.mark.parametrize("pattern", NESTED_QUANTIFIERS)
def test_nested_quantifiers_are_refused(pattern):
    with pytest.raises(UnsafePatternError, match="nested quantifiers"):
        check_pattern(pattern)


@pytest.mark.parametrize("pattern", AMBIGUOUS_ALTERNATIONS)
def test_repeated_alternations_whose_branches_overlap_are_refused(pattern):
    with pytest.raises(UnsafePatternError, match="alternation"):
        check_pattern(pattern)


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?P<x>a)(?P=x)", r"(a)?(?(1)b|c)"])
def test_backreferences_are_refused(pattern):
    with pytest.raises(UnsafePatternError, match="backreferences"):
        check_pattern(pattern)


def test_a_pattern_longer_than_the_limit_is_refused():
    with pytest.raises(UnsafePatternError, match="at most"):
        check_pattern("a" * (MAX_PATTERN_LENGTH + 1))


def test_a_pattern_at_the_limit_is_accepted():
    check_pattern("a" * MAX_PATTERN_LENGTH)


@pytest.mark.parametrize("pattern", SAFE)
def test_common_safe_patterns_are_accepted(pattern):
    check_pattern(pattern)
    assert is_safe_pattern(pattern)


def test_an_invalid_pattern_raises_re_error_and_is_not_safe():
    with pytest.raises(re.error):
        check_pattern("(unclosed")
    assert not is_safe_pattern("(unclosed")


def test_a_separator_that_a_repeat_can_also_match_does_not_make_it_safe():
    # '-' is inside [a-z-], so it cannot pin where each iteration ends.
    with pytest.raises(UnsafePatternError):
        check_pattern(r"([a-z-]+-)*")


def test_case_insensitive_patterns_compare_both_cases():
    # Under (?i) 'A' also matches 'a', so it is no separator for a+.
    with pytest.raises(UnsafePatternError):
        check_pattern(r"(?i)(a+A)*")
    check_pattern(r"(a+A)*")
