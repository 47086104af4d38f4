"""The Redis event store: every job transition as one atomic, checked step.

A transition reads the snapshot, asks the machine where the trigger leads, builds the event
chained to the snapshot's `last_hash`, and runs one Lua script that appends the event to
`prov:job:<id>:events` and `prov:events`, updates the snapshot, and performs the side effects
that belong to the same step (ACK of the stream entry, the retry schedule, the job's stream
entry at submit). The script first checks that the snapshot is still in the state and at the
event the transition was built on, so of two racing actors exactly one wins; the loser gets
`TransitionConflict` and nothing changes.

A step is built once (`prepare`: events hashed and MACed) and written by `apply`, so that a
caller sending it again after a lost answer sends the very same events, and the store
recognises its own write. `chain` records several triggers that follow one another (an
agent's verify, validate and start) as one such step.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib.resources import files
from typing import Any, Final, Literal, cast

import redis.asyncio as aioredis

from core.errors import JobNotFound, LimitReached, TransitionConflict
from core.keyring import KeyRing
from core.keys import RedisKeys
from core.text import as_text
from statemachine.events import Event, event_from_fields, new_event
from statemachine.machine import NO_STATE, Trigger, is_terminal, next_state
from statemachine.snapshot import JobSnapshot, apply_event

READ_BATCH: Final = 1000


def now_ms() -> int:
    """The wall clock in integer epoch milliseconds (the unit of every event time)."""
    return time.time_ns() // 1_000_000


def _script(name: str) -> str:
    return files("statemachine").joinpath("lua", name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class AckEntry:
    """Acknowledge a stream entry for a consumer group in the same step."""

    stream: str
    group: str
    entry_id: str


@dataclass(frozen=True, slots=True)
class ScheduleRetry:
    """Add the job to a sorted set scored by its due time (epoch ms)."""

    key: str
    due_at_ms: int
    job_id: str


@dataclass(frozen=True, slots=True)
class Unschedule:
    """Remove the job from a sorted set (the retry schedule)."""

    key: str
    job_id: str


@dataclass(frozen=True, slots=True)
class IndexJob:
    """Add the job to the listing index, scored by submit time (epoch ms)."""

    key: str
    at_ms: int
    job_id: str


@dataclass(frozen=True, slots=True)
class AppendEntry:
    """Append an entry to a stream (the signed envelope, at submit)."""

    stream: str
    fields: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class SetJobFields:
    """Set bookkeeping fields on the job's snapshot (e.g. `entry_id`) in the same step."""

    fields: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class RequireBelow:
    """Write nothing unless `key` holds fewer than `limit`: a counter's value, or a set's size.

    Checked inside the step, before its first write, so a limit holds across every panel
    process; a step refused by it raises `LimitReached` with `name`.
    """

    key: str
    limit: int
    name: str
    kind: Literal["counter", "set"]


@dataclass(frozen=True, slots=True)
class CountEvent:
    """Add one to a counter that expires `lifetime_s` after its last count (a rate window)."""

    key: str
    lifetime_s: int


@dataclass(frozen=True, slots=True)
class AddMember:
    """Add the job to a set (its user's unfinished jobs, at submit)."""

    key: str
    job_id: str


@dataclass(frozen=True, slots=True)
class RemoveMember:
    """Remove the job from a set (added by the store itself when a job ends)."""

    key: str
    job_id: str


SideEffect = (
    AckEntry
    | ScheduleRetry
    | Unschedule
    | IndexJob
    | AppendEntry
    | SetJobFields
    | RequireBelow
    | CountEvent
    | AddMember
    | RemoveMember
)


@dataclass(frozen=True, slots=True)
class Step:
    """One trigger of a chain recorded as a single atomic step (`EventStore.chain`).

    `attempt` defaults to the attempt the steps before it leave on the snapshot.
    """

    trigger: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    attempt: int | None = None
    effects: Sequence[SideEffect] = ()


