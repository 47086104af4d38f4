"""Strict JSON parsing: duplicate keys and NaN/Infinity are errors, not silently accepted.

Python's `json` keeps the last of two equal keys and reads `NaN` as a float; a signed
envelope, an event's detail or an API body that relies on either is malformed.
"""

from __future__ import annotations

import json
from typing import Any

from core.errors import ProvisionError


class StrictJSONError(ProvisionError, ValueError):
    """The text is not strict JSON (the message says why)."""


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` that refuses a key given twice."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJSONError(f"duplicate key {key!r}")
        result[key] = value
    return result


def reject_constant(name: str) -> object:
    """`parse_constant` hook that refuses NaN, Infinity and -Infinity."""
    raise StrictJSONError(f"{name} is not a JSON number")


def strict_loads(text: str | bytes) -> Any:  # noqa: ANN401 - any JSON value
    """`json.loads` with both refusals; StrictJSONError (a ValueError) on any problem."""
    try:
        return json.loads(
            text, object_pairs_hook=reject_duplicate_keys, parse_constant=reject_constant
        )
    except StrictJSONError:
        raise
    except (ValueError, RecursionError) as error:
        raise StrictJSONError(str(error)) from None
