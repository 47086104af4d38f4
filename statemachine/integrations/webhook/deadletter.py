"""An integration group's dead letters and redrive stream on Redis.

    prov:integrations:<group>:dead      events the forwarder gave up on, with why
    prov:integrations:<group>:redrive   dead letters sent back; read by the forwarder only

Every move is one atomic step (a Lua script): burying acknowledges the entry and records
it; redriving deletes the dead letter and adds the redrive entry. So a crash between the two
halves cannot lose an event or deliver it twice as "new", and a retried call (a lost reply)
does nothing the second time. The forwarder stays the only sender: `redrive` only queues.

An event no longer in `prov:events` (trimmed by `audit archive`) cannot be sent by anyone:
it is recorded once with the error `trimmed: ...` when the forwarder meets it, and a redrive
of it is dropped and reported rather than buried again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Final, cast

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from core.errors import TamperError
from core.keys import RedisKeys
from core.text import as_text_lenient
from statemachine.events import Event, event_from_fields
from statemachine.integrations.consumer import Undeliverable
from statemachine.store import now_ms

log = structlog.get_logger("webhook")

REDRIVE_BATCH: Final = 100
DEAD_FIELDS: Final = ("stream_id", "event_id", "job_id", "trigger", "attempts", "error", "at")


def _script(name: str) -> str:
    return files("statemachine.integrations.webhook").joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Pending:
    """An event read for delivery and not yet settled, and the entry that carries it."""

    source: str  # the stream it was read from: prov:events or the redrive stream
    entry_id: str  # its id there, to acknowledge
    stream_id: str  # the event's id in prov:events (the same as entry_id unless redriven)
    event: Event
    redriven: bool
    # Read again (own pending entries, XAUTOCLAIM) rather than new: it may have been settled
    # since by a copy of it held earlier, so it is checked before being sent.
    reread: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Burial:
    """What `bury` did: the dead entry's id ("" if none was added), and whether the entry
    was still pending (and is now acknowledged)."""

    dead_id: str
    was_pending: bool


def _unknown_event(event_id: str = "", job_id: str = "", trigger: str = "") -> Event:
    """A stand-in naming an event that cannot be read, for its dead letter."""
    return Event(
        v=0,
        event_id=event_id,
        job_id=job_id,
        trigger=trigger,
        src="",
        dst="",
        at=0,
        actor="",
        attempt=0,
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter entry as listed by `provision integrations dead`."""

    entry_id: str
    stream_id: str
    event_id: str
    job_id: str
    trigger: str
    attempts: int
    error: str
    at: int

    def as_dict(self) -> dict[str, Any]:
        """The entry as a JSON object."""
        return {
            "id": self.entry_id,
            "stream_id": self.stream_id,
            "event_id": self.event_id,
            "job_id": self.job_id,
            "trigger": self.trigger,
            "attempts": self.attempts,
            "error": self.error,
            "at": self.at,
        }


def _dead_letter(entry_id: str, fields: dict[bytes | str, bytes | str]) -> DeadLetter:
    values = {as_text_lenient(key): as_text_lenient(value) for key, value in fields.items()}
    attempts, at = values.get("attempts", "0"), values.get("at", "0")
    return DeadLetter(
        entry_id=entry_id,
        stream_id=values.get("stream_id", ""),
        event_id=values.get("event_id", ""),
        job_id=values.get("job_id", ""),
        trigger=values.get("trigger", ""),
        attempts=int(attempts) if attempts.isdigit() else 0,
        error=values.get("error", ""),
        at=int(at) if at.isdigit() else 0,
    )