@dataclass(frozen=True, slots=True)
class Applied:
    """What a successful transition wrote."""

    event: Event
    snapshot: dict[str, str]
    events_stream_id: str
    appended_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A step built and MACed by `EventStore.prepare`, ready for `EventStore.apply`.

    Sending the same Prepared again sends the very same events (ids, times, hashes), which
    is what lets the store recognise a write of its own whose answer was lost.
    """

    job_id: str
    src: str
    keys: list[str]
    args: list[str]
    applied: Applied  # what the step leaves when it lands


def _flatten(mapping: Mapping[str, str]) -> list[str]:
    return [item for pair in mapping.items() for item in pair]


def _encode_effects(
    effects: Sequence[SideEffect], first_index: int
) -> tuple[list[str], list[list[Any]]]:
    keys: list[str] = []
    ops: list[list[Any]] = []

    def index_of(key: str) -> int:
        if key not in keys:
            keys.append(key)
        return first_index + keys.index(key)

    for effect in effects:
        match effect:
            case AckEntry(stream, group, entry_id):
                ops.append(["xack", index_of(stream), group, entry_id])
            case ScheduleRetry(key, due_at_ms, job_id) | IndexJob(key, due_at_ms, job_id):
                ops.append(["zadd", index_of(key), str(due_at_ms), job_id])
            case Unschedule(key, job_id):
                ops.append(["zrem", index_of(key), job_id])
            case AppendEntry(stream, fields):
                ops.append(["xadd", index_of(stream), _flatten(fields)])
            case SetJobFields(fields):
                ops.append(["hset", 1, _flatten(fields)])
            case RequireBelow(key, limit, name, kind):
                ops.append(["below", index_of(key), limit, name, kind])
            case CountEvent(key, lifetime_s):
                ops.append(["incr", index_of(key), lifetime_s])
            case AddMember(key, job_id):
                ops.append(["sadd", index_of(key), job_id])
            case RemoveMember(key, job_id):
                ops.append(["srem", index_of(key), job_id])
    return keys, ops


class EventStore:
    """Job snapshots and event streams on Redis, changed only through checked transitions."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: RedisKeys,
        ring: KeyRing | Callable[[], KeyRing],
        *,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self._client = client
        self.keys = keys
        # A callable lets a long-running process follow key rotation (newest key MACs).
        self._ring_source: Callable[[], KeyRing] = ring if callable(ring) else (lambda: ring)
        self._clock_ms = clock_ms
        self._transition = client.register_script(_script("transition.lua"))
        self._request_cancel = client.register_script(_script("request_cancel.lua"))

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client the store writes with (readers such as the audit share it)."""
        return self._client

    async def snapshot(self, job_id: str) -> dict[str, str] | None:
        """The job's current snapshot, or None when there is no such job."""
        raw: dict[bytes | str, bytes | str] = await self._client.hgetall(self.keys.job(job_id))
        if not raw:
            return None
        return {as_text(key): as_text(value) for key, value in raw.items()}

    async def read(self, job_id: str) -> JobSnapshot | None:
        """The job's snapshot, typed, or None when there is no such job."""
        return JobSnapshot.of(await self.snapshot(job_id))

    async def create_job(
        self,
        job_id: str,
        *,
        actor: str,
        detail: Mapping[str, Any],
        effects: Sequence[SideEffect] = (),
    ) -> Applied:
        """Write a new job's `submit` event and snapshot (and e.g. its stream entry) at once."""
        prepared = self._build(
            job_id,
            [Step(Trigger.SUBMIT, detail, 0, effects)],
            snapshot={},
            actor=actor,
            extra_fields={"cancel_requested": "0", "entry_id": ""},
        )
        return await self.apply(prepared)

    async def transition(
        self,
        job_id: str,
        trigger: str,
        *,
        actor: str,
        detail: Mapping[str, Any] | None = None,
        attempt: int | None = None,
        expect_state: str | None = None,
        expect_fields: Mapping[str, str] | None = None,
        effects: Sequence[SideEffect] = (),
        known: Mapping[str, str] | None = None,
    ) -> Applied:
        """Fire `trigger` on the job as one atomic step.

        `expect_state` pins the source state the caller decided on; without it the current
        state is used. `expect_fields` are snapshot fields that must still hold inside the
        atomic step (e.g. the `entry_id` and `attempt` of the caller's own run). `attempt`
        defaults to the snapshot's. `known` is a snapshot the caller already holds (the one it
        just read, or the one its previous transition returned): it saves the read, and costs
        no safety, since the step itself checks state and last hash, so a stale one can only
        end in TransitionConflict. Raises JobNotFound, IllegalTransition, or
        TransitionConflict when another actor moved the job first.
        """
        prepared = await self.prepare(
            job_id,
            [Step(trigger, detail or {}, attempt, effects)],
            actor=actor,
            expect_state=expect_state,
            expect_fields=expect_fields,
            known=known,
        )
        return await self.apply(prepared)

    async def chain(
        self,
        job_id: str,
        steps: Sequence[Step],
        *,
        actor: str,
        expect_state: str,
        expect_fields: Mapping[str, str] | None = None,
        known: Mapping[str, str] | None = None,
    ) -> Applied:
        """Fire several triggers in a row as ONE atomic step: one event each, in order.

        For steps that always follow one another when nothing stands between them (an agent
        that verifies, validates and starts a job at once): each event is chained to the one
        before and each transition is legal, as if the steps were recorded one by one (they
        share one `at`), and the single check of state, last hash and `expect_fields` guards
        the whole chain. Returns what the last step wrote; raises as `transition`.
        """
        prepared = await self.prepare(
            job_id,
            steps,
            actor=actor,
            expect_state=expect_state,
            expect_fields=expect_fields,
            known=known,
        )
        return await self.apply(prepared)

    async def prepare(
        self,
        job_id: str,
        steps: Sequence[Step],
        *,
        actor: str,
        expect_state: str | None = None,
        expect_fields: Mapping[str, str] | None = None,
        known: Mapping[str, str] | None = None,
    ) -> Prepared:
        """Build (and MAC) the events of `steps` on the job's snapshot, without writing.

        `apply` writes them; a caller that must send a step again after a lost answer sends
        the same Prepared, so that the store recognises its own write (see `apply`).
        """
        if not steps:
            raise ValueError("a chain needs at least one step")
        snapshot = dict(known) if known is not None else await self.snapshot(job_id)
        if snapshot is None:
            raise JobNotFound(job_id)
        if expect_state is not None and snapshot.get("state", NO_STATE) != expect_state:
            raise TransitionConflict(job_id, expect_state, snapshot.get("state", NO_STATE))
        return self._build(
            job_id, steps, snapshot=snapshot, actor=actor, expect_fields=expect_fields
        )

    def _build(
        self,
        job_id: str,
        steps: Sequence[Step],
        *,
        snapshot: Mapping[str, str],
        actor: str,
        extra_fields: Mapping[str, str] | None = None,
        expect_fields: Mapping[str, str] | None = None,
    ) -> Prepared:
        src = snapshot.get("state", NO_STATE)
        prev = snapshot.get("last_hash", "")
        ring = self._ring_source()
        at = self._clock_ms()
        # Each step is built on the snapshot the steps before it leave, as if recorded alone.
        after = dict(snapshot)
        changes: dict[str, str] = {}
        effects: list[SideEffect] = []
        events: list[Event] = []
        for step in steps:
            step_src = after.get("state", NO_STATE)
            event = new_event(
                ring,
                job_id=job_id,
                trigger=step.trigger,
                src=step_src,
                dst=next_state(job_id, step_src, step.trigger),
                at=at,
                actor=actor,
                attempt=int(after.get("attempt", "0")) if step.attempt is None else step.attempt,
                detail=step.detail,
                prev=after.get("last_hash", ""),
            )
            step_changes = apply_event(after, event)
            changes.update(step_changes)
            after.update(step_changes)
            effects.extend(step.effects)
            events.append(event)
        # What the script leaves, in its order: the changes (with extra_fields), then the
        # fields side effects set, which belong to the new snapshot too, so a caller can hand
        # it to its next transition as `known`.
        if extra_fields:
            changes.update(extra_fields)
            after.update(extra_fields)
        for effect in effects:
            if isinstance(effect, SetJobFields):
                after.update(effect.fields)
        # A job that ends leaves its user's unfinished set in the same step, whoever ends it
        # (an agent, a cancel, an expiry), so the per-user cap frees up exactly as jobs end.
        requested_by = after.get("requested_by", "")
        if requested_by and is_terminal(after.get("state", "")) and not is_terminal(src):
            effects.append(RemoveMember(self.keys.unfinished(requested_by), job_id))
        effect_keys, ops = _encode_effects(effects, first_index=4)
        keys = [self.keys.job(job_id), self.keys.job_events(job_id), self.keys.events]
        return Prepared(
            job_id=job_id,
            src=src,
            keys=[*keys, *effect_keys],
            args=[
                src,
                prev,
                json.dumps([_flatten(event.stream_fields()) for event in events]),
                json.dumps(_flatten(changes)),
                json.dumps(ops),
                json.dumps(_flatten(expect_fields or {})),
            ],
            applied=Applied(event=events[-1], snapshot=after, events_stream_id=""),
        )

    async def apply(self, prepared: Prepared) -> Applied:
        """Write a prepared step atomically; TransitionConflict if the job moved on first.

        Sent again after a lost answer, it reports the step as written when the job's last
        event is its own: the first send ran, and the step happened once.
        """
        result = await self._transition(keys=prepared.keys, args=prepared.args)
        if int(result[0]) == 2:
            raise LimitReached(prepared.job_id, as_text(result[1]))
        if int(result[0]) != 1:
            actual_state, last_event_id = as_text(result[1]), as_text(result[2])
            if last_event_id == prepared.applied.event.event_id:
                return prepared.applied
            raise TransitionConflict(prepared.job_id, prepared.src, actual_state)
        return replace(
            prepared.applied,
            events_stream_id=as_text(result[2]),
            appended_ids=[as_text(entry_id) for entry_id in result[3:]],
        )

    async def request_cancel(self, job_id: str) -> str:
        """Set `cancel_requested` unless the job ended; returns its state ("" if unknown)."""
        state = await self._request_cancel(keys=[self.keys.job(job_id)])
        return as_text(state)

    async def iter_job_events(
        self, job_id: str, *, batch: int = READ_BATCH
    ) -> AsyncIterator[Event]:
        """The job's events in order, read in batches."""
        async for stream_id, fields in self.iter_stream_entries(
            self.keys.job_events(job_id), batch
        ):
            yield event_from_fields(fields, stream_id=stream_id)

    async def job_events(self, job_id: str) -> list[Event]:
        """All of the job's events, in order."""
        return [event async for event in self.iter_job_events(job_id)]

    async def iter_stream_entries(
        self, key: str, batch: int = READ_BATCH
    ) -> AsyncIterator[tuple[str, dict[bytes | str, bytes | str]]]:
        """Every entry of a stream as (id, fields), read in batches of `batch`."""
        start = "-"
        while True:
            entries = cast(
                list[tuple[bytes, dict[bytes | str, bytes | str]]],
                await self._client.xrange(key, min=start, count=batch),
            )
            for stream_id, fields in entries:
                yield as_text(stream_id), fields
            if len(entries) < batch:
                return
            start = "(" + as_text(entries[-1][0])
