"""Redis answers as text: bytes from a client without decode_responses, str from one with it."""

from __future__ import annotations


def as_text(value: bytes | str) -> str:
    """`value` as str; bytes that are not UTF-8 raise UnicodeDecodeError."""
    return value.decode() if isinstance(value, bytes) else value


def as_text_lenient(value: bytes | str) -> str:
    """`value` as str, bytes that are not UTF-8 shown with replacement characters."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
