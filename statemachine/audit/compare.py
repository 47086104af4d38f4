"""How a job's two event streams are compared: its own stream and its global entries.

Both are read raw (flat lists of the stored bytes) and compared as such; no digest is built
on either side. `stream_disagreement` names each event that differs.
"""

from __future__ import annotations

from typing import Any, cast

from core.errors import TamperError
from core.stream_ids import stream_id_key
from core.text import as_text_lenient
from statemachine.audit.raw_reads import as_bytes


def by_key(answer: object) -> dict[bytes, list[list[Any]]]:
    """An XREAD answer as stream key -> entries (a stream without entries is left out)."""
    if not answer:
        return {}
    if isinstance(answer, dict):  # RESP3 gives a map
        return {as_bytes(key): entries for key, entries in answer.items()}
    return {as_bytes(key): entries for key, entries in cast(list[list[Any]], answer)}


def same_entries(own: list[list[Any]], seen: list[tuple[str, list[bytes]]]) -> bool:
    """Whether a job's own stream (raw XREAD entries) holds exactly its global entries."""
    if len(own) != len(seen):
        return False
    # One comparison of two lists of field lists, in C.
    own_fields = [fields for _stream_id, fields in own]
    if own_fields == [fields for _event_id, fields in seen]:
        return True
    # A client that decodes answers gives str: compare the bytes they stand for.
    return [[as_bytes(value) for value in fields] for fields in own_fields] == [
        fields for _event_id, fields in seen
    ]


def event_id_of(flat: list[bytes]) -> str:
    """The `event_id` field of an event's flat field list."""
    return as_text_lenient(dict(zip(flat[0::2], flat[1::2], strict=False)).get(b"event_id", b""))


def stream_disagreement(
    job_id: str,
    own: list[tuple[str, str, list[bytes]]],
    seen: list[tuple[str, list[bytes]]],
    *,
    archive_cut_ms: int | None = None,
    read_until_ms: int | None = None,
) -> list[TamperError]:
    """How a job's own stream (`own`: entry id, event id, fields) and its global entries
    (`seen`: event id, fields) differ.

    An event missing from the global stream is fine when an archive took it (its entry is
    older than the newest archive's cut: the two copies of an event are written in one
    script, in the same millisecond) or when it was written after the audit read that far.
    """
    seen_ids = {event_id for event_id, _digest in seen}
    kept: list[tuple[str, list[bytes]]] = []
    for stream_id, event_id, digest in own:
        if event_id not in seen_ids:
            moment = stream_id_key(stream_id)[0]
            if archive_cut_ms is not None and moment <= archive_cut_ms:
                continue
            if read_until_ms is not None and moment > read_until_ms:
                continue
        kept.append((event_id, digest))
    if kept == seen:
        return []
    problems: list[TamperError] = []
    own_digest = dict(kept)
    seen_digest = dict(seen)
    for event_id, digest in kept:
        if event_id not in seen_digest:
            problems.append(
                TamperError(job_id, event_id, "missing event: not in the global stream")
            )
        elif seen_digest[event_id] != digest:
            problems.append(
                TamperError(
                    job_id, event_id, "the job's stream and the global stream differ on this event"
                )
            )
    for event_id, _digest in seen:
        if event_id not in own_digest:
            problems.append(TamperError(job_id, event_id, "missing event: not in the job's stream"))
    if not problems:
        problems.append(TamperError(job_id, "", "the two event streams order the job differently"))
    return problems
