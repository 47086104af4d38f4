"""Redis stream ids (`<milliseconds>-<sequence>`): checking, ordering, the next one."""

from __future__ import annotations


def is_stream_id(value: str) -> bool:
    """True for a complete stream id of two ASCII decimal numbers."""
    millis, dash, seq = value.partition("-")
    return bool(dash) and millis.isascii() and millis.isdigit() and seq.isascii() and seq.isdigit()


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """A stream id as (milliseconds, sequence), for comparing ids; a malformed part is 0."""
    millis, _, seq = stream_id.partition("-")
    return (int(millis) if millis.isdigit() else 0, int(seq) if seq.isdigit() else 0)


def next_stream_id(stream_id: str) -> str:
    """The smallest id after `stream_id` (for an exclusive bound such as XTRIM MINID)."""
    millis, sequence = stream_id_key(stream_id)
    return f"{millis}-{sequence + 1}"
