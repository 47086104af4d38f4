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
from dataclasses import dataclass
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


def _whole_number(text: str) -> int | None:
    # Snapshot fields are strings anyone with Redis access could have edited: a malformed one
    # reads as absent rather than crashing a reader.
    return int(text) if text and text.isascii() and text.isdigit() and len(text) <= 19 else None


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """A job's snapshot hash read once, with typed views of its fields.

    `fields` is the hash itself, as the store writes it and as a caller hands it back to the
    store (`known=`), which checks it inside the atomic step anyway. Absent text reads as
    `""`, absent numbers as None (`attempt` as 0).
    """

    fields: Mapping[str, str]

    @classmethod
    def of(cls, fields: Mapping[str, str] | None) -> JobSnapshot | None:
        """The snapshot of a hash, or None for a job that does not exist (an empty hash)."""
        return cls(fields) if fields else None

    def _text(self, name: str) -> str:
        return self.fields.get(name, "")

    @property
    def job_id(self) -> str:
        return self._text("job_id")

    @property
    def state(self) -> str:
        return self._text("state")

    @property
    def app_id(self) -> str:
        return self._text("app_id")

    @property
    def target(self) -> str:
        return self._text("target")

    @property
    def requested_by(self) -> str:
        return self._text("requested_by")

    @property
    def entry_id(self) -> str:
        """The stream entry that carries the job ("" while no agent took it)."""
        return self._text("entry_id")

    @property
    def cancel_requested(self) -> bool:
        return self._text("cancel_requested") == "1"

    @property
    def attempt(self) -> int:
        return _whole_number(self._text("attempt")) or 0

    @property
    def reason(self) -> str | None:
        """Why the job failed; None unless it did."""
        return (self._text("reason") or None) if self.state == FAILED else None

    @property
    def exit_code(self) -> int | None:
        text = self._text("exit_code")
        return int(text) if text.lstrip("-").isdigit() and len(text) <= 19 else None

    @property
    def created_at(self) -> int | None:
        return _whole_number(self._text("created_at"))

    @property
    def updated_at(self) -> int | None:
        return _whole_number(self._text("updated_at"))

    @property
    def next_retry_at(self) -> int | None:
        return _whole_number(self._text("next_retry_at"))

    @property
    def expires_at(self) -> int | None:
        return _whole_number(self._text("expires_at"))
