"""Replay: rebuild a job's state from its events alone, and say where the history was tampered.

Each event is checked on its own (hash, mac under the key ring, rotated keys included), against
its predecessor (`prev` link, `src` equal to the state reached so far), and against the machine
(the trigger is legal from that state and leads to `dst`). Every problem names the job and the
event. The snapshot is folded with the same `apply_event` the store writes with, so a replayed
snapshot that differs from the stored one means the snapshot was changed outside the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from core.errors import IllegalTransition, TamperError
from core.keyring import KeyRing
from statemachine.events import Event, integrity_problems, parse_event
from statemachine.machine import NO_STATE, next_state
from statemachine.snapshot import apply_event, derived_view
from statemachine.store import EventStore


@dataclass(slots=True)
class ReplayedJob:
    """A job rebuilt from its events, with every problem found on the way."""

    job_id: str
    state: str = ""
    snapshot: dict[str, str] = field(default_factory=dict)
    event_count: int = 0
    problems: list[TamperError] = field(default_factory=list)
    # The first event replayed when the chain's start is elsewhere (an archive), else "".
    anchored_at: str = ""

    @property
    def intact(self) -> bool:
        """True when no event showed any sign of tampering."""
        return not self.problems


class JobReplayer:
    """Folds one job's events one at a time; `finish()` returns the result."""

    def __init__(self, job_id: str, ring: KeyRing) -> None:
        self._ring = ring
        self._result = ReplayedJob(job_id)
        self._state = NO_STATE
        self._prev_hash = ""

    def anchor(self, event: Event) -> None:
        """Start mid-chain at `event` (its earlier events are archived or outside the export).

        The link into the missing part cannot be checked; everything from here on is.
        """
        self._state = event.src
        self._prev_hash = event.prev
        self._result.anchored_at = event.event_id

    @property
    def last_hash(self) -> str:
        """The hash of the last event added (the chain's head)."""
        return self._prev_hash

    def _problem(self, event_id: str, problem: str) -> None:
        self._result.problems.append(TamperError(self._result.job_id, event_id, problem))

    def malformed(self, error: TamperError) -> None:
        """Record an entry that could not even be parsed into an event."""
        self._result.problems.append(error)

    def add(self, event: Event, *, detail_text: str | None = None) -> None:
        """Check one event and advance the job with it.

        `detail_text` is the detail's canonical text when the caller parsed it already.
        """
        result = self._result
        result.event_count += 1
        if event.job_id != result.job_id:
            self._problem(event.event_id, f"event belongs to job {event.job_id!r}")
        for problem in integrity_problems(event, self._ring, detail_text=detail_text):
            self._problem(event.event_id, problem)
        if event.prev != self._prev_hash:
            self._problem(event.event_id, "broken chain: prev is not the previous event's hash")
        state_before = self._state
        if event.src != state_before:
            self._problem(
                event.event_id,
                f"src {event.src or '(none)'!r} but the job was {state_before or '(none)'!r}",
            )
        try:
            reached = next_state(result.job_id, state_before, event.trigger)
        except IllegalTransition as error:
            self._problem(event.event_id, f"illegal transition: {error}")
        else:
            self._state = reached
            if reached != event.dst:
                self._problem(
                    event.event_id, f"dst {event.dst!r} but {event.trigger!r} leads to {reached!r}"
                )
        result.snapshot.update(apply_event(result.snapshot, event))
        self._prev_hash = event.hash

    def finish(self) -> ReplayedJob:
        """The replayed job, in the state its events lead to."""
        self._result.state = self._state
        return self._result


def replay_events(job_id: str, events: Iterable[Event], ring: KeyRing) -> ReplayedJob:
    """Rebuild a job from an in-memory sequence of events."""
    replayer = JobReplayer(job_id, ring)
    for event in events:
        replayer.add(event)
    return replayer.finish()


async def replay_job(store: EventStore, ring: KeyRing, job_id: str) -> ReplayedJob:
    """Rebuild a job from its event stream in Redis, reading in batches."""
    replayer = JobReplayer(job_id, ring)
    async for stream_id, fields in store.iter_stream_entries(store.keys.job_events(job_id)):
        try:
            event, detail_text = parse_event(fields, stream_id=stream_id)
        except TamperError as error:
            replayer.malformed(error)
        else:
            replayer.add(event, detail_text=detail_text)
    return replayer.finish()


def snapshot_drift(replayed: ReplayedJob, stored: Mapping[str, str] | None) -> list[TamperError]:
    """Each field where the stored snapshot differs from the one the events produce."""
    job_id = replayed.job_id
    if stored is None:
        if replayed.event_count:
            return [TamperError(job_id, "", "snapshot missing but events exist")]
        return []
    expected = replayed.snapshot
    actual = derived_view(stored)
    if actual == expected:
        return []
    problems: list[TamperError] = []
    for name in sorted(set(expected) | set(actual)):
        if expected.get(name) != actual.get(name):
            problems.append(
                TamperError(
                    job_id,
                    actual.get("last_event_id", ""),
                    f"snapshot drift: {name} is {actual.get(name)!r}, "
                    f"events say {expected.get(name)!r}",
                )
            )
    return problems