class DeadLetters:
    """The dead-letter and redrive streams of one integration group."""

    def __init__(self, client: aioredis.Redis, keys: RedisKeys, group: str) -> None:
        self._client = client
        self._keys = keys
        self.group = group
        self.dead = keys.integration_dead(group)
        self.redrive_stream = keys.integration_redrive(group)
        self._bury = client.register_script(_script("bury.lua"))
        self._redrive = client.register_script(_script("redrive.lua"))

    # --- the forwarder's side -----------------------------------------------------------

    async def acknowledge(self, item: Pending) -> bool:
        """The event was delivered: acknowledge it (and drop a redrive entry); was it pending?"""
        if not item.redriven:
            return bool(await self._client.xack(item.source, self.group, item.entry_id))
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xack(item.source, self.group, item.entry_id)
            pipe.xdel(item.source, item.entry_id)
            acked, _deleted = await pipe.execute()
        return bool(acked)

    async def still_pending(self, item: Pending, consumer: str) -> bool:
        """Whether `item`'s entry is still pending for `consumer` (not settled meanwhile)."""
        found = await self._client.xpending_range(
            item.source,
            self.group,
            min=item.entry_id,
            max=item.entry_id,
            count=1,
            consumername=consumer,
        )
        return bool(found)

    async def bury(
        self,
        item: Pending,
        *,
        attempts: int,
        error: str,
        at_ms: int,
        even_if_settled: bool = True,
    ) -> Burial:
        """Record the event as dead and acknowledge it in one step.

        An entry no longer pending is recorded too (so it cannot vanish), unless
        `even_if_settled` is False: the retry of a call whose answer was lost, which most
        likely recorded it already.
        """
        fields = {
            "stream_id": item.stream_id,
            "event_id": item.event.event_id,
            "job_id": item.event.job_id,
            "trigger": item.event.trigger,
            "attempts": str(attempts),
            "error": error,
            "at": str(at_ms),
        }
        flat = [part for pair in fields.items() for part in pair]
        dead_id, acked = await self._bury(
            keys=[item.source, self.dead],
            args=[
                self.group,
                item.entry_id,
                "1" if item.redriven else "0",
                "1" if even_if_settled else "0",
                *flat,
            ],
        )
        return Burial(dead_id=as_text_lenient(dead_id), was_pending=bool(acked))

    async def bury_undeliverable(self, entry: Undeliverable, *, even_if_settled: bool) -> Burial:
        """Record an entry of `prov:events` that is no event (any more) and acknowledge it."""
        hints = entry.hints
        item = Pending(
            source=self._keys.events,
            entry_id=entry.stream_id,
            stream_id=entry.stream_id,
            event=_unknown_event(
                hints.get("event_id", ""), hints.get("job_id", ""), hints.get("trigger", "")
            ),
            redriven=False,
        )
        return await self.bury(
            item,
            attempts=0,
            error=f"{entry.reason}: {entry.problem}",
            at_ms=now_ms(),
            even_if_settled=even_if_settled,
        )

    async def ensure_redrive_group(self) -> None:
        """Create the redrive stream's group from its start, so nothing queued is missed."""
        try:
            await self._client.xgroup_create(self.redrive_stream, self.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _event(self, stream_id: str) -> Event | str | None:
        """The event at `stream_id`; None when it is gone; why not when it is no event."""
        try:
            entries = cast(
                list[tuple[bytes, dict[bytes | str, bytes | str]]],
                await self._client.xrange(self._keys.events, min=stream_id, max=stream_id),
            )
        except ResponseError:  # not a stream id at all: only a forged redrive entry has one
            return None
        if not entries or not entries[0][1]:
            return None
        try:
            return event_from_fields(entries[0][1], stream_id=stream_id)
        except (TamperError, ValueError, RecursionError, OverflowError) as error:
            problem = str(error) if isinstance(error, TamperError) else type(error).__name__
            return problem[:200]

    async def _drop_redrive(self, entry_id: str, values: dict[str, str], why: str) -> None:
        """A redrive entry that can never be delivered: say so, and delete it."""
        log.warning(
            "webhook.redrive_dropped",
            group=self.group,
            redrive_id=entry_id,
            stream_id=values.get("stream_id", "")[:64],
            event_id=values.get("event_id", "")[:64],
            job_id=values.get("job_id", "")[:64],
            problem=why,
        )
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xack(self.redrive_stream, self.group, entry_id)
            pipe.xdel(self.redrive_stream, entry_id)
            await pipe.execute()

    async def _items(self, entries: list[Any], *, again: bool) -> AsyncIterator[Pending]:
        for raw_id, fields in entries:
            entry_id = as_text_lenient(raw_id)
            if not fields:  # deleted while pending ({} from redis-py): nothing to deliver
                await self._drop_redrive(entry_id, {}, "the redrive entry was deleted")
                continue
            values = {as_text_lenient(k): as_text_lenient(v) for k, v in fields.items()}
            stream_id = values.get("stream_id", "")
            event = await self._event(stream_id) if stream_id else None
            if event is None:
                # Trimmed from prov:events (`audit archive`) after it was redriven: nobody
                # can send it any more, and burying it again would bring it back at every
                # redrive. The archive still holds it.
                await self._drop_redrive(
                    entry_id, values, "trimmed: the event is no longer in the event stream"
                )
                continue
            if isinstance(event, str):
                # There, but no event: a clear final reason in the dead letters.
                unreadable = Pending(
                    source=self.redrive_stream,
                    entry_id=entry_id,
                    stream_id=stream_id,
                    event=_unknown_event(values.get("event_id", ""), values.get("job_id", "")),
                    redriven=True,
                )
                await self.bury(unreadable, attempts=0, error=f"malformed: {event}", at_ms=now_ms())
                continue
            yield Pending(
                source=self.redrive_stream,
                entry_id=entry_id,
                stream_id=stream_id,
                event=event,
                redriven=True,
                reread=again,
            )

    async def redriven(
        self, consumer: str, *, block_ms: int, claim_idle_ms: int, batch: int = REDRIVE_BATCH
    ) -> AsyncIterator[Pending]:
        """Redrive entries: own unacknowledged ones, then stale ones of others, then new."""
        cursor = "0"
        while True:
            mine = await self._read(consumer, cursor, batch=batch, block=None)
            if not mine:
                break
            cursor = as_text_lenient(mine[-1][0])
            async for item in self._items(mine, again=True):
                yield item
        while True:
            reply = await self._client.xautoclaim(
                self.redrive_stream,
                self.group,
                consumer,
                min_idle_time=claim_idle_ms,
                start_id="0-0",
                count=batch,
            )
            claimed = cast(list[Any], reply[1] if len(reply) > 1 else [])
            async for item in self._items(claimed, again=True):
                yield item
            fresh = await self._read(consumer, ">", batch=batch, block=block_ms)
            async for item in self._items(fresh, again=False):
                yield item

    async def _read(
        self, consumer: str, cursor: str, *, batch: int, block: int | None
    ) -> list[Any]:
        reply = cast(
            list[tuple[bytes, list[Any]]] | None,
            await self._client.xreadgroup(
                self.group, consumer, {self.redrive_stream: cursor}, count=batch, block=block
            ),
        )
        return reply[0][1] if reply else []

    # --- the operator's side ------------------------------------------------------------

    async def entries(self, *, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first (at most `limit`)."""
        found: list[DeadLetter] = []
        start = "-"
        while limit is None or len(found) < limit:
            count = REDRIVE_BATCH if limit is None else min(REDRIVE_BATCH, limit - len(found))
            batch = cast(
                list[tuple[bytes, dict[bytes | str, bytes | str]]],
                await self._client.xrange(self.dead, min=start, count=count),
            )
            found.extend(_dead_letter(as_text_lenient(raw_id), fields) for raw_id, fields in batch)
            if len(batch) < count:
                break
            start = "(" + as_text_lenient(batch[-1][0])
        return found

    async def redrive(self, entry_ids: Iterable[str]) -> tuple[int, list[str]]:
        """Move these dead letters to the redrive stream.

        Returns how many were moved, and the ids of those dropped instead because their event
        is no longer in `prov:events` (nobody can send it again).
        """
        ids = list(dict.fromkeys(entry_ids))
        moved = 0
        gone: list[str] = []
        for offset in range(0, len(ids), REDRIVE_BATCH):
            chunk: Sequence[str] = ids[offset : offset + REDRIVE_BATCH]
            reply = cast(
                list[Any],
                await self._redrive(
                    keys=[self.dead, self.redrive_stream, self._keys.events], args=chunk
                ),
            )
            moved += int(reply[0])
            gone.extend(as_text_lenient(ident) for ident in reply[1:])
        return moved, gone
