"""A job's snapshot as a pure function of its events.

The store writes exactly what `apply_event` returns, in the same atomic step as the event, and
replay folds the same function over the events, so replay reproduces the stored snapshot by
construction. Bookkeeping fields set beside the events (`cancel_requested` by the panel,
`entry_id`, the stream entry that currently carries the job, by the agent) are not derived
from events and are listed in `BOOKKEEPING_FIELDS`.

Every value is a string (a Redis hash); an absent value is `""`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from statemachine.events import Event
from statemachine.machine import FAILED, RETRY_WAIT, RUNNING, Trigger

# Written outside the event chain (cancel flag, delivery bookkeeping, the archive that holds
# the events once `provision audit archive` moved them out); replay never compares them.
BOOKKEEPING_FIELDS: Final = frozenset({"cancel_requested", "entry_id", "archived_to"})

# Copied from the submit event's detail into the snapshot, for listing without reading events.
_SUBMIT_FIELDS: Final = ("app_id", "target", "requested_by", "expires_at")


def _as_text(value: object) -> str:
    if value is None:
        return ""
    return str(value)


def apply_event(snapshot: Mapping[str, str], event: Event) -> dict[str, str]:
    """The fields that `event` sets on a snapshot (the caller merges them in)."""
    detail = event.detail
    changes: dict[str, str] = {
        "job_id": event.job_id,
        "state": event.dst,
        "attempt": str(event.attempt),
        "updated_at": str(event.at),
        "last_event_id": event.event_id,
        "last_hash": event.hash,
        "event_count": str(int(snapshot.get("event_count", "0") or "0") + 1),
        # reason is only ever set on a failed job; next_retry_at only while waiting.
        "reason": _as_text(detail.get("reason")) if event.dst == FAILED else "",
        "next_retry_at": _as_text(detail.get("next_retry_at")) if event.dst == RETRY_WAIT else "",
    }
    if event.trigger == Trigger.SUBMIT:
        changes["created_at"] = str(event.at)
        changes["exit_code"] = ""
        for name in _SUBMIT_FIELDS:
            changes[name] = _as_text(detail.get(name))
    if "exit_code" in detail:
        changes["exit_code"] = _as_text(detail["exit_code"])
    elif event.dst == RUNNING:
        changes["exit_code"] = ""
    return changes


def fold_events(events: list[Event]) -> dict[str, str]:
    """The snapshot that a sequence of events produces from nothing."""
    snapshot: dict[str, str] = {}
    for event in events:
        snapshot.update(apply_event(snapshot, event))
    return snapshot


def derived_view(snapshot: Mapping[str, str]) -> dict[str, str]:
    """The part of a stored snapshot that events determine (drops bookkeeping fields)."""
    return {name: value for name, value in snapshot.items() if name not in BOOKKEEPING_FIELDS}
