"""Typed reads of a manifest's YAML mappings, each wrong value said as a problem with its path.

The parser collects every problem instead of stopping at the first, so an author fixes a
manifest in one pass.
"""

from __future__ import annotations

import math

from core.validation import is_single_line


def short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def type_name(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class Fields:
    """Typed reads of one YAML mapping, each adding a problem (with its path) when wrong."""

    def __init__(
        self, data: dict[object, object], where: str, allowed: frozenset[str], problems: list[str]
    ) -> None:
        self.data = data
        self.where = where
        self.problems = problems
        for key in data:
            if not isinstance(key, str):
                self.problem("", f"field names must be text, found {short(key)}")
            elif key not in allowed:
                self.problem(key, "unknown field")

    def problem(self, key: str, message: str) -> None:
        path = f"{self.where}.{key}" if self.where and key else (self.where or key)
        self.problems.append(f"{path}: {message}" if path else message)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> object:
        return self.data.get(key)

    def text(
        self, key: str, *, required: bool = False, single_line: bool = True, max_chars: int = 0
    ) -> str | None:
        if key not in self.data:
            if required:
                self.problem(key, "is required")
            return None
        value = self.data[key]
        if not isinstance(value, str):
            hint = " (put it in quotes)" if isinstance(value, int | float | bool) else ""
            self.problem(key, f"must be text, found {type_name(value)}{hint}")
            return None
        if "\x00" in value:
            self.problem(key, "must not contain NUL characters")
            return None
        if single_line and not is_single_line(value):
            self.problem(key, "must be a single line")
            return None
        if max_chars and len(value) > max_chars:
            self.problem(key, f"must be at most {max_chars} characters long")
            return None
        if required and not value.strip():
            self.problem(key, "must not be empty")
            return None
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false, found {type_name(value)}")
            return default
        return value

    def integer(self, key: str, *, low: int, high: int) -> int | None:
        if key not in self.data:
            return None
        value = self.data[key]
        # A YAML bool is an int in Python; it is never a number here.
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem(key, f"must be a whole number, found {type_name(value)}")
            return None
        if not low <= value <= high:
            self.problem(key, f"must be between {low} and {high}")
            return None
        return value

    def number(self, key: str) -> int | float | None:
        if key not in self.data:
            return None
        value = self.data[key]
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.problem(key, f"must be a number, found {type_name(value)}")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(key, "must be a finite number")
            return None
        return value
