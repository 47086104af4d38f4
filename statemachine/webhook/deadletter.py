"""An integration group's dead letters and redrive stream on Redis.

    prov:integrations:<group>:dead      events the forwarder gave up on, with why
    prov:integrations:<group>:redrive   dead letters sent back; read by the forwarder only

Every move is one atomic step (a Lua script): burying acknowledges the entry and records
it; redriving deletes the dead letter and adds the redrive entry. So a crash between the two
halves cannot lose an event or deliver it twice as "new", and a retried call (a lost reply)
does nothing the second time. The forwarder stays the only sender: `redrive` only queues.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Final, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from core.errors import TamperError
from core.keys import RedisKeys
from statemachine.events import Event, event_from_fields
from statemachine.store import now_ms

REDRIVE_BATCH: Final = 100
DEAD_FIELDS: Final = ("stream_id", "event_id", "job_id", "trigger", "attempts", "error", "at")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _script(name: str) -> str:
    return files("statemachine.webhook").joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Pending:
    """An event read for delivery and not yet settled, and the entry that carries it."""

    source: str  # the stream it was read from: prov:events or the redrive stream
    entry_id: str  # its id there, to acknowledge
    stream_id: str  # the event's id in prov:events (the same as entry_id unless redriven)
    event: Event
    redriven: bool


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
    values = {_text(key): _text(value) for key, value in fields.items()}
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

    async def acknowledge(self, item: Pending) -> None:
        """The event was delivered: acknowledge it (and drop a redrive entry)."""
        if not item.redriven:
            await self._client.xack(item.source, self.group, item.entry_id)
            return
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xack(item.source, self.group, item.entry_id)
            pipe.xdel(item.source, item.entry_id)
            await pipe.execute()

    async def bury(self, item: Pending, *, attempts: int, error: str, at_ms: int) -> str:
        """Record the event as dead and acknowledge it in one step; the dead entry's id."""
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
        result = await self._bury(
            keys=[item.source, self.dead],
            args=[self.group, item.entry_id, "1" if item.redriven else "0", *flat],
        )
        return _text(result)

    async def ensure_redrive_group(self) -> None:
        """Create the redrive stream's group from its start, so nothing queued is missed."""
        try:
            await self._client.xgroup_create(self.redrive_stream, self.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _event(self, stream_id: str) -> Event | None:
        entries = cast(
            list[tuple[bytes, dict[bytes | str, bytes | str]]],
            await self._client.xrange(self._keys.events, min=stream_id, max=stream_id),
        )
        if not entries:
            return None
        try:
            return event_from_fields(entries[0][1], stream_id=stream_id)
        except TamperError:
            return None

    async def _items(self, entries: list[Any]) -> AsyncIterator[Pending]:
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            if fields is None:  # deleted while pending: nothing left to deliver
                await self._client.xack(self.redrive_stream, self.group, entry_id)
                continue
            values = {_text(k): _text(v) for k, v in fields.items()}
            stream_id = values.get("stream_id", "")
            event = await self._event(stream_id) if stream_id else None
            if event is None:
                # The event is gone from prov:events (which the system never trims) or was
                # never an event: nothing can be sent. Back to the dead letters, with why.
                gone = Pending(
                    source=self.redrive_stream,
                    entry_id=entry_id,
                    stream_id=stream_id,
                    event=Event(
                        v=0,
                        event_id=values.get("event_id", ""),
                        job_id=values.get("job_id", ""),
                        trigger="",
                        src="",
                        dst="",
                        at=0,
                        actor="",
                        attempt=0,
                    ),
                    redriven=True,
                )
                await self.bury(
                    gone, attempts=0, error="event not found in the event stream", at_ms=now_ms()
                )
                continue
            yield Pending(
                source=self.redrive_stream,
                entry_id=entry_id,
                stream_id=stream_id,
                event=event,
                redriven=True,
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
            cursor = _text(mine[-1][0])
            async for item in self._items(mine):
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
            async for item in self._items(claimed):
                yield item
            fresh = await self._read(consumer, ">", batch=batch, block=block_ms)
            async for item in self._items(fresh):
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
            found.extend(_dead_letter(_text(raw_id), fields) for raw_id, fields in batch)
            if len(batch) < count:
                break
            start = "(" + _text(batch[-1][0])
        return found

    async def redrive(self, entry_ids: Iterable[str]) -> int:
        """Move these dead letters to the redrive stream; how many were there to move."""
        ids = list(dict.fromkeys(entry_ids))
        moved = 0
        for offset in range(0, len(ids), REDRIVE_BATCH):
            chunk: Sequence[str] = ids[offset : offset + REDRIVE_BATCH]
            moved += int(await self._redrive(keys=[self.dead, self.redrive_stream], args=chunk))
        return moved
